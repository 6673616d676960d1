"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners").

A ViT encodes a random subset of an image's patches; a lightweight decoder sees the
encoded visible patches plus a shared learned mask token at every masked position and
predicts the pixels of every patch; the loss is the MSE on the masked patches only.
Choices, after the reference code (facebookresearch/mae) where the paper is silent:

* Encoder: the transfer backbone itself (`tandem.models.vit.Model`, params under
  `encoder`), run with `keep_idx` on the visible patches only (position embeddings
  added before the subset is taken; the class token, if any, is kept). Its
  `pre_logits` is what linear probes and `tandem.load` read.
* Masking: per example, argsort of uniform noise; the first
  K = round(N · (1 − mask_ratio)) patches of the shuffle stay visible (rounding half
  up; the reference floors, which gives the same K at N = 196 and 49, ratio 0.75).
* Decoder: Dense to the decoder width, mask tokens (normal(0.02) init), fixed 2-D
  sin-cos position embeddings (zero for the class token, which the decoder also
  sees), `vit.Encoder` blocks and LayerNorm, then a Dense to p·p·C pixels per patch.
* Target: the patches of the normalised input (config.input mean/std), patches in
  raster order as `PatchEmbed`, pixels in (row, column, channel) order inside a patch.
  With norm_pix_loss each target patch is standardised by its own mean and unbiased
  variance (torch's `var`, as the reference) + 1e-6.
* Loss: per-patch mean squared error averaged over the masked patches of the global
  batch (one array computation; on a mesh it equals the single-device value).
* Augmentation: random resized crop (scale `config.aug.crop_scale`, (0.2, 1) as the
  reference) and horizontal flip, via `augment.augment_view` with the colour ops off;
  the crop is resized bilinearly (the reference: bicubic).

The evaluator `config.evals.reconstruction` (module `tandem.ssl.mae`: `load_data`,
`evaluate_task`, `images`; tandem/transfer/protocol.py) reports the masked-patch
loss of fixed test images and draws them (rows: original | masked | reconstruction
with the visible patches pasted back).
"""
from __future__ import annotations

import functools
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tandem import models
from tandem import parallel
from tandem import random_streams
from tandem.data import augment
from tandem.data import preprocess
from tandem.models import vit

NORM_PIX_EPS = 1e-6
VIT_MODELS = "vit_tiny, vit_ti, vit_s or vit_b"


def patchify(images, p: int):
  """[B, H, W, C] -> [B, (H/p)·(W/p), p·p·C], patches in raster order."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches, p: int, h: int, w: int, c: int):
  """Inverse of `patchify`: [B, N, p·p·C] -> [B, h, w, c] (h, w in pixels)."""
  b = patches.shape[0]
  x = patches.reshape(b, h // p, w // p, p, p, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """K = round(N · (1 − mask_ratio)), or a ValueError unless 1 <= K <= N − 1."""
  k = int(np.floor(num_patches * (1.0 - mask_ratio) + 0.5))
  if not (0.0 < mask_ratio < 1.0 and 1 <= k <= num_patches - 1):
    raise ValueError(
        f"config.mae.mask_ratio={mask_ratio} must be strictly between 0 and 1 and "
        f"leave at least one visible and one masked patch of the {num_patches}: "
        f"valid range {0.5 / num_patches:.4g} < mask_ratio <= "
        f"{1 - 0.5 / num_patches:.4g} (it leaves {k} visible).")
  return k


def random_masking(rng, batch: int, num_patches: int, mask_ratio: float):
  """A random mask per example: (keep_idx [B, K], mask [B, N] float (1 = masked),
  restore_idx [B, N]) with `shuffled[restore_idx] == original order`."""
  k = num_visible(num_patches, mask_ratio)
  noise = jax.random.uniform(rng, (batch, num_patches))
  shuffle_idx = jnp.argsort(noise, axis=1)
  restore_idx = jnp.argsort(shuffle_idx, axis=1)
  return shuffle_idx[:, :k], _mask(restore_idx, k), restore_idx


def _mask(restore_idx, k: int):
  """[B, N] 1 = masked, for a shuffle whose first k patches are the visible ones."""
  b, n = restore_idx.shape
  mask = jnp.concatenate([jnp.zeros((b, k)), jnp.ones((b, n - k))], axis=1)
  return jnp.take_along_axis(mask, restore_idx, axis=1)


def _patch_stats(patches):
  """Per-patch mean and unbiased variance over its pixels."""
  return (jnp.mean(patches, axis=-1, keepdims=True),
          jnp.var(patches, axis=-1, keepdims=True, ddof=1))


def mae_loss(pred, target_patches, mask, norm_pix_loss: bool = True):
  """Mean over masked patches (mask 1) of the per-patch MSE; all [B, N, ...]."""
  target = target_patches.astype(jnp.float32)
  if norm_pix_loss:
    mean, var = _patch_stats(target)
    target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


class Model(nn.Module):
  """ViT `encoder` on the visible patches + a lightweight `decoder`.

  Returns the encoder's outputs plus `pred` [B, N, p·p·C] and `mask` [B, N]. The
  mask is drawn from `mask_rng`, or given as `keep_idx` and `restore_idx` (from
  `random_masking`); with neither every patch is visible (as in `init`).
  """
  encoder_name: str
  encoder: dict[str, Any]
  decoder: dict[str, int]  # width, depth, mlp_dim, num_heads.
  mask_ratio: float = 0.75
  dtype: Any = jnp.float32  # Compute dtype (`models.compute_dtype`); `pred` is float32.

  @nn.compact
  def __call__(self, images, *, train: bool = False, mask_rng=None, keep_idx=None,
               restore_idx=None):
    encoder = models.get_model(self.encoder_name, **self.encoder, dtype=self.dtype,
                               name="encoder")
    p, prefix = encoder.patch_size, encoder.num_prefix_tokens
    b, h, w, c = images.shape
    grid = (h // p, w // p)
    n = grid[0] * grid[1]
    if mask_rng is not None:
      keep_idx, mask, restore_idx = random_masking(mask_rng, b, n, self.mask_ratio)
    elif (keep_idx is None) != (restore_idx is None):
      raise ValueError("Pass keep_idx and restore_idx together (random_masking).")
    elif keep_idx is not None:
      mask = _mask(restore_idx, keep_idx.shape[1])
    else:
      mask = jnp.zeros((b, n))
    out = encoder(images, train=train, keep_idx=keep_idx)

    width = self.decoder["width"]
    dense = lambda n_out, name: nn.Dense(
        n_out, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype,
        name=name)
    x = dense(width, "decoder_embed")(out["encoded"].astype(jnp.float32))
    cls, x = x[:, :prefix], x[:, prefix:]
    mask_token = self.param("mask_token", nn.initializers.normal(stddev=0.02),
                            (1, 1, width), jnp.float32)
    if restore_idx is not None:  # Mask tokens after the visible ones, then unshuffle.
      x = jnp.concatenate([x, jnp.tile(mask_token, (b, n - x.shape[1], 1))], axis=1)
      x = jnp.take_along_axis(x, restore_idx[..., None], axis=1)
    x = jnp.concatenate([cls, x], axis=1)
    x = x + vit.get_posemb(self, "sincos2d", grid, width, prefix)
    x = vit.Encoder(self.decoder["depth"], self.decoder["mlp_dim"],
                    self.decoder["num_heads"], dtype=self.dtype, name="decoder")(
                        x.astype(self.dtype), train=train)
    pred = dense(p * p * c, "decoder_pred")(x[:, prefix:]).astype(jnp.float32)
    return {**out, "pred": pred, "mask": mask}


def _check_config(config) -> int:
  """Validates the model and mask ratio; returns the patch size."""
  if config.model_name != "vit":
    raise ValueError(
        f"MAE needs a ViT encoder (config.model_name='vit': model={VIT_MODELS}); "
        f"got config.model_name={config.model_name!r}.")
  p = config.model.get("patch_size", vit.Model.patch_size)
  num_visible((config.input.image_size // p) ** 2, config.mae.mask_ratio)
  return p


def make_model(config) -> Model:
  _check_config(config)
  return Model(encoder_name=config.model_name, encoder=config.model.to_dict(),
               decoder=dict(config.mae.decoder), mask_ratio=config.mae.mask_ratio,
               dtype=models.compute_dtype(config))


def _normalized(images_uint8, config, aug_rng=None):
  images = images_uint8.astype(jnp.float32) / 255.0
  if aug_rng is not None and config.get("aug"):
    images = augment.augment_view(aug_rng, images, config.aug)
  return preprocess.normalize(images, config.input.mean, config.input.std)


def make_loss_fn(model: Model, config):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`."""
  p = _check_config(config)
  norm_pix_loss = config.mae.norm_pix_loss

  def loss_fn(params, model_state, batch, rng):
    aug_rng = random_streams.stream(rng, "augment/view")
    mask_rng = random_streams.stream(rng, "mae/mask")
    x = _normalized(batch["image"], config, aug_rng)
    out = model.apply({"params": params, **model_state}, x, train=True,
                      mask_rng=mask_rng)
    loss = mae_loss(out["pred"], patchify(x, p), out["mask"], norm_pix_loss)
    return loss, ({"loss": loss}, model_state)

  return loss_fn


def make_stages(model: Model, config):
  """(prepare, embed, head) for gradient accumulation. MAE's loss is per example,
  so accumulation is exact as long as every micro-batch sees the masks the whole
  batch would: `prepare` draws them for the whole batch."""
  p = _check_config(config)

  def prepare(batch, rng):
    x = _normalized(batch["image"], config,
                    random_streams.stream(rng, "augment/view"))
    n = (x.shape[1] // p) * (x.shape[2] // p)
    keep_idx, _, restore_idx = random_masking(
        random_streams.stream(rng, "mae/mask"), x.shape[0], n, config.mae.mask_ratio)
    return {"x": x, "keep_idx": keep_idx, "restore_idx": restore_idx}

  def embed(params, model_state, inputs):
    out = model.apply({"params": params, **model_state}, inputs["x"], train=True,
                      keep_idx=inputs["keep_idx"], restore_idx=inputs["restore_idx"])
    return {"pred": out["pred"], "mask": out["mask"],
            "target": patchify(inputs["x"], p)}, model_state

  def head(params, emb, rng):
    del params, rng
    loss = mae_loss(emb["pred"], emb["target"], emb["mask"], config.mae.norm_pix_loss)
    return loss, {"loss": loss}

  return prepare, embed, head


class Reconstructions:
  """`num_images` fixed images of `config.evals.reconstruction` (dataset, split,
  num_images) and the jitted reconstruction under one fixed mask: the evaluator's
  data (`load_data`)."""

  def __init__(self, config, images, mesh=None):
    self.images, self.mesh = images, mesh
    self.reconstruct = jax.jit(
        _make_reconstruct(config, make_model(config), _check_config(config)),
        out_shardings=None if mesh is None else parallel.replicated(mesh))
    self._last = (None, None)  # (params, outputs): one pass for loss and grid.

  def run(self, variables):
    if self._last[0] is not variables["params"]:
      images = self.images
      if self.mesh is not None:  # Every process holds all the images.
        images = parallel.host_to_global(images, parallel.replicated(self.mesh))
      self._last = (variables["params"],
                    jax.device_get(self.reconstruct(variables, images)))
    return self._last[1]


def load_data(settings, config, data_dir: str, *, extract=None, cache=None,
              mesh=None):
  del extract, cache  # No features: the whole model reconstructs.
  from tandem.data import input_pipeline  # Host data code, only when evaluating.
  images, _ = input_pipeline.load_arrays(
      settings.dataset, settings.split, data_dir=data_dir,
      image_size=config.input.image_size, channels=config.input.channels)
  return Reconstructions(config, images[:settings.get("num_images", 8)], mesh)


def evaluate_task(data: Reconstructions, settings, model) -> list[dict]:
  """The training loss on the fixed images and mask: `mae_reconstruction/loss`."""
  del settings
  *_, loss = data.run(model.variables)
  return [{"evaluator": "mae_reconstruction", "metric": "loss", "value": float(loss)}]


def images(data: Reconstructions, settings, model) -> dict:
  """The grid "mae/reconstruction" (uint8 [H, W, C]; rows: original, masked,
  reconstruction with the visible patches pasted back; predictions of normalised
  patches are un-normalised with the target patch's own mean/variance)."""
  del settings
  *rows, _ = data.run(model.variables)
  return {"mae/reconstruction": _grid(rows)}


@functools.lru_cache(maxsize=8)
def _reconstruct_fn(config_json: str, seed: int):
  config = ml_collections.ConfigDict(json.loads(config_json))
  return jax.jit(_make_reconstruct(config, make_model(config), _check_config(config),
                                   seed))


def reconstruct(config, variables, images, seed: int = 0) -> dict[str, np.ndarray]:
  """MAE reconstructions of any images under an MAE checkpoint's `config` and
  `variables` (`tandem.load(workdir).config`, `.variables`): {"original",
  "masked", "reconstruction": uint8 [N, H, W, C] at the config's image size, with
  the visible patches pasted back, "loss": the masked-patch loss}. Images are
  uint8 or float in [0, 1], any size and channels (`features.prepare_images`);
  `seed` draws the mask (0 is the mask of the evaluation inside pretraining)."""
  from tandem.transfer import features  # pylint: disable=g-import-not-at-top
  if config.get("objective") != "mae":
    raise ValueError(f"reconstruct needs an MAE checkpoint; this one is "
                     f"{config.get('objective')!r}.")
  images = features.prepare_images(images, config.input)
  fn = _reconstruct_fn(config.to_json_best_effort(sort_keys=True), int(seed))
  original, masked, reconstruction, loss = jax.device_get(fn(variables, images))
  return {"original": original, "masked": masked, "reconstruction": reconstruction,
          "loss": float(loss)}


def _make_reconstruct(config, model, p, seed: int = 0):
  mean, std = (jnp.asarray(v, jnp.float32) for v in (config.input.mean,
                                                    config.input.std))
  to_uint8 = lambda x: jnp.round(jnp.clip(x * std + mean, 0, 1) * 255).astype(
      jnp.uint8)

  def reconstruct(variables, images_uint8):
    x = _normalized(images_uint8, config)
    out = model.apply(variables, x, train=False, mask_rng=jax.random.key(seed))
    target, mask = patchify(x, p), out["mask"][..., None]
    loss = mae_loss(out["pred"], target, out["mask"], config.mae.norm_pix_loss)
    pred = out["pred"]
    if config.mae.norm_pix_loss:
      patch_mean, patch_var = _patch_stats(target)
      pred = pred * jnp.sqrt(patch_var + NORM_PIX_EPS) + patch_mean
    gray = (0.5 - mean) / std  # Masked patches are shown mid-gray.
    images = lambda patches: to_uint8(unpatchify(patches, p, *x.shape[1:]))
    return (images(target),
            images(jnp.where(mask > 0, jnp.tile(gray, p * p), target)),
            images(jnp.where(mask > 0, pred, target)), loss)

  return reconstruct


def _grid(rows, border: int = 1) -> np.ndarray:
  """uint8 [R·(H+b)+b, B·(W+b)+b, C] from R rows of [B, H, W, C] images, white
  borders, small images enlarged (nearest) to at least 64 pixels a side."""
  scale = max(1, 64 // max(rows[0].shape[1:3]))
  rows = [np.repeat(np.repeat(np.asarray(r), scale, 1), scale, 2) for r in rows]
  num, h, w, c = rows[0].shape
  grid = np.full((len(rows) * (h + border) + border, num * (w + border) + border, c),
                 255, np.uint8)
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      top, left = border + i * (h + border), border + j * (w + border)
      grid[top:top + h, left:left + w] = image
  return grid
