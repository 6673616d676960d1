"""2-D convolution whose kernel gradient is a (blocked) matrix product, for XLA:CPU.

`conv_general_dilated` has `jax.lax.conv_general_dilated`'s signature and forward
pass; models pass it to `flax.linen.Conv(conv_general_dilated=...)`. Its backward
pass computes the input gradient as XLA does, and the kernel gradient as a matrix
product: the input's kh*kw shifted (strided) slices side by side, [N*OH*OW, kh*kw*C],
contracted with the output gradient [N*OH*OW, O] over the rows. XLA:CPU lowers the
kernel gradient to a convolution that ran 14-19x slower than that product for a
ResNet-18 CIFAR stage-1 conv (batch 128, 32x32x64, 3x3; BENCHMARKS.md, "ResNet
on CPU"). On GPU and TPU the convolution libraries are fast, so there, and for
dilated, grouped or non-NHWC/HWIO convolutions, it is `lax.conv_general_dilated`
unchanged. Gradients equal XLA's to float32 round-off (tests/test_models.py).
"""
from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp

_NHWC = ("NHWC", "HWIO", "NHWC")
# Rows of the patch matrix per partial product: keeps each [rows, kh*kw*C] block
# near a few MiB, which ran ~2x faster than one product over all rows here.
_BLOCK_BYTES = 8 * 2 ** 20


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.conv_dimension_numbers(
        (1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
  return tuple(dimension_numbers) == _NHWC


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, with the matrix-product kernel gradient on CPU."""
  plain = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  undilated = all(d == 1 for d in (lhs_dilation or (1, 1))) and all(
      d == 1 for d in (rhs_dilation or (1, 1)))
  if (jax.default_backend() != "cpu" or lhs.ndim != 4 or not undilated
      or feature_group_count != 1 or batch_group_count != 1
      or preferred_element_type is not None or not _is_nhwc(dimension_numbers)):
    return plain(lhs, rhs)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[0:2], strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  return _conv(lhs, rhs, strides, pads, precision)


def _forward(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
  return _forward(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
  return _forward(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _forward(x, w, strides, pads, precision), x)
  (dx,) = input_vjp(dy)
  return dx, kernel_gradient(x, dy, w.shape, strides, pads).astype(w.dtype)


def kernel_gradient(x, dy, kernel_shape, strides, pads):
  """d(loss)/d(kernel) [kh, kw, C, O] of an NHWC/HWIO convolution, from its input
  `x` [N, H, W, C] and output gradient `dy` [N, OH, OW, O]."""
  kh, kw, c, o = kernel_shape
  n, oh, ow, _ = dy.shape
  sh, sw = strides
  # Padding may be negative (cropping) as in lax; pad, then crop.
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0),
               (0, 0, 0)))

  def product(x, dy):  # x: the padded rows that dy's rows [N, rows, OW, O] read.
    rows = dy.shape[1]
    taps = [lax.slice(x, (0, i, j, 0),
                      (n, i + sh * (rows - 1) + 1, j + sw * (ow - 1) + 1, c),
                      (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]  # Tap-major, as the kernel.
    patches = jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * c)
    return lax.dot_general(patches, dy.reshape(-1, o), (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)

  # Blocks of output rows (not of the batch, which may be sharded over devices).
  blocks = _num_blocks(oh, n * ow * kh * kw * c * x.dtype.itemsize)
  if blocks == 1:
    return product(x, dy).reshape(kh, kw, c, o)
  rows = oh // blocks
  span = sh * (rows - 1) + kh  # Padded input rows one block of output rows reads.

  def body(total, block):
    x_rows = lax.dynamic_slice_in_dim(x, block * rows * sh, span, axis=1)
    dy_rows = lax.dynamic_slice_in_dim(dy, block * rows, rows, axis=1)
    return total + product(x_rows, dy_rows), None

  grad, _ = lax.scan(body, jnp.zeros((kh * kw * c, o), jnp.float32),
                     jnp.arange(blocks))
  return grad.reshape(kh, kw, c, o)


def _num_blocks(rows: int, bytes_per_row: int) -> int:
  """The fewest blocks dividing `rows` with ~_BLOCK_BYTES of patches each."""
  want = max(1, -(-rows * bytes_per_row // _BLOCK_BYTES))
  return next(b for b in range(min(want, rows), rows + 1) if rows % b == 0)


_conv.defvjp(_conv_fwd, _conv_bwd)
