"""SigLIP (Zhai et al. 2023): pairwise sigmoid loss between images and texts.

Every (image i, text j) pair of the GLOBAL batch is an independent binary
classification with logit  t · zimg_i·ztxt_j + b  and label z_ij = +1 on the
diagonal (matching pairs), −1 elsewhere:

    L = −(1/N) Σ_{i,j} log σ(z_ij · (t · zimg_i·ztxt_j + b)),

with t = exp(t') learned (t' initialised to log 10, `temperature_init` = 10) and
the bias b learned (initialised to −10, so that the many negatives start near
σ(−10) and the loss is not swamped by them). No softmax over the batch. The sum
over all N² pairs is divided by the batch size N, as in the paper's Algorithm 1
(and big_vision's `sum(axis=-1).mean()`), not averaged over the N² pairs: the mean
would make the gradients N times smaller (32,768× at the paper's batch), close to
AdamW's epsilon (docs/PROTOCOLS.md, "SigLIP"). Written on the globally sharded
arrays, so it equals the single-device value. The model is in
`tandem/ssl/image_text.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tandem.ssl import image_text

init_inputs = image_text.init_inputs


def siglip_loss(zimg, ztxt, t, b):
  """Returns (loss, metrics) for L2-normalised embeddings [N, D], log-scale t, bias b."""
  scale = jnp.exp(t)
  logits = scale * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T + b
  n = logits.shape[0]
  signs = 2.0 * jnp.eye(n) - 1.0
  loss = -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n
  return loss, {"logit_scale": scale, "logit_bias": b,
                **image_text.retrieval_top1(logits)}


def _check(config) -> None:
  if config.siglip.temperature_init <= 0:
    raise ValueError("config.siglip.temperature_init must be > 0 (SigLIP: 10, i.e. "
                     f"t' = log 10), got {config.siglip.temperature_init}.")


def make_model(config) -> image_text.Model:
  _check(config)
  return image_text.make_model(config,
                               logit_scale_init=config.siglip.temperature_init,
                               logit_bias_init=config.siglip.bias_init)


def make_loss_fn(model: image_text.Model, config):
  _check(config)
  pair_loss = lambda zimg, ztxt, t, b: siglip_loss(zimg, ztxt, t, b)
  return image_text.make_loss_fn(model, config, pair_loss)


def make_stages(model: image_text.Model, config):
  _check(config)
  return image_text.make_stages(model, config, lambda zimg, ztxt, t, b: siglip_loss(zimg, ztxt, t, b))
