"""Barlow Twins (Zbontar et al. 2021): redundancy reduction between two views.

Each embedding dimension is standardised over the GLOBAL batch (mean 0, std 1, biased
variance, as the reference code's affine-free BatchNorm), C = z1ᵀ z2 / N and

    L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²,    λ = 0.0051 by default,

optionally multiplied by `loss_scale` (0.1 in the small-scale CIFAR recipes). The
loss is ordinary array code on globally sharded arrays, so on a mesh XLA computes
the cross-correlation over every device's examples, equal to the single-device value.

Mixed Barlow Twins (Bandara et al. 2023, "Guarding Barlow Twins Against
Overfitting with Mixed Samples"), on when `mixup_loss_scale` > 0: a third view
x_m = α·x1 + (1 − α)·x2[π] mixes view 1 of each image with view 2 of another (π a
permutation of the global batch, α ~ Beta(β, β), one α per step) and is encoded in
its own forward pass. Assuming mixing in input space mixes the (standardised)
features, its cross-correlations with the two views should be

    C(z_m, z1) ≈ α C(z1, z1) + (1 − α) C(z2[π], z1),
    C(z_m, z2) ≈ α C(z1, z2) + (1 − α) C(z2[π], z2),

and the regulariser is mixup_loss_scale · λ · (sum of squared differences of both),
added to the Barlow Twins loss before `loss_scale`, as in the authors' code (their
CIFAR-10 ResNet-18 recipe: mixup_loss_scale 4, β = 1).

The model and the two-view encoding (separate forward passes, so batch-norm
statistics are per view, as in the reference code) are in `tandem/ssl/siamese.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tandem import random_streams
from tandem.ssl import siamese

MATRYOSHKA = True  # Supports config.matryoshka_dims (siamese.with_matryoshka).


def _standardize(z, eps):
  mean = z.mean(axis=0)
  var = ((z - mean) ** 2).mean(axis=0)
  return (z - mean) * jax.lax.rsqrt(var + eps)


def barlow_twins_loss(z1, z2, lambd: float = 0.0051, eps: float = 1e-5):
  """Returns (loss, metrics) for embeddings z1, z2 of shape [N, D]."""
  z1 = z1.astype(jnp.float32)
  z2 = z2.astype(jnp.float32)
  n = z1.shape[0]
  c = _standardize(z1, eps).T @ _standardize(z2, eps) / n
  diag = jnp.diagonal(c)
  on_diag = jnp.sum((1.0 - diag) ** 2)
  off_diag = jnp.sum(c**2) - jnp.sum(diag**2)
  loss = on_diag + lambd * off_diag
  return loss, {"on_diag": on_diag, "off_diag": off_diag,
                "mean_diag": diag.mean()}


def mixup_regularizer(z1, z2, zm, perm, alpha, eps: float = 1e-5):
  """Mixed Barlow Twins' term (without its scale): see the module docstring.

  zm embeds α·x1 + (1 − α)·x2[perm]; returns the summed squared differences.
  """
  n = z1.shape[0]
  z1, z2, zm = (_standardize(z.astype(jnp.float32), eps) for z in (z1, z2, zm))
  z2_perm = z2[perm]
  total = 0.0
  for z in (z1, z2):
    target = (alpha * (z1.T @ z) + (1.0 - alpha) * (z2_perm.T @ z)) / n
    total = total + jnp.sum((zm.T @ z / n - target) ** 2)
  return total


def mixing(rng, n: int, beta: float):
  """Mixed Barlow Twins' permutation of the batch and α ~ Beta(beta, beta), each
  from its own named stream of the step's key (never the views' keys)."""
  perm = jax.random.permutation(random_streams.stream(rng, "mixup/permutation"), n)
  alpha = jax.random.beta(random_streams.stream(rng, "mixup/alpha"), beta, beta)
  return perm, alpha


def make_model(config) -> siamese.Model:
  return siamese.make_model(config, config.barlow_twins.projector_dims)


def make_loss_fn(model: siamese.Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""
  bt = config.barlow_twins
  mixup_scale = bt.get("mixup_loss_scale", 0.0)
  if mixup_scale < 0:
    raise ValueError(f"config.barlow_twins.mixup_loss_scale must be >= 0, got "
                     f"{mixup_scale}.")

  def loss_fn(params, model_state, batch, rng):
    views = siamese.augmented_views(rng, batch["image"], config)
    (z1, z2), (n1, n2), state = siamese.encode(model, params, model_state, views,
                                               nested=True)
    loss, metrics = siamese.with_matryoshka(
        lambda a, b: barlow_twins_loss(a, b, lambd=bt.lambd), z1, z2, n1, n2,
        model.matryoshka_dims)
    if mixup_scale:
      perm, alpha = mixing(rng, z1.shape[0], bt.mixup_beta)
      mixed = alpha * views[0] + (1.0 - alpha) * views[1][perm]
      (zm,), state = siamese.encode(model, params, state, [mixed])
      mix = mixup_scale * bt.lambd * mixup_regularizer(z1, z2, zm, perm, alpha)
      metrics = {**metrics, "bt_loss": loss, "mixup_loss": mix}
      loss = loss + mix
    loss = bt.loss_scale * loss
    return loss, ({"loss": loss, **metrics}, state)

  return loss_fn


def make_stages(model: siamese.Model, config):
  """The loss in stages for exact gradient accumulation (Mixed Barlow Twins'
  regulariser is not supported there: it mixes views across the whole batch)."""
  bt = config.barlow_twins
  if bt.get("mixup_loss_scale", 0.0):
    raise ValueError("grad_accum_steps > 1 does not support Mixed Barlow Twins "
                     "(barlow_twins.mixup_loss_scale > 0).")

  def head(params, emb, rng):
    del params, rng
    loss, metrics = barlow_twins_loss(emb["z1"], emb["z2"], lambd=bt.lambd)
    loss = bt.loss_scale * loss
    return loss, {"loss": loss, **metrics}

  return siamese.make_stages(model, config, head)
