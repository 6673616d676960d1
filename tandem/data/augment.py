"""On-device SSL image augmentations (BYOL / SimCLR / Barlow Twins views) in pure JAX.

Runs inside the jitted train step. Each example gets its own key (``jax.random.split``
over the batch) and one vector of uniform draws from it; the pipeline is ``vmap``-ed
over the batch, so a batch sharded over the mesh's data axis is augmented where it lies,
without gathering. The config is read in Python, so its values are static: ops whose
probability or strength is 0 are not traced at all.

Pipeline, in the order of BYOL (Grill et al., 2020, appendix B) and torchvision:

1. Random resized crop (torchvision ``RandomResizedCrop``): area fraction uniform in
   ``crop_scale``, aspect ratio log-uniform in ``crop_ratio``, integer crop size by
   rounding; 10 trials drawn at once and the first that fits is kept, else torchvision's
   fallback (the whole image, centre-cropped to clip its aspect into ``crop_ratio``).
   The crop is resized back to HxW bilinearly with half-pixel centres, clamped at the
   crop's edges (``align_corners=False``), as torchvision. No antialiasing is needed:
   the crop is never larger than the output.
2. Horizontal flip with ``flip_prob``.
3. Colour jitter with ``jitter_prob`` (torchvision ``ColorJitter``): brightness,
   contrast and saturation factors uniform in [max(0, 1-s), 1+s], hue shift uniform in
   [-h, h] turns (RGB->HSV->RGB), each op clipped to [0, 1], in a random order per
   example as torchvision, BYOL and SimCLR do. Contrast blends with the mean of the
   image's luma, saturation with the luma, as torchvision.
4. Grayscale with ``grayscale_prob`` (ITU-R 601 luma 0.299/0.587/0.114, 3 equal channels).
5. Gaussian blur with ``blur_prob``: separable, sigma uniform in ``blur_sigma`` per
   example, kernel size ``blur_kernel_frac`` of the image side made odd (23 for 224 as in
   BYOL; at least 3, so 3 for 28 or 32), reflect padding as torchvision.
6. Solarize with ``solarize_prob``: pixels >= ``solarize_threshold`` become 1 - pixel.

For one-channel images saturation, hue and grayscale are no-ops, as they only move
colour; brightness, contrast (against the image's mean), blur and solarize apply.

Speed on CPU (measured, see the report in the tests' docstring) decided the layout:
images are channel-first inside the pipeline so that colour ops work on contiguous
planes, the crop is two 1-D gathers (faster than dense interpolation matmuls or
``jax.image.scale_and_translate`` at 28 and 32 pixels, and exact for the identity crop),
and every random number of an example comes from one ``uniform`` call (each threefry
call adds seconds of XLA compile time on CPU).
"""
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

_LUMA = (0.299, 0.587, 0.114)
_CROP_TRIALS = 10


def default_view_config(view: int, *, rgb: bool) -> dict:
  """BYOL / Barlow Twins augmentation defaults for view 1 or 2 (asymmetric blur/solarize).

  For grayscale data (``rgb=False``) saturation, hue and grayscale are set to 0, which is
  what they amount to on one channel anyway.
  """
  if view not in (1, 2):
    raise ValueError(f"view must be 1 or 2, got {view}")
  return dict(
      crop_scale=(0.08, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
      flip_prob=0.5,
      jitter_prob=0.8,
      brightness=0.4,
      contrast=0.4,
      saturation=0.2 if rgb else 0.0,
      hue=0.1 if rgb else 0.0,
      grayscale_prob=0.2 if rgb else 0.0,
      blur_prob=1.0 if view == 1 else 0.1,
      blur_sigma=(0.1, 2.0),
      blur_kernel_frac=0.1,
      solarize_prob=0.0 if view == 1 else 0.2,
      solarize_threshold=0.5,
  )


def two_views(rng: jax.Array, images_uint8: jax.Array,
              aug_cfg: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  """Two independently augmented float views in [0, 1] of a uint8 [B, H, W, C] batch."""
  images = images_uint8.astype(jnp.float32) / 255.0
  rng1, rng2 = jax.random.split(rng)
  return (augment_view(rng1, images, aug_cfg["view1"]),
          augment_view(rng2, images, aug_cfg["view2"]))


def augment_view(rng: jax.Array, images: jax.Array, cfg: Mapping[str, Any]) -> jax.Array:
  """Augments float32 [B, H, W, C] images in [0, 1]; one independent draw per example."""
  p = _read_config(cfg)
  keys = jax.random.split(rng, images.shape[0])

  def one(key, img):
    draws = _name_draws(jax.random.uniform(key, (_NUM_DRAWS,)))
    return _augment_one(draws, img, p)

  return jax.vmap(one)(keys, images)


def _read_config(cfg: Mapping[str, Any]) -> dict:
  """Plain Python floats from a dict or ConfigDict, so that nothing in it is traced."""
  pairs = ("crop_scale", "crop_ratio", "blur_sigma")
  scalars = ("flip_prob", "jitter_prob", "brightness", "contrast", "saturation", "hue",
             "grayscale_prob", "blur_prob", "blur_kernel_frac", "solarize_prob",
             "solarize_threshold")
  p = {k: tuple(float(v) for v in cfg[k]) for k in pairs}
  p.update({k: float(cfg[k]) for k in scalars})
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
  """``new`` with probability ``prob`` (decided by the uniform draw ``u``), else ``old``."""
  return new if prob >= 1.0 else jnp.where(u < prob, new, old)


def _augment_one(u: dict, img: jax.Array, p: dict) -> jax.Array:
  """The whole pipeline on one [H, W, C] image, given its named draws ``u``.

  After the crop the image is a list of [H, W] channel planes: XLA on CPU fuses
  elementwise producers into every consumer, and a stacked [..., C] image makes each
  colour op recompute every earlier op once per channel (3**ops work); separate planes
  let it keep the expensive intermediates (hue) in memory instead.
  """
  h, w, c = img.shape
  top, left, ch, cw = _sample_crop(u, h, w, p["crop_scale"], p["crop_ratio"])
  flip = u["flip"] < p["flip_prob"] if p["flip_prob"] > 0 else None
  img = _resized_crop(img, top, left, ch, cw, flip)
  planes = [img[..., i] for i in range(c)]

  maybe = lambda name, new, old: [_maybe(u[name], p[name + "_prob"], n, o)
                                  for n, o in zip(new, old)]
  if p["jitter_prob"] > 0:
    planes = maybe("jitter", _color_jitter(u, planes, p), planes)
  if c == 3 and p["grayscale_prob"] > 0:
    planes = maybe("grayscale", [_luma(planes)] * 3, planes)
  if p["blur_prob"] > 0:
    sigma = _uniform(u["sigma"], *p["blur_sigma"])
    blurred = planes
    for axis in (0, 1):
      ksize = _kernel_size(p["blur_kernel_frac"], img.shape[axis])
      blurred = [_gaussian_blur_1d(x, sigma, ksize, axis) for x in blurred]
    planes = maybe("blur", blurred, planes)
  if p["solarize_prob"] > 0:
    t = p["solarize_threshold"]
    planes = maybe("solarize", [jnp.where(x >= t, 1.0 - x, x) for x in planes], planes)
  return jnp.clip(jnp.stack(planes, axis=-1), 0.0, 1.0)


# ----------------------------------------------------------------------------- spatial


def _sample_crop(u, h, w, scale, ratio):
  """torchvision RandomResizedCrop.get_params, vectorised: (top, left, height, width)."""
  area = h * w * _uniform(u["area"], *scale)
  aspect = jnp.exp(_uniform(u["log_ratio"], np.log(ratio[0]), np.log(ratio[1])))
  cw = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  ch = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = jnp.argmax(fits)

  # The fallback is static: the whole image, centre-cropped to an aspect within ratio.
  if w / h < ratio[0]:
    fw, fh = w, int(round(w / ratio[0]))
  elif w / h > ratio[1]:
    fw, fh = int(round(h * ratio[1])), h
  else:
    fw, fh = w, h
  any_fits = fits.any()
  ch = jnp.where(any_fits, ch[first], fh)
  cw = jnp.where(any_fits, cw[first], fw)
  offset = lambda v, room: jnp.minimum(jnp.floor(v * (room + 1)).astype(jnp.int32), room)
  top = jnp.where(any_fits, offset(u["top"], h - ch), (h - fh) // 2)
  left = jnp.where(any_fits, offset(u["left"], w - cw), (w - fw) // 2)
  return top, left, ch, cw


def _resized_crop(img, top, left, ch, cw, flip):
  """Bilinear resize of img[top:top+ch, left:left+cw] to img's size, then maybe flip."""
  h, w, _ = img.shape
  lo, hi, frac = _bilinear_taps(top, ch, h)
  frac = frac[:, None, None]
  img = img[lo] * (1.0 - frac) + img[hi] * frac
  lo, hi, frac = _bilinear_taps(left, cw, w)
  if flip is not None:
    lo, hi, frac = (jnp.where(flip, v[::-1], v) for v in (lo, hi, frac))
  frac = frac[:, None]
  return img[:, lo] * (1.0 - frac) + img[:, hi] * frac


def _bilinear_taps(start, size, out_size):
  """Source pixels and the upper one's weight when resizing [start, start+size) to
  out_size pixels with half-pixel centres, clamped to the crop (align_corners=False)."""
  pos = (jnp.arange(out_size) + 0.5) * (size / out_size) - 0.5
  pos = jnp.clip(pos, 0.0, size - 1.0)
  lo = jnp.floor(pos)
  frac = pos - lo
  lo = lo.astype(jnp.int32)
  return start + lo, start + jnp.minimum(lo + 1, size - 1), frac


def _kernel_size(frac: float, side: int) -> int:
  """Odd, at least 3, at most what reflect padding allows (2 * side - 1)."""
  return min(max(3, 2 * int(frac * side / 2) + 1), 2 * side - 1)


def _gaussian_blur_1d(img, sigma, ksize: int, axis: int):
  """Gaussian blur along one axis with reflect padding (torchvision's gaussian_blur)."""
  radius = ksize // 2
  offsets = np.arange(-radius, radius + 1)
  weights = jnp.exp(-0.5 * (offsets / sigma) ** 2)
  weights = weights / weights.sum()
  pad = [(0, 0)] * img.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(img, pad, mode="reflect")
  n = img.shape[axis]
  return sum(weights[i] * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
             for i in range(ksize))


# ------------------------------------------------------------------------------ colour


def _luma(planes):
  """Luma of a list of [H, W] planes; elementwise so accelerators keep float32."""
  if len(planes) == 1:
    return planes[0]
  return sum(w * x for w, x in zip(_LUMA, planes))


def _color_jitter(u, planes, p):
  """torchvision ColorJitter on [H, W] channel planes, its ops in a random order.

  Under vmap a per-example choice between ops evaluates every candidate, so rather than
  a switch per slot each slot applies one fused op,
  clip(scale * x + mean_weight * mean(luma) + luma_weight * luma), whose coefficients
  make it brightness (f, 0, 0), contrast (f, 1-f, 0), saturation (f, 0, 1-f) or the
  identity (1, 0, 0); the hue rotation, the one costly op, is then selected where the
  slot is hue's. Ops of strength 0, and colour ops on one channel, are left out.
  """
  colour = len(planes) == 3
  names = [n for n in ("brightness", "contrast", "saturation", "hue")
           if p[n] > 0 and (colour or n in ("brightness", "contrast"))]
  factor = {n: _uniform(u[n], max(0.0, 1.0 - p[n]), 1.0 + p[n]) for n in names}
  # argsort of i.i.d. uniforms is a uniformly random permutation: slot -> op.
  order = jnp.argsort(u["jitter_order"][:len(names)])
  for slot in range(len(names)):
    is_op = {n: order[slot] == i for i, n in enumerate(names)}
    scale, offset = 1.0, 0.0
    for n in ("brightness", "contrast", "saturation"):
      if n in names:
        scale = jnp.where(is_op[n], factor[n], scale)
    if "contrast" in names or "saturation" in names:
      luma = _luma(planes)
    if "contrast" in names:
      offset = jnp.where(is_op["contrast"], 1.0 - factor["contrast"], 0.0) * jnp.mean(luma)
    if "saturation" in names:
      offset = offset + jnp.where(is_op["saturation"], 1.0 - factor["saturation"], 0.0) * luma
    if len(names) > 1 or "hue" not in names:
      planes = [jnp.clip(scale * x + offset, 0.0, 1.0) for x in planes]
    if "hue" in names:
      shift = _uniform(u["hue"], -p["hue"], p["hue"])
      hued = _adjust_hue(planes, shift)
      planes = [jnp.where(is_op["hue"], n, o) for n, o in zip(hued, planes)]
  return planes


def _adjust_hue(planes, shift):
  """Rotates the hue of [H, W] R, G, B planes by ``shift`` turns, as torchvision
  adjust_hue (RGB->HSV->RGB), in the form that needs no saturation: with v = max,
  d = max - min and the hue H in sixths, channel n (R, G, B = 5, 3, 1) is
  v - d * clip(min(k, 4 - k), 0, 1), k = (n + H) mod 6.
  """
  r, g, b = planes
  v = jnp.maximum(jnp.maximum(r, g), b)
  d = v - jnp.minimum(jnp.minimum(r, g), b)
  safe_d = jnp.where(d > 0, d, 1.0)
  hue = jnp.where(v == r, (g - b) / safe_d,
                  jnp.where(v == g, 2.0 + (b - r) / safe_d, 4.0 + (r - g) / safe_d))
  hue = hue + 6.0 * shift
  channels = []
  for n in (5.0, 3.0, 1.0):
    k = n + hue
    k = k - 6.0 * jnp.floor(k / 6.0)  # mod 6; jnp.mod is several times slower on CPU
    channels.append(v - d * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
  return channels
