"""The two-view (siamese) set-up shared by Barlow Twins, SimCLR, VICReg, BYOL and
MoCo v3.

`Model` is a backbone (`encoder`, looked up by name in `tandem.models`) followed by a
projector MLP (`projector`), and for BYOL and MoCo v3 a predictor MLP (`predictor`,
output "p"; skipped with `predict=False`, as the EMA teacher has none); every
objective keeps its backbone under `encoder`, which is what feature extraction and
`tandem.load` read. `embed_two_views` augments a uint8
batch into two views (on device, per-example keys), normalises them, and encodes each
in its own forward pass, as the reference implementations do, so batch-norm statistics
are per view (`augmented_views` and `encode` are its two halves).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tandem import models
from tandem.data import augment
from tandem.data import preprocess
from tandem.models import heads
from tandem.ssl import ema


class Model(nn.Module):
  """Backbone (`encoder`) followed by a projector (`projector`); adds `z`, and with
  `predictor_dims` a predictor (`predictor`) on z that adds `p`."""
  encoder_name: str
  encoder: dict[str, Any]
  projector_dims: Sequence[int]
  dtype: Any = jnp.float32  # Compute dtype (`models.compute_dtype`).
  projector_norm: str = "batch"
  projector_last_bn: bool = False  # MoCo v3: a BatchNorm without affine at the end.
  predictor_dims: Sequence[int] = ()
  matryoshka_dims: Sequence[int] = ()  # Nested prefixes of pre_logits (see below).

  @nn.compact
  def __call__(self, images, train: bool = False, predict: bool = True):
    out = models.get_model(self.encoder_name, **self.encoder, dtype=self.dtype,
                           name="encoder")(images, train=train)
    projector = heads.Projector(hidden_dims=tuple(self.projector_dims[:-1]),
                                out_dim=self.projector_dims[-1],
                                norm=self.projector_norm,
                                last_bn=self.projector_last_bn, dtype=self.dtype,
                                name="projector")
    features = out["pre_logits"]
    z = projector(features, train=train)
    out = {**out, "z": z.astype(jnp.float32)}  # The losses are float32.
    if self.matryoshka_dims:  # The same projector on each prefix, the rest zeroed.
      keep = lambda m: (jnp.arange(features.shape[-1]) < m).astype(features.dtype)
      out["z_nested"] = tuple(projector(features * keep(m), train=train).astype(
          jnp.float32) for m in self.matryoshka_dims)
    if self.predictor_dims and predict:
      p = heads.Projector(hidden_dims=tuple(self.predictor_dims[:-1]),
                          out_dim=self.predictor_dims[-1], dtype=self.dtype,
                          name="predictor")(z, train=train)
      out["p"] = p.astype(jnp.float32)
    return out


def make_model(config, projector_dims: Sequence[int], predictor_dims=(),
               projector_last_bn: bool = False) -> Model:
  dims = tuple(config.get("matryoshka_dims", ()) or ())
  if dims and (list(dims) != sorted(set(dims)) or dims[0] < 1):
    raise ValueError(f"config.matryoshka_dims={dims} must be increasing positive "
                     "prefix sizes of pre_logits, e.g. (8, 16, 32, 64).")
  return Model(encoder_name=config.model_name, encoder=config.model.to_dict(),
               projector_dims=tuple(projector_dims),
               dtype=models.compute_dtype(config),
               projector_norm=config[config.objective].get("projector_norm", "batch"),
               projector_last_bn=projector_last_bn,
               predictor_dims=tuple(predictor_dims), matryoshka_dims=dims)


def augmented_views(rng, images_uint8, config) -> tuple:
  """Two augmented, normalised float views of a uint8 batch (on device)."""
  return tuple(preprocess.normalize(view, config.input.mean, config.input.std)
               for view in augment.two_views(rng, images_uint8, config.aug))


def encode(model: Model, params, model_state, views, nested: bool = False):
  """Projections of each view, one forward pass each; returns (zs, new_model_state),
  or with `nested` (zs, each view's Matryoshka projections, new_model_state)."""
  state, zs, nests = model_state, [], []
  for view in views:
    out, state = model.apply({"params": params, **state}, view, train=True,
                             mutable=["batch_stats"])
    zs.append(out["z"])
    nests.append(out.get("z_nested", ()))
  return (tuple(zs), tuple(nests), state) if nested else (tuple(zs), state)


def embed_two_views(model: Model, params, model_state, images_uint8, rng, config,
                    nested: bool = False):
  """Returns ((z1, z2), new_model_state) for two augmented views of the batch (with
  `nested`, the views' Matryoshka projections before the state: `encode`)."""
  return encode(model, params, model_state,
                augmented_views(rng, images_uint8, config), nested)


def with_matryoshka(loss, z1, z2, nested1, nested2, dims):
  """Matryoshka representation learning (Kusupati et al. 2022) on a two-view loss:
  `loss(z1, z2) -> (loss, metrics)` of the full projections plus the same loss on
  the projections of each nested prefix of pre_logits (the first m dimensions, the
  rest zeroed: MRL-E's shared weights), with weight 1 each (the paper's c_m = 1).
  Each prefix then carries the objective on its own, so a linear probe on it works
  (the probe's `prefixes`). Metrics: the full loss's, and `loss_dim{m}` per prefix."""
  total, metrics = loss(z1, z2)
  metrics = dict(metrics)
  if dims:
    metrics["loss_full"] = total
  for m, a, b in zip(dims, nested1, nested2):
    value, _ = loss(a, b)
    metrics[f"loss_dim{m}"] = value
    total = total + value
  return total, metrics


def make_stages(model: Model, config, head):
  """(prepare, embed, head) of a two-view objective, for exact gradient
  accumulation (`train_state.make_step`): both views of the whole batch drawn by
  `prepare`, each micro-batch embedded by `embed`, `head(params, {"z1", "z2"}, rng)`
  the loss on the whole batch."""
  if config.get("matryoshka_dims", ()):
    raise ValueError("grad_accum_steps > 1 does not support matryoshka_dims yet.")

  def prepare(batch, rng):
    view1, view2 = augmented_views(rng, batch["image"], config)
    return {"view1": view1, "view2": view2}

  def embed(params, model_state, inputs):
    (z1, z2), state = encode(model, params, model_state,
                             (inputs["view1"], inputs["view2"]))
    return {"z1": z1, "z2": z2}, state

  return prepare, embed, head


def encode_student_and_teacher(model: Model, params, model_state, views):
  """BYOL's and MoCo v3's forward passes: each view through the student (its
  predictions "p") and through the EMA teacher (its projections "z", no gradient),
  one pass each, batch statistics per view and per network. Returns
  (student predictions, teacher projections, new model state with both networks'
  batch statistics)."""
  state, teacher = ema.split_teacher(model_state)
  teacher_state = {k: v for k, v in teacher.items() if k != "params"}
  predictions, targets = [], []
  for view in views:
    out, state = model.apply({"params": params, **state}, view, train=True,
                             mutable=["batch_stats"])
    predictions.append(out["p"])
    out, teacher_state = model.apply({"params": teacher["params"], **teacher_state},
                                     view, train=True, predict=False,
                                     mutable=["batch_stats"])
    targets.append(jax.lax.stop_gradient(out["z"]))
  new_state = ema.with_teacher(dict(state), {"params": teacher["params"],
                                             **teacher_state})
  return predictions, targets, new_state
