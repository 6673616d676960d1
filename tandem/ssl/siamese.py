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

  @nn.compact
  def __call__(self, images, train: bool = False, predict: bool = True):
    out = models.get_model(self.encoder_name, **self.encoder, dtype=self.dtype,
                           name="encoder")(images, train=train)
    z = heads.Projector(hidden_dims=tuple(self.projector_dims[:-1]),
                        out_dim=self.projector_dims[-1], norm=self.projector_norm,
                        last_bn=self.projector_last_bn, dtype=self.dtype,
                        name="projector")(out["pre_logits"], train=train)
    out = {**out, "z": z.astype(jnp.float32)}  # The losses are float32.
    if self.predictor_dims and predict:
      p = heads.Projector(hidden_dims=tuple(self.predictor_dims[:-1]),
                          out_dim=self.predictor_dims[-1], dtype=self.dtype,
                          name="predictor")(z, train=train)
      out["p"] = p.astype(jnp.float32)
    return out


def make_model(config, projector_dims: Sequence[int], predictor_dims=(),
               projector_last_bn: bool = False) -> Model:
  return Model(encoder_name=config.model_name, encoder=config.model.to_dict(),
               projector_dims=tuple(projector_dims),
               dtype=models.compute_dtype(config),
               projector_norm=config[config.objective].get("projector_norm", "batch"),
               projector_last_bn=projector_last_bn,
               predictor_dims=tuple(predictor_dims))


def augmented_views(rng, images_uint8, config) -> tuple:
  """Two augmented, normalised float views of a uint8 batch (on device)."""
  return tuple(preprocess.normalize(view, config.input.mean, config.input.std)
               for view in augment.two_views(rng, images_uint8, config.aug))


def encode(model: Model, params, model_state, views):
  """Projections of each view, one forward pass each; returns (zs, new_model_state)."""
  state, zs = model_state, []
  for view in views:
    out, state = model.apply({"params": params, **state}, view, train=True,
                             mutable=["batch_stats"])
    zs.append(out["z"])
  return tuple(zs), state


def embed_two_views(model: Model, params, model_state, images_uint8, rng, config):
  """Returns ((z1, z2), new_model_state) for two augmented views of the batch."""
  return encode(model, params, model_state,
                augmented_views(rng, images_uint8, config))


def make_stages(model: Model, config, head):
  """(prepare, embed, head) of a two-view objective, for exact gradient
  accumulation (`train_state.make_step`): both views of the whole batch drawn by
  `prepare`, each micro-batch embedded by `embed`, `head(params, {"z1", "z2"}, rng)`
  the loss on the whole batch."""

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
