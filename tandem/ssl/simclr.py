"""SimCLR (Chen et al. 2020): NT-Xent contrastive loss between two views.

The 2N projected views are L2-normalised; for each view the positive is the other
view of the same image and the negatives are the other 2N − 2 views of the GLOBAL
batch. The loss is the mean over all 2N views of the cross-entropy of
sim(i, ·) / τ with the view itself excluded. It is written on globally sharded
arrays, so on a mesh the similarity matrix spans every device's (and every host's)
examples: no hand-written all-gather, and the value equals the single-device one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tandem.ssl import siamese

MATRYOSHKA = True  # Supports config.matryoshka_dims (siamese.with_matryoshka).


def nt_xent_loss(z1, z2, temperature: float):
  """Returns (loss, metrics) for projections z1, z2 of shape [N, D]."""
  if temperature <= 0:
    raise ValueError(f"SimCLR temperature must be > 0, got {temperature}.")
  z = jnp.concatenate([z1, z2]).astype(jnp.float32)
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
  n = z1.shape[0]
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
  positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(log_probs, positives[:, None], axis=-1))
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == positives)
  return loss, {"positive_top1": accuracy}


def make_model(config) -> siamese.Model:
  return siamese.make_model(config, config.simclr.projector_dims)


def make_loss_fn(model: siamese.Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""
  temperature = config.simclr.temperature
  if temperature <= 0:
    raise ValueError(f"config.simclr.temperature must be > 0, got {temperature}.")

  def loss_fn(params, model_state, batch, rng):
    (z1, z2), (n1, n2), state = siamese.embed_two_views(
        model, params, model_state, batch["image"], rng, config, nested=True)
    loss, metrics = siamese.with_matryoshka(
        lambda a, b: nt_xent_loss(a, b, temperature), z1, z2, n1, n2,
        model.matryoshka_dims)
    return loss, ({"loss": loss, **metrics}, state)

  return loss_fn


def make_stages(model: siamese.Model, config):
  """The loss in stages for exact gradient accumulation (negatives from the whole
  batch)."""

  def head(params, emb, rng):
    del params, rng
    loss, metrics = nt_xent_loss(emb["z1"], emb["z2"], config.simclr.temperature)
    return loss, {"loss": loss, **metrics}

  return siamese.make_stages(model, config, head)
