"""On-device SSL image augmentations (BYOL / SimCLR / Barlow Twins views) in pure JAX.

Runs inside the jitted train step. Each example gets its own key (``jax.random.split``
over the batch) and draws one vector of uniforms from it; the pipeline is ``vmap``-ed
over the batch, so a batch sharded over the mesh's data axis is augmented where it lies.
The config is read in Python, so its values are static: ops whose probability or
strength is 0 are not traced at all.

Pipeline, in the order of BYOL (Grill et al., 2020, appendix B) and torchvision:

1. Random resized crop (torchvision ``RandomResizedCrop``): area fraction uniform in
   ``crop_scale``, aspect ratio log-uniform in ``crop_ratio``, integer crop size by
   rounding; 10 trials drawn at once and the first that fits is kept, else torchvision's
   fallback (the whole image, centre-cropped to clip its aspect into ``crop_ratio``).
   The crop is resized back to HxW bilinearly with half-pixel centres, clamped at the
   crop's edges (``align_corners=False``), as torchvision; it is never larger than the
   output, so no antialiasing is needed.
2. Horizontal flip with ``flip_prob``.
3. Colour jitter with ``jitter_prob`` (torchvision ``ColorJitter``): brightness,
   contrast and saturation factors uniform in [max(0, 1-s), 1+s], hue shift uniform in
   [-h, h] turns (RGB->HSV->RGB), each op clipped to [0, 1], in a random order per
   example as torchvision, BYOL and SimCLR do. Contrast blends with the mean luma,
   saturation with the luma, as torchvision.
4. Grayscale with ``grayscale_prob``: the ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B
   (as PIL; torchvision and ``tf.image`` use 0.2989, whose weights sum to 0.9999, so
   that gray would not stay gray) in all 3 channels.
5. Gaussian blur with ``blur_prob``: separable, sigma uniform in ``blur_sigma`` per
   example, kernel size ``blur_kernel_frac`` of the image side made odd (23 for 224 as in
   BYOL; at least 3, so 3 for 28 and 32), reflect padding as torchvision.
6. Solarize with ``solarize_prob``: pixels >= ``solarize_threshold`` become 1 - pixel.

On one-channel images saturation, hue and grayscale are no-ops (they only move colour);
brightness, contrast (against the image mean), blur and solarize apply.

Implementation choices, for speed on CPU (measured at 28x28 and 32x32): XLA fuses long
elementwise chains into single loops that recompute every earlier op once per channel
and per stencil tap, so the pipeline is built around dots, whose operands XLA
materialises. The spatial ops (crop + flip, blur) are per-example [H, H] and [W, W]
matrices applied as two matmuls; in the pipeline this beat gathers and
``jax.image.scale_and_translate`` (whose results get recomputed downstream), and it is
exact for the identity crop. The colour ops that mix channels (brightness, contrast,
saturation) are per-example 3x3 colour matrices. Images are channel-first inside the
pipeline, so the hue works on contiguous planes. Dots use ``Precision.HIGHEST`` so
accelerators keep float32. Every random number of an example comes from one ``uniform``
call, as each threefry call adds about a second of XLA compile time on CPU.
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tandem import random_streams

_LUMA = (0.299, 0.587, 0.114)
_CROP_TRIALS = 10
_HIGHEST = jax.lax.Precision.HIGHEST


# Every op off: the base for views that switch on only some ops (fine-tuning's crop
# and flip). The recipes' views are in the configs (configs/common.py, used by
# configs/ssl/), with their sources.
IDENTITY = dict(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
    brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, grayscale_prob=0.0,
    blur_prob=0.0, blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1, solarize_prob=0.0,
    solarize_threshold=0.5)


def two_views(rng: jax.Array, images_uint8: jax.Array,
              aug_cfg: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  """Two independently augmented float views in [0, 1] of a uint8 [B, H, W, C] batch."""
  images = images_uint8.astype(jnp.float32) / 255.0
  return (augment_view(random_streams.stream(rng, "augment/view1"), images,
                       aug_cfg["view1"]),
          augment_view(random_streams.stream(rng, "augment/view2"), images,
                       aug_cfg["view2"]))


def local_views(rng: jax.Array, images_uint8: jax.Array,
                aug_cfg: Mapping[str, Any]) -> list[jax.Array]:
  """Multi-crop's small views (Caron et al. 2020, SwAV §3.2; DINO): `num_local`
  crops of `aug_cfg["local"]` (a view whose `output_size` is smaller than the
  images, e.g. crop scale (0.05, 0.4) at 96 of 224 pixels), each from its own
  stream; [] when `num_local` is 0 or absent."""
  num_local = int(aug_cfg.get("num_local", 0))
  if num_local > 16:
    raise ValueError(f"num_local={num_local}: at most 16 local crops (each needs a "
                     "random stream of its own in tandem.random_streams).")
  images = images_uint8.astype(jnp.float32) / 255.0
  return [augment_view(random_streams.stream(rng, f"augment/local{i}"), images,
                       aug_cfg["local"])
          for i in range(num_local)]


def augment_view(rng: jax.Array, images: jax.Array, cfg: Mapping[str, Any]) -> jax.Array:
  """Augments float32 [B, H, W, C] images in [0, 1]; one independent draw per example.
  With `output_size` > 0 in `cfg` the crop is resized to that many pixels square
  (multi-crop's local views) instead of the input's size."""
  p = _read_config(cfg)

  def one(key, img):
    draws = _name_draws(jax.random.uniform(key, (_NUM_DRAWS,)))
    return jnp.moveaxis(_augment_chw(draws, jnp.moveaxis(img, -1, 0), p), 0, -1)

  keys = jax.random.split(rng, images.shape[0])
  # Under an Explicit mesh vmap needs the keys sharded like the batch; a no-op otherwise.
  spec = jax.typeof(images).sharding.spec
  if len(spec) and spec[0] is not None:
    keys = jax.sharding.reshard(keys, jax.P(spec[0]))
  return jax.vmap(one)(keys, images)


def _read_config(cfg: Mapping[str, Any]) -> dict:
  """Plain Python floats from a dict or ConfigDict, so that nothing in it is traced."""
  pairs = ("crop_scale", "crop_ratio", "blur_sigma")
  scalars = ("flip_prob", "jitter_prob", "brightness", "contrast", "saturation", "hue",
             "grayscale_prob", "blur_prob", "blur_kernel_frac", "solarize_prob",
             "solarize_threshold")
  p = {k: tuple(float(v) for v in cfg[k]) for k in pairs}
  p.update({k: float(cfg[k]) for k in scalars})
  p["output_size"] = int(cfg.get("output_size", 0))  # 0: the input's size.
  return p


# The uniform [0, 1) draws each example uses, by name and count.
_DRAWS = (("area", _CROP_TRIALS), ("log_ratio", _CROP_TRIALS), ("top", 1), ("left", 1),
          ("flip", 1), ("jitter", 1), ("brightness", 1), ("contrast", 1),
          ("saturation", 1), ("hue", 1), ("jitter_order", 4), ("grayscale", 1),
          ("blur", 1), ("sigma", 1), ("solarize", 1))
_NUM_DRAWS = sum(n for _, n in _DRAWS)


def _name_draws(u: jax.Array) -> dict:
  named, i = {}, 0
  for name, n in _DRAWS:
    named[name] = u[i:i + n] if n > 1 else u[i]
    i += n
  return named


def _uniform(u, low, high):
  return low + (high - low) * u


def _maybe(u, prob: float, new, old):
  """``new`` with probability ``prob`` (decided by the uniform draw u), else ``old``."""
  return new if prob >= 1.0 else jnp.where(u < prob, new, old)


def _augment_chw(u: dict, img: jax.Array, p: dict) -> jax.Array:
  """The whole pipeline on one channel-first [C, H, W] image, given its draws ``u``."""
  c, in_h, in_w = img.shape
  top, left, crop_h, crop_w = _sample_crop(u, in_h, in_w, p["crop_scale"],
                                           p["crop_ratio"])
  h = w = p["output_size"] or None
  h, w = h or in_h, w or in_w
  rows, cols = _crop_matrix(top, crop_h, h, in_h), _crop_matrix(left, crop_w, w, in_w)
  if p["flip_prob"] > 0:
    cols = _maybe(u["flip"], p["flip_prob"], cols[::-1], cols)
  img = _resample(img, rows, cols)

  if p["jitter_prob"] > 0:
    img = _color_jitter(u, img, p)
  if c == 3 and p["grayscale_prob"] > 0:
    img = _maybe(u["grayscale"], p["grayscale_prob"],
                 jnp.broadcast_to(_luma(img), img.shape), img)
  if p["blur_prob"] > 0:
    sigma = _uniform(u["sigma"], *p["blur_sigma"])
    rows, cols = (_maybe(u["blur"], p["blur_prob"],
                         _blur_matrix(sigma, n, _kernel_size(p["blur_kernel_frac"], n)),
                         jnp.eye(n)) for n in (h, w))
    img = _resample(img, rows, cols)
  if p["solarize_prob"] > 0:
    solarized = jnp.where(img >= p["solarize_threshold"], 1.0 - img, img)
    img = _maybe(u["solarize"], p["solarize_prob"], solarized, img)
  return jnp.clip(img, 0.0, 1.0)


# ----------------------------------------------------------------------------- spatial


def _resample(img, rows, cols):
  """out[c] = rows @ img[c] @ cols.T for [C, H, W] img, [H, H] rows, [W, W] cols."""
  img = jnp.einsum("hk,ckw->chw", rows, img, precision=_HIGHEST)
  return jnp.einsum("wk,chk->chw", cols, img, precision=_HIGHEST)


def _sample_crop(u, h, w, scale, ratio):
  """torchvision RandomResizedCrop.get_params, vectorised: (top, left, height, width)."""
  area = h * w * _uniform(u["area"], *scale)
  aspect = jnp.exp(_uniform(u["log_ratio"], np.log(ratio[0]), np.log(ratio[1])))
  crop_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  crop_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
  first = jnp.argmax(fits)

  # The fallback is static: the whole image, centre-cropped to an aspect within ratio.
  if w / h < ratio[0]:
    fallback_w, fallback_h = w, int(round(w / ratio[0]))
  elif w / h > ratio[1]:
    fallback_w, fallback_h = int(round(h * ratio[1])), h
  else:
    fallback_w, fallback_h = w, h
  found = fits.any()
  crop_h = jnp.where(found, crop_h[first], fallback_h)
  crop_w = jnp.where(found, crop_w[first], fallback_w)
  offset = lambda v, room: jnp.minimum(jnp.floor(v * (room + 1)).astype(jnp.int32), room)
  top = jnp.where(found, offset(u["top"], h - crop_h), (h - fallback_h) // 2)
  left = jnp.where(found, offset(u["left"], w - crop_w), (w - fallback_w) // 2)
  return top, left, crop_h, crop_w


def _crop_matrix(start, size, out_size: int, in_size: int | None = None):
  """[out, in] bilinear weights resizing pixels [start, start+size) to out_size pixels,
  half-pixel centres, clamped to the crop (align_corners=False). `in_size` defaults
  to `out_size`; a crop resized to fewer pixels than it holds is not antialiased
  (torchvision's tensor resize is not either, without `antialias`)."""
  pos = (jnp.arange(out_size) + 0.5) * (size / out_size) - 0.5
  pos = jnp.clip(pos, 0.0, size - 1.0)
  lo = jnp.floor(pos)
  frac = pos - lo
  lo = lo.astype(jnp.int32)
  hi = jnp.minimum(lo + 1, size - 1)
  out = jnp.arange(out_size)
  return (jnp.zeros((out_size, in_size or out_size))
          .at[out, start + lo].add(1.0 - frac).at[out, start + hi].add(frac))


def _kernel_size(frac: float, side: int) -> int:
  """Odd, at least 3, at most what reflect padding allows (2 * side - 1)."""
  return min(max(3, 2 * int(frac * side / 2) + 1), 2 * side - 1)


def _blur_matrix(sigma, size: int, ksize: int):
  """[size, size] Gaussian blur with reflect padding (torchvision's gaussian_blur)."""
  radius = ksize // 2
  offsets = np.arange(-radius, radius + 1)
  taps = jnp.exp(-0.5 * (offsets / sigma) ** 2)
  taps = taps / taps.sum()
  # Source pixel of each output pixel and tap, reflected at the borders without
  # repeating the edge pixel (static); taps landing on the same source pixel add up.
  src = np.abs(np.arange(size)[:, None] + offsets)
  src = np.where(src > size - 1, 2 * (size - 1) - src, src)
  out = np.broadcast_to(np.arange(size)[:, None], src.shape)
  return jnp.zeros((size, size)).at[out, src].add(jnp.broadcast_to(taps, src.shape))


# ------------------------------------------------------------------------------ colour


def _luma(img):
  """[H, W] luma of a [C, H, W] image; elementwise, so accelerators keep float32."""
  return img[0] if img.shape[0] == 1 else sum(w * x for w, x in zip(_LUMA, img))


def _luma_matrix(c: int) -> jax.Array:
  """[C, C] colour matrix that puts the luma in every channel."""
  luma = np.asarray(_LUMA if c == 3 else (1.0,), np.float32)
  return jnp.asarray(np.outer(np.ones(c, np.float32), luma))


def _mix_channels(matrix, img):
  """Per-pixel colour transform ``matrix @ rgb`` of a [C, H, W] image."""
  return jnp.einsum("cd,dhw->chw", matrix, img, precision=_HIGHEST)


def _color_jitter(u, img, p):
  """torchvision ColorJitter on a [C, H, W] image, its ops in a random order.

  Brightness, contrast and saturation are colour matrices plus an offset, so each slot
  applies clip(M @ x + t) with M = f I (brightness), M = f I and t = (1 - f) mean luma
  (contrast), M = f I + (1 - f) L with L the luma matrix (saturation), or M = I, t = 0
  in hue's slot, where the HSV rotation is then selected. This keeps the order random
  per example without a switch (which under vmap would run every op in every slot).
  Where jitter is not applied every factor is 1 and no slot is hue's: the identity.
  Ops of strength 0, and colour ops on one channel, are left out statically.
  """
  c = img.shape[0]
  names = [n for n in ("brightness", "contrast", "saturation", "hue")
           if p[n] > 0 and (c == 3 or n in ("brightness", "contrast"))]
  apply = u["jitter"] < p["jitter_prob"]
  factor = {n: jnp.where(apply, _uniform(u[n], max(0.0, 1.0 - p[n]), 1.0 + p[n]), 1.0)
            for n in names}
  luma = _luma_matrix(c)
  # argsort of i.i.d. uniforms is a uniformly random permutation: slot -> op.
  order = jnp.argsort(u["jitter_order"][:len(names)])
  for slot in range(len(names)):
    is_op = {n: order[slot] == i for i, n in enumerate(names)}
    if names != ["hue"]:
      scale, offset, matrix = 1.0, 0.0, 0.0
      for n in ("brightness", "contrast", "saturation"):
        if n in names:
          scale = jnp.where(is_op[n], factor[n], scale)
      if "contrast" in names:
        # Per-channel means first: the same value, and it keeps XLA's CPU loops fast.
        mean_luma = jnp.sum(luma[0] * jnp.mean(img, axis=(1, 2)))
        offset = jnp.where(is_op["contrast"], 1.0 - factor["contrast"], 0.0) * mean_luma
      if "saturation" in names:
        matrix = jnp.where(is_op["saturation"], 1.0 - factor["saturation"], 0.0) * luma
      matrix = scale * jnp.eye(c) + matrix
      img = jnp.clip(_mix_channels(matrix, img) + offset, 0.0, 1.0)
    if "hue" in names:
      shift = _uniform(u["hue"], -p["hue"], p["hue"])
      img = jnp.where(apply & is_op["hue"], _adjust_hue(img, shift), img)
  return img


def _adjust_hue(img, shift):
  """Rotates the hue of a [3, ...] RGB image by ``shift`` turns, as torchvision
  adjust_hue (RGB->HSV->RGB), in the form that needs no saturation: with v = max,
  d = max - min and the hue H in sixths, channel n (R, G, B = 5, 3, 1) is
  v - d * clip(min(k, 4 - k), 0, 1), k = (n + H) mod 6.
  """
  r, g, b = img[0], img[1], img[2]
  v = jnp.maximum(jnp.maximum(r, g), b)
  d = v - jnp.minimum(jnp.minimum(r, g), b)
  base = jnp.where(v == r, 0.0, jnp.where(v == g, 2.0, 4.0))
  diff = jnp.where(v == r, g - b, jnp.where(v == g, b - r, r - g))
  hue = base + diff / jnp.where(d > 0, d, 1.0) + 6.0 * shift
  # One broadcast expression for the three channels, not a stack: XLA turns a stack
  # into a per-element branch on the channel, which stops CPU loops vectorising.
  n = jnp.asarray([5.0, 3.0, 1.0]).reshape((3,) + (1,) * (img.ndim - 1))
  k = n + hue
  k = k - 6.0 * jnp.floor(k / 6.0)  # mod 6; jnp.mod is several times slower on CPU
  return v - d * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
