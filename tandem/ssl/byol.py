"""BYOL (Grill et al. 2020): predict an EMA teacher's projection of the other view.

The student (backbone, projector, predictor q) sees both views; the teacher
(backbone and projector, an exponential moving average of the student's:
`tandem/ssl/ema.py`) projects both views to targets z', with no gradient. With
unit-normalised vectors the loss is BYOL's symmetrised normalised MSE (§3.1, Eq. 2),

    L = mean_i ‖q̄(v1_i) − z̄'(v2_i)‖² + mean_i ‖q̄(v2_i) − z̄'(v1_i)‖²
      = mean_i [2 − 2 cos(q(v1_i), z'(v2_i))] + mean_i [2 − 2 cos(q(v2_i), z'(v1_i))],

a sum over views of per-example terms, so it needs no cross-device reduction of its
own. The teacher's momentum rises from `base_momentum` to 1 by a cosine over
training (§3.2: 0.996 → 1). The model is `tandem/ssl/siamese.py`'s with a
predictor; the teacher has no predictor.
"""
from __future__ import annotations

import jax.numpy as jnp

from tandem.ssl import ema
from tandem.ssl import siamese


def _normalize(x, eps: float = 1e-12):
  return x * (1.0 / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps))


def byol_loss(p1, p2, t1, t2):
  """Returns (loss, metrics): student predictions p1, p2 [N, D] of views 1 and 2
  against the teacher's projections t1, t2 of the same views (targets crossed)."""
  p1, p2, t1, t2 = (_normalize(x.astype(jnp.float32)) for x in (p1, p2, t1, t2))
  cos12 = jnp.sum(p1 * t2, axis=-1)
  cos21 = jnp.sum(p2 * t1, axis=-1)
  loss = jnp.mean(2.0 - 2.0 * cos12) + jnp.mean(2.0 - 2.0 * cos21)
  return loss, {"cosine": (jnp.mean(cos12) + jnp.mean(cos21)) / 2.0}


def make_model(config) -> siamese.Model:
  return siamese.make_model(config, config.byol.projector_dims,
                            predictor_dims=config.byol.predictor_dims)


# The EMA teacher: no predictor; momentum from config.byol.base_momentum to 1.
init_state, make_after_update = ema.teacher_hooks("byol")


def make_loss_fn(model: siamese.Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""

  def loss_fn(params, model_state, batch, rng):
    views = siamese.augmented_views(rng, batch["image"], config)
    (p1, p2), (t1, t2), state = siamese.encode_student_and_teacher(
        model, params, model_state, views)
    loss, metrics = byol_loss(p1, p2, t1, t2)
    return loss, ({"loss": loss, **metrics}, state)

  return loss_fn
