"""Barlow Twins (Zbontar et al. 2021): redundancy reduction between two views.

Each embedding dimension is standardised over the GLOBAL batch (mean 0, std 1, biased
variance, as the reference code's affine-free BatchNorm), C = z1ᵀ z2 / N and

    L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²,    λ = 0.0051 by default,

optionally multiplied by `loss_scale` (0.1 in the small-scale CIFAR recipes). The
loss is ordinary array code on globally sharded arrays, so on a mesh XLA computes
the cross-correlation over every device's examples, equal to the single-device value.

The model and the two-view encoding (separate forward passes, so batch-norm
statistics are per view, as in the reference code) are in `tandem/ssl/siamese.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tandem.ssl import siamese


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


def make_model(config) -> siamese.Model:
  return siamese.make_model(config, config.barlow_twins.projector_dims)


def make_loss_fn(model: siamese.Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""
  bt = config.barlow_twins

  def loss_fn(params, model_state, batch, rng):
    (z1, z2), state = siamese.embed_two_views(model, params, model_state,
                                              batch["image"], rng, config)
    loss, metrics = barlow_twins_loss(z1, z2, lambd=bt.lambd)
    loss = bt.loss_scale * loss
    return loss, ({"loss": loss, **metrics}, state)

  return loss_fn
