"""NumPy resize and channel conversion for uint8 images, shared by every host-side path.

The train iterator, `load_arrays` (linear-probe features) and `embed()` on user arrays
all call these, so a model sees the same pixels whichever path fed it. All functions
work on the trailing (H, W, C) axes, so one image (H, W, C) and batches (N, H, W, C)
both work.

Choices:
- `resize_uint8` is separable linear interpolation with antialiasing (a triangle filter
  widened by the downscale factor), matching
  `jax.image.resize(method="linear", antialias=True)` to within 1 (tested); the
  aspect ratio is not preserved (fixed-size resize, as in big_vision's `resize`).
  Gray and RGB images go through Pillow's BILINEAR resize, the same filter in C
  (uint8 in and out; it releases the GIL, so the input pipeline's reader threads
  resize in parallel): 2.1 ms instead of 6.2 ms for an ImageNet-sized JPEG's pixels
  to 224 x 224 here. Two- and four-channel images (Pillow would premultiply the
  alpha) take the NumPy path below.
- Grayscale from RGB uses ITU-R BT.601 luma weights (0.299, 0.587, 0.114), as PIL's
  "L" mode and `tf.image.rgb_to_grayscale` do; gray to RGB repeats the channel;
  alpha channels are dropped (not composited).
"""
import functools

import numpy as np

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


@functools.lru_cache(maxsize=64)
def _resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Input indices and weights, each (out_size, taps), of antialiased linear resize.

  Output pixel o is sum_k weights[o, k] * input[indices[o, k]].
  """
  scale = out_size / in_size
  kernel_scale = min(scale, 1.0)  # widen the kernel when downsampling
  # Pixel centres of the output, in input coordinates (half-pixel convention).
  centres = (np.arange(out_size) + 0.5) / scale - 0.5
  dense = np.maximum(
      0.0, 1.0 - np.abs(np.arange(in_size)[None, :] - centres[:, None]) * kernel_scale)
  dense /= dense.sum(axis=1, keepdims=True)
  nonzero = dense > 0
  first = nonzero.argmax(axis=1)
  taps = int(nonzero.sum(axis=1).max())
  indices = np.minimum(first[:, None] + np.arange(taps), in_size - 1)
  weights = np.take_along_axis(dense, indices, axis=1)
  weights[first[:, None] + np.arange(taps) >= in_size] = 0.0  # clipped repeats
  return indices, weights.astype(np.float32)


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
  indices, weights = _resize_taps(x.shape[axis], out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  out = np.take(x, indices[:, 0], axis=axis)
  out *= weights[:, 0].reshape(shape)
  for k in range(1, indices.shape[1]):
    out += np.take(x, indices[:, k], axis=axis) * weights[:, k].reshape(shape)
  return out


def resize_uint8(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
  """Resizes uint8 images (..., H, W, C) to (..., size_h, size_w, C)."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"resize_uint8 needs uint8 images, got {images.dtype}.")
  if images.ndim < 3:
    raise ValueError(f"Expected (..., H, W, C) images, got shape {images.shape}.")
  out_h, out_w = (size, size) if isinstance(size, int) else size
  in_h, in_w = images.shape[-3:-1]
  if (in_h, in_w) == (out_h, out_w):
    return images
  if images.shape[-1] in (1, 3):
    return _resize_pillow(images, out_h, out_w)
  return _resize_numpy(images, out_h, out_w)


def _resize_pillow(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  *lead, in_h, in_w, channels = images.shape
  flat = images.reshape(-1, in_h, in_w, channels)
  out = np.empty((len(flat), out_h, out_w, channels), np.uint8)
  for i, image in enumerate(flat):
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out[i] = np.asarray(pil.resize((out_w, out_h), Image.Resampling.BILINEAR)
                        ).reshape(out_h, out_w, channels)
  return out.reshape(*lead, out_h, out_w, channels)


def _resize_numpy(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  in_h, in_w = images.shape[-3:-1]
  # A few weighted gathers per axis (2 taps when upsampling), not matrix products:
  # BLAS's threads fight the training step for the cores and were 10x slower here.
  x = images.astype(np.float32)
  if in_h != out_h:
    x = _resize_axis(x, x.ndim - 3, out_h)
  if in_w != out_w:
    x = _resize_axis(x, x.ndim - 2, out_w)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """Converts uint8 images (..., H, W, C), C in {1, 2, 3, 4}, to `channels` in {1, 3}.

  C=2 is gray + alpha and C=4 is RGBA; alpha is dropped.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise TypeError(f"convert_channels needs uint8 images, got {images.dtype}.")
  if channels not in (1, 3):
    raise ValueError(f"Target channels must be 1 or 3, got {channels}.")
  if images.ndim < 3 or images.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(
        f"Expected (..., H, W, C) images with C in 1..4 (gray, gray+alpha, RGB, "
        f"RGBA), got shape {images.shape}. Channels go last: transpose [N, C, H, W] "
        "arrays with images.transpose(0, 2, 3, 1).")
  have = images.shape[-1]
  if have in (2, 4):  # drop alpha
    images = images[..., :have - 1]
    have -= 1
  if have == channels:
    return images
  if channels == 3:  # gray -> RGB
    return np.repeat(images, 3, axis=-1)
  gray = images.astype(np.float32) @ LUMA_WEIGHTS  # RGB -> gray
  return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]


def to_size_and_channels(images: np.ndarray, image_size: int | None,
                         channels: int | None) -> np.ndarray:
  """Resizes (if `image_size`) then converts channels (if `channels`)."""
  # Resize the smaller of the two channel counts.
  if channels is not None and channels < images.shape[-1]:
    images = convert_channels(images, channels)
  if image_size is not None:
    images = resize_uint8(images, image_size)
  if channels is not None:
    images = convert_channels(images, channels)
  return images
