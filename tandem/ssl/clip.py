"""CLIP (Radford et al. 2021): symmetric contrastive loss between images and texts.

Image and text embeddings are L2-normalised; logits = s · zimg ztxtᵀ over the GLOBAL
batch (every device's and every host's pairs), with the logit scale s = exp(t)
learned, t initialised to log(1 / temperature_init) (CLIP: temperature 0.07). The
parameter t itself is clamped to [0, log max_logit_scale] (CLIP: 100) after every
optimizer update (`param_bounds`, applied by `optimizers.clamp_params` in the train
step), as open_clip does: the loss uses exp(t) unclipped, so t keeps its gradient
and can come back from the bound (a clip in the forward pass would zero t's
gradient for good once t passed log 100). The loss is the mean of the image→text
and text→image cross-entropies with the matching pair as the target. Written on
the globally sharded arrays, so it equals the single-device value.

The two-tower model is in `tandem/ssl/image_text.py`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tandem.ssl import image_text

init_inputs = image_text.init_inputs


def clip_loss(zimg, ztxt, t):
  """Returns (loss, metrics) for L2-normalised embeddings [N, D] and log scale t."""
  scale = jnp.exp(t)
  logits = scale * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T
  labels = jnp.arange(logits.shape[0])
  i2t = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1),
                                      labels[:, None], axis=1))
  t2i = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0),
                                      labels[None, :], axis=0))
  loss = (i2t + t2i) / 2
  return loss, {"logit_scale": scale, **image_text.retrieval_top1(logits)}


def _check(config) -> None:
  if config.clip.temperature_init <= 0:
    raise ValueError("config.clip.temperature_init must be > 0 (CLIP: 0.07, i.e. an "
                     f"initial logit scale of 1/0.07), got {config.clip.temperature_init}.")
  if config.clip.max_logit_scale <= 0:
    raise ValueError("config.clip.max_logit_scale must be > 0 (CLIP: 100), got "
                     f"{config.clip.max_logit_scale}.")


def param_bounds(config) -> dict[str, tuple[float, float]]:
  """The box t is clamped into after each update: [0, log max_logit_scale]."""
  _check(config)
  return {"t": (0.0, math.log(config.clip.max_logit_scale))}


def make_model(config) -> image_text.Model:
  _check(config)
  return image_text.make_model(config,
                               logit_scale_init=1.0 / config.clip.temperature_init)


def make_loss_fn(model: image_text.Model, config):
  _check(config)
  pair_loss = lambda zimg, ztxt, t, b: clip_loss(zimg, ztxt, t)
  return image_text.make_loss_fn(model, config, pair_loss)



def make_stages(model: image_text.Model, config):
  _check(config)
  return image_text.make_stages(model, config, lambda zimg, ztxt, t, b: clip_loss(zimg, ztxt, t))
