"""Barlow Twins (Zbontar et al. 2021): redundancy reduction between two views.

Each embedding dimension is standardised over the GLOBAL batch (mean 0, std 1, biased
variance, as the reference code's affine-free BatchNorm), C = z1ᵀ z2 / N and

    L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²,    λ = 0.0051 by default,

optionally multiplied by `loss_scale` (0.1 in the small-scale CIFAR recipes). The
loss is ordinary array code on globally sharded arrays, so on a mesh XLA computes
the cross-correlation over every device's examples, equal to the single-device value.

The two views are encoded in two separate forward passes, as in the reference code,
so batch-norm statistics are per view.
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


def barlow_twins_loss(z1, z2, lambd: float = 0.0051, eps: float = 1e-5):
  """Returns (loss, metrics) for embeddings z1, z2 of shape [N, D]."""
  z1 = z1.astype(jnp.float32)
  z2 = z2.astype(jnp.float32)
  n = z1.shape[0]

  def standardize(z):
    mean = z.mean(axis=0)
    var = ((z - mean) ** 2).mean(axis=0)
    return (z - mean) * jax.lax.rsqrt(var + eps)

  c = standardize(z1).T @ standardize(z2) / n
  diag = jnp.diagonal(c)
  on_diag = jnp.sum((1.0 - diag) ** 2)
  off_diag = jnp.sum(c**2) - jnp.sum(diag**2)
  loss = on_diag + lambd * off_diag
  return loss, {"on_diag": on_diag, "off_diag": off_diag,
                "mean_diag": diag.mean()}


class Model(nn.Module):
  """Backbone (`encoder`) followed by the Barlow Twins projector (`projector`)."""
  encoder_name: str
  encoder: dict[str, Any]
  projector_dims: Sequence[int]

  @nn.compact
  def __call__(self, images, train: bool = False):
    out = models.get_model(self.encoder_name, **self.encoder, name="encoder")(
        images, train=train)
    z = heads.Projector(hidden_dims=tuple(self.projector_dims[:-1]),
                        out_dim=self.projector_dims[-1], name="projector")(
                            out["pre_logits"], train=train)
    return {**out, "z": z}


def make_model(config) -> Model:
  return Model(encoder_name=config.model_name, encoder=config.model.to_dict(),
               projector_dims=tuple(config.barlow_twins.projector_dims))


def make_loss_fn(model: Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""
  bt = config.barlow_twins

  def loss_fn(params, model_state, batch, rng):
    view1, view2 = augment.two_views(rng, batch["image"], config.aug)
    state = model_state
    zs = []
    for view in (view1, view2):
      out, state = model.apply(
          {"params": params, **state}, preprocess.normalize(view, config.input.mean, config.input.std),
          train=True, mutable=["batch_stats"])
      zs.append(out["z"])
    loss, metrics = barlow_twins_loss(zs[0], zs[1], lambd=bt.lambd)
    loss = bt.loss_scale * loss
    return loss, ({"loss": loss, **metrics}, state)

  return loss_fn
