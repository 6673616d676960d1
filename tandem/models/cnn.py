"""A small plain ConvNet for fast pretraining on 28x28 / 32x32 images on a CPU.

XLA's CPU convolutions are slow (a full ResNet-18 manages a few images/s on 2 cores),
so CPU runs and tests use this instead. It is a VGG-like stack, deliberately without
residual connections or a stem: stage i is `convs_per_stage` x (conv3x3 -> BN -> ReLU)
at `widths[i]` channels; its first conv carries the stage's stride (or give one stride
per conv). Downsampling is by strided conv, not pooling, which is cheaper on CPU.

Representation (`pre_logits`):
  * pool="gap": global average pool of the last stage, [B, widths[-1]].
  * pool="flatten": the last feature map flattened, [B, h*w*widths[-1]]; keeps spatial
    layout, which matters for centred, aligned data such as Fashion-MNIST.
  * dense_dim: when set, a Dense -> BN -> ReLU after pooling; `pre_logits` is then its
    output (the flattened map stays available as `pooled`).
norm="none" drops the BatchNorms (convs and the dense layer then get a bias). The BN
convention is the package's: momentum 0.9, eps 1e-5, batch statistics when training.

Speed (forward+backward of sum(pre_logits**2), jitted, 28x28x1, batch 256, one CPU
device on a 2-core AMD EPYC shared with other jobs, load 4-7, so lower bounds):
  widths (32, 64, 128) strides (1, 2, 2), gap          92,896 params   ~210 img/s
  widths (32, 64, 128) strides (2, 2, 1), flatten+512  3,305,184       ~340 img/s
  widths (64, 128, 256) strides (2, 2, 1), flatten+512 6,793,664       ~100-135 img/s
  widths (64, 128, 256) strides (1, 2, 2), flatten+512 6,793,664       ~60 img/s
The backward pass dominates: XLA:CPU's conv filter-gradient is slow (forward alone runs
~5-9x faster). The matrix-product filter gradient of tandem/models/conv.py, which
makes the ResNets ~2.7x faster on CPU, gave this CNN ~9% (941 -> 1,029 pairs/s at
batch 64, within run-to-run noise) for +0.6 s of compile, so the CNN keeps lax's.
Downsampling early (stride 2 in the first stage) is the cheapest way to buy speed.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("batch", "none")
POOLS = ("gap", "flatten")


class Model(nn.Module):
  """Plain ConvNet: returns `stage1`..`stageK`, `pooled`, `pre_logits`, [`logits`]."""
  widths: Sequence[int] = (32, 64, 128)
  strides: Sequence[int] = (1, 2, 2)  # One per stage, or one per conv.
  convs_per_stage: int = 1
  norm: str = "batch"
  pool: str = "gap"
  dense_dim: int | None = None
  num_classes: int | None = None
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.

  def conv_strides(self) -> list[list[int]]:
    """Stride of every conv, grouped by stage."""
    n, k = len(self.widths), self.convs_per_stage
    if len(self.strides) == n:
      return [[s] + [1] * (k - 1) for s in self.strides]
    if len(self.strides) == n * k:
      return [list(self.strides[i * k:(i + 1) * k]) for i in range(n)]
    raise ValueError(f"strides needs {n} (per stage) or {n * k} (per conv) entries, "
                     f"got {len(self.strides)}.")

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if self.norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}.")
    if self.pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}.")
    use_bn = self.norm == "batch"
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                     epsilon=1e-5, dtype=self.dtype, name=name)
    out = {}

    x = images.astype(self.dtype)
    for i, (width, strides) in enumerate(zip(self.widths, self.conv_strides())):
      for j, s in enumerate(strides):
        name = f"stage{i + 1}_conv{j + 1}"
        x = nn.Conv(width, (3, 3), (s, s), padding=[(1, 1), (1, 1)],
                    use_bias=not use_bn, dtype=self.dtype, name=name)(x)
        if use_bn:
          x = norm(f"stage{i + 1}_bn{j + 1}")(x)
        x = nn.relu(x)
      out[f"stage{i + 1}"] = x

    x = x.astype(jnp.float32)  # The representation feeds losses and linear probes.
    x = jnp.mean(x, axis=(1, 2)) if self.pool == "gap" else x.reshape(x.shape[0], -1)
    out["pooled"] = x
    if self.dense_dim:
      x = nn.Dense(self.dense_dim, use_bias=not use_bn, dtype=self.dtype,
                   name="dense")(x)
      if use_bn:
        x = norm("dense_bn")(x)
      x = nn.relu(x).astype(jnp.float32)
    out["pre_logits"] = x
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                               name="head")(x)
    return out
