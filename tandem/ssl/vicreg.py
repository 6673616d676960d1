"""VICReg (Bardes et al. 2022): variance, invariance and covariance regularisation.

For the two views' embeddings z1, z2 [N, D] (the "expander" output),

    L = λ s(z1, z2) + μ [v(z1) + v(z2)] + ν [c(z1) + c(z2)],
    s = mean_{i,d} (z1_id − z2_id)²                      (invariance)
    v(z) = mean_d relu(γ − sqrt(Var_i(z_id) + ε)) / 2      (variance, unbiased Var)
    c(z) = Σ_{d≠e} Cov(z)_de² / D                         (covariance, unbiased)

with λ = μ = 25, ν = 1, γ = 1, ε = 1e-4 (§4.3; the halves in v as in the
authors' main_vicreg.py). Variances and covariances are over the GLOBAL batch: the
loss is ordinary array code on globally sharded arrays, as Barlow Twins'.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tandem.ssl import siamese

MATRYOSHKA = True  # Supports config.matryoshka_dims (siamese.with_matryoshka).


def _variance_term(z, gamma, eps):
  std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps)
  return jnp.mean(jax.nn.relu(gamma - std)) / 2.0


def _covariance_term(z):
  n, d = z.shape
  z = z - z.mean(axis=0)
  cov = z.T @ z / (n - 1)
  return (jnp.sum(cov ** 2) - jnp.sum(jnp.diagonal(cov) ** 2)) / d


def vicreg_loss(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0,
                gamma=1.0, eps=1e-4):
  """Returns (loss, metrics) for the two views' embeddings [N, D]."""
  z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
  invariance = jnp.mean((z1 - z2) ** 2)
  variance = _variance_term(z1, gamma, eps) + _variance_term(z2, gamma, eps)
  covariance = _covariance_term(z1) + _covariance_term(z2)
  loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
  return loss, {"invariance": invariance, "variance": variance,
                "covariance": covariance}


def _loss(config, z1, z2):
  v = config.vicreg
  return vicreg_loss(z1, z2, v.sim_coeff, v.std_coeff, v.cov_coeff)


def make_model(config) -> siamese.Model:
  return siamese.make_model(config, config.vicreg.projector_dims)


def make_loss_fn(model: siamese.Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""

  def loss_fn(params, model_state, batch, rng):
    (z1, z2), (n1, n2), state = siamese.embed_two_views(
        model, params, model_state, batch["image"], rng, config, nested=True)
    loss, metrics = siamese.with_matryoshka(
        lambda a, b: _loss(config, a, b), z1, z2, n1, n2, model.matryoshka_dims)
    return loss, ({"loss": loss, **metrics}, state)

  return loss_fn


def make_stages(model: siamese.Model, config):
  """The loss in stages for exact gradient accumulation."""

  def head(params, emb, rng):
    del params, rng
    loss, metrics = _loss(config, emb["z1"], emb["z2"])
    return loss, {"loss": loss, **metrics}

  return siamese.make_stages(model, config, head)
