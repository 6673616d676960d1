"""DINO (Caron et al. 2021): self-distillation with no labels.

A student (backbone + DINO head) and an EMA teacher of it (`tandem/ssl/ema.py`)
map crops to K-way distributions. The teacher sees the two global crops, the
student those and `num_local` small local crops (multi-crop:
`tandem.data.augment.local_views`). The teacher's outputs are centred and
sharpened, the student's only sharpened:

    P_t(x) = softmax((g_t(x) − c) / τ_t),   P_s(x) = softmax(g_s(x) / τ_s),
    L = mean over pairs (global crop u, any crop v ≠ u) of
        mean_i Σ_k −P_t(u_i)_k log P_s(v_i)_k,

(§3.1, Algorithm 1 and the authors' main_dino.py DINOLoss), τ_s = 0.1 and τ_t
rising linearly from 0.04 to 0.07 over the first `teacher_temp_warmup_steps`. The
centre c is an EMA (momentum 0.9) of the teacher's mean output over the GLOBAL
batch (both global crops), updated after the loss: here a mean over globally
sharded arrays, so every device holds the same centre. The centre and a step
counter (for τ_t) live beside the teacher in the model state, so they are
checkpointed and resumed with it. The head is DINO's: an MLP (GELU) to a
bottleneck, L2-normalised, then a weight-normalised linear layer whose column
norms are fixed to 1 (`norm_last_layer`). DINO evaluates the teacher
(`eval_weights="teacher"`).

Local crops are smaller than the images, so the backbone must take any image size:
a ResNet or the CNN with `pool="gap"` (the flattening CNN and the ViTs' learned
position embeddings cannot).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tandem import models
from tandem.data import augment
from tandem.data import preprocess
from tandem.ssl import ema
from tandem.ssl import objectives


class DinoHead(nn.Module):
  """MLP -> bottleneck -> L2 normalise -> weight-normalised linear (g = 1)."""
  hidden_dim: int
  bottleneck_dim: int
  out_dim: int
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for i in range(self.num_layers - 1):
      x = nn.gelu(nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"dense{i + 1}")(x))
    x = nn.Dense(self.bottleneck_dim, dtype=self.dtype, name="bottleneck")(x)
    x = x.astype(jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    v = self.param("last_layer", nn.initializers.truncated_normal(0.02),
                   (self.bottleneck_dim, self.out_dim))
    return x @ (v / jnp.linalg.norm(v, axis=0, keepdims=True))


class Model(nn.Module):
  """Backbone (`encoder`) followed by the DINO head (`head`); adds "dino"."""
  encoder_name: str
  encoder: dict[str, Any]
  head: dict[str, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    out = models.get_model(self.encoder_name, **self.encoder, dtype=self.dtype,
                           name="encoder")(images, train=train)
    return {**out, "dino": DinoHead(**self.head, dtype=self.dtype,
                                    name="head")(out["pre_logits"])}


def dino_loss(student, teacher, center, student_temp: float, teacher_temp):
  """Returns (loss, metrics, new batch centre): `student` a list of [N, K] outputs
  (the 2 global crops first, then the local ones), `teacher` the list of the 2
  global crops' [N, K] outputs, `center` [K]."""
  targets = [jax.lax.stop_gradient(jax.nn.softmax((t - center) / teacher_temp,
                                                  axis=-1)) for t in teacher]
  log_probs = [jax.nn.log_softmax(s / student_temp, axis=-1) for s in student]
  total, terms = 0.0, 0
  for u, target in enumerate(targets):
    for v, log_prob in enumerate(log_probs):
      if v == u:  # A crop is not its own target.
        continue
      total = total + jnp.mean(jnp.sum(-target * log_prob, axis=-1))
      terms += 1
  batch_center = jnp.mean(jnp.concatenate(
      [jax.lax.stop_gradient(t) for t in teacher]), axis=0)
  entropy = -jnp.mean(jnp.sum(targets[0] * jnp.log(targets[0] + 1e-12), axis=-1))
  return total / terms, {"teacher_entropy": entropy}, batch_center


def teacher_temperature(step, config):
  """Linear warm-up from `warmup_teacher_temp` to `teacher_temp` (§3.1, App. B)."""
  d = config.dino
  progress = jnp.minimum(jnp.asarray(step, jnp.float32)
                         / max(d.teacher_temp_warmup_steps, 1), 1.0)
  return d.warmup_teacher_temp + (d.teacher_temp - d.warmup_teacher_temp) * progress


def make_model(config) -> Model:
  d = config.dino
  return Model(encoder_name=config.model_name, encoder=config.model.to_dict(),
               head=dict(hidden_dim=d.hidden_dim, bottleneck_dim=d.bottleneck_dim,
                         out_dim=d.out_dim),
               dtype=models.compute_dtype(config))


def init_state(params, model_state, config):
  state = ema.init_state(params, model_state)
  own = dict(state[objectives.OBJECTIVE_STATE])
  own.update(center=jnp.zeros((config.dino.out_dim,), jnp.float32),
             step=jnp.zeros((), jnp.int32))
  return {**state, objectives.OBJECTIVE_STATE: own}


def make_after_update(config):
  move_teacher = ema.make_after_update(config.total_steps, config.dino.base_momentum,
                                       config.dino.get("final_momentum", 1.0))

  def after_update(params, model_state, step):
    state = move_teacher(params, model_state, step)
    own = dict(state[objectives.OBJECTIVE_STATE])
    own["step"] = own["step"] + 1
    return {**state, objectives.OBJECTIVE_STATE: own}

  return after_update


def _check_backbone(config):
  if not config.aug.get("num_local", 0):
    return
  flattens = config.model_name == "cnn" and config.model.get("pool") == "flatten"
  if flattens or config.model_name == "vit":
    raise ValueError(
        f"DINO's local crops are smaller than the images, and the {config.model_name}"
        f" backbone here takes one image size only. Use a ResNet or the CNN with "
        "--config.model.pool=gap, or --config.aug.num_local=0.")


def make_loss_fn(model: Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""
  _check_backbone(config)
  d = config.dino

  def normalize(view):
    return preprocess.normalize(view, config.input.mean, config.input.std)

  def loss_fn(params, model_state, batch, rng):
    global_views = [normalize(v) for v in augment.two_views(rng, batch["image"],
                                                            config.aug)]
    local = [normalize(v) for v in augment.local_views(rng, batch["image"],
                                                       config.aug)]
    state, teacher = ema.split_teacher(model_state)
    own = model_state[objectives.OBJECTIVE_STATE]
    teacher_state = {k: v for k, v in teacher.items() if k != "params"}
    student_out, teacher_out = [], []
    for view in global_views + local:
      out, state = model.apply({"params": params, **state}, view, train=True,
                               mutable=["batch_stats"])
      student_out.append(out["dino"])
    for view in global_views:
      out, teacher_state = model.apply({"params": teacher["params"],
                                        **teacher_state}, view, train=True,
                                       mutable=["batch_stats"])
      teacher_out.append(out["dino"])
    temp = teacher_temperature(own["step"], config)
    loss, metrics, batch_center = dino_loss(student_out, teacher_out, own["center"],
                                            d.student_temp, temp)
    center = d.center_momentum * own["center"] + (1 - d.center_momentum) * batch_center
    new_state = ema.with_teacher(dict(state), {"params": teacher["params"],
                                               **teacher_state})
    new_state[objectives.OBJECTIVE_STATE] = {
        **new_state[objectives.OBJECTIVE_STATE], "center": center,
        "step": own["step"]}
    return loss, ({"loss": loss, **metrics, "teacher_temp": temp}, new_state)

  return loss_fn
