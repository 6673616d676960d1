"""MoCo v3 (Chen, Xie and He 2021): InfoNCE between a student's predictions and an
EMA teacher's projections of the other view, over the global batch.

For the student's predictions q of one view and the teacher's projections k of
the other (both unit-normalised, no gradient through k), each query's positive is
its own image's key and its negatives every other key of the GLOBAL batch:

    ctr(q, k) = 2τ · mean_i CE(softmax_j(q_i · k_j / τ), i),
    L = ctr(q1, k2) + ctr(q2, k1)

(§3, Algorithm 1 and the authors' moco/builder.py, which gathers the keys from
every device and scales by 2τ; τ = 0.2 for ViTs, Table 9). Here the logits are
one [N, N] product of globally sharded arrays, equal to the single-device value.
The teacher is `tandem/ssl/ema.py`'s (momentum 0.99 → 1 by a cosine, §4); the
projector ends with an affine-free BatchNorm and a predictor follows it
(`tandem/ssl/siamese.py`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tandem.ssl import ema
from tandem.ssl import siamese


def _normalize(x, eps: float = 1e-12):
  return x * (1.0 / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps))


def contrastive_loss(q, k, temperature: float):
  """2τ · mean cross-entropy of each query against all keys (its own the
  positive); returns (loss, top-1 accuracy of the positive)."""
  q, k = _normalize(q.astype(jnp.float32)), _normalize(k.astype(jnp.float32))
  logits = q @ k.T / temperature
  labels = jnp.arange(q.shape[0])
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
  top1 = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  return 2.0 * temperature * ce, top1


def moco_v3_loss(q1, q2, k1, k2, temperature: float):
  """Returns (loss, metrics): the symmetrised loss of the module docstring."""
  loss12, top1_12 = contrastive_loss(q1, k2, temperature)
  loss21, top1_21 = contrastive_loss(q2, k1, temperature)
  return loss12 + loss21, {"positive_top1": (top1_12 + top1_21) / 2.0}


def make_model(config) -> siamese.Model:
  m = config.moco_v3
  return siamese.make_model(config, m.projector_dims, predictor_dims=m.predictor_dims,
                            projector_last_bn=True)


# The EMA teacher: no predictor; momentum from config.moco_v3.base_momentum to 1.
init_state, make_after_update = ema.teacher_hooks("moco_v3")


def make_loss_fn(model: siamese.Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""
  temperature = config.moco_v3.temperature
  if not temperature > 0:
    raise ValueError(f"config.moco_v3.temperature must be > 0, got {temperature}.")

  def loss_fn(params, model_state, batch, rng):
    views = siamese.augmented_views(rng, batch["image"], config)
    (q1, q2), (k1, k2), state = siamese.encode_student_and_teacher(
        model, params, model_state, views)
    loss, metrics = moco_v3_loss(q1, q2, k1, k2, temperature)
    return loss, ({"loss": loss, **metrics}, state)

  return loss_fn
