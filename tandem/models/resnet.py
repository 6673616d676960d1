"""ResNet v1.5 backbones (He et al. 2016, "Deep Residual Learning"), torchvision layout.

Choices where implementations differ:
  * v1.5: in bottleneck blocks the stride sits on the 3x3 conv, not the first 1x1
    (torchvision, and what SimCLR / Barlow Twins / BYOL report numbers with).
  * Convs have no bias (a BatchNorm follows each); the projection shortcut is a strided
    1x1 conv + BN, used only where the shape changes. With the ImageNet stem and no
    head the parameter counts equal torchvision's minus its fc layer (pinned in tests).
  * `zero_init_residual` (default on) starts the last BN scale of each block at zero, so
    every block begins as the identity (Goyal et al. 2017; torchvision's flag of the
    same name, used by the Barlow Twins reference code).
  * `stem="cifar"`: one 3x3 stride-1 conv and no max-pool, the usual small-image
    variant (SimCLR appendix B.9), so stage1 runs at full input resolution.
  * `width` multiplies every channel count (stem, all stages, block outputs), so
    parameters scale ~width**2; counts are rounded to the nearest integer. This is not
    torchvision's wide_resnet50_2, which widens only the bottleneck's inner convs.
  * Conv kernels use He-normal fan-out init (torchvision). The optional classification
    head (`num_classes`) is zero-initialised (big_vision).
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tandem.models import conv as conv_lib

# Blocks per stage, and whether the block is the 3-layer bottleneck.
BLOCKS: dict[int, tuple[Sequence[int], bool]] = {
    10: ((1, 1, 1, 1), False),  # ResNet-18 with one block per stage (runlocal).
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
STEMS = ("imagenet", "cifar")

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResidualBlock(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) residual block."""
  filters: int
  strides: int = 1
  bottleneck: bool = False
  zero_init_residual: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s, name: nn.Conv(
        f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2, use_bias=False,
        kernel_init=conv_init, dtype=self.dtype, name=name,
        conv_general_dilated=conv_lib.conv_general_dilated)
    norm = lambda name, zero=False: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
        scale_init=nn.initializers.zeros if zero else nn.initializers.ones, name=name)
    zero_last = self.zero_init_residual

    if self.bottleneck:
      out_filters = 4 * self.filters
      y = nn.relu(norm("bn1")(conv(self.filters, 1, 1, "conv1")(x)))
      y = nn.relu(norm("bn2")(conv(self.filters, 3, self.strides, "conv2")(y)))
      y = norm("bn3", zero_last)(conv(out_filters, 1, 1, "conv3")(y))
    else:
      out_filters = self.filters
      y = nn.relu(norm("bn1")(conv(self.filters, 3, self.strides, "conv1")(x)))
      y = norm("bn2", zero_last)(conv(self.filters, 3, 1, "conv2")(y))

    if x.shape[-1] != out_filters or self.strides != 1:
      x = norm("proj_bn")(conv(out_filters, 1, self.strides, "proj_conv")(x))
    return nn.relu(x + y)


class Model(nn.Module):
  """ResNet backbone: returns `stem`, `stage1`..`stage4`, `pre_logits`, [`logits`]."""
  depth: int = 50
  width: float = 1.0
  stem: str = "imagenet"
  zero_init_residual: bool = True
  num_classes: int | None = None
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if self.depth not in BLOCKS:
      raise ValueError(f"depth must be one of {sorted(BLOCKS)}, got {self.depth}.")
    if self.stem not in STEMS:
      raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}.")
    blocks, bottleneck = BLOCKS[self.depth]
    channels = lambda c: max(1, int(round(c * self.width)))
    out = {}

    x = images.astype(self.dtype)
    if self.stem == "imagenet":
      x = nn.Conv(channels(64), (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
                  use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                  conv_general_dilated=conv_lib.conv_general_dilated,
                  name="stem_conv")(x)
    else:
      x = nn.Conv(channels(64), (3, 3), (1, 1), padding=[(1, 1), (1, 1)],
                  use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                  conv_general_dilated=conv_lib.conv_general_dilated,
                  name="stem_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype, name="stem_bn")(x)
    x = nn.relu(x)
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
    out["stem"] = x

    for i, num_blocks in enumerate(blocks):
      for j in range(num_blocks):
        x = ResidualBlock(
            channels(64 * 2**i), strides=2 if i > 0 and j == 0 else 1,
            bottleneck=bottleneck, zero_init_residual=self.zero_init_residual,
            dtype=self.dtype, name=f"stage{i + 1}_block{j + 1}")(x, train)
      out[f"stage{i + 1}"] = x

    # Pool in float32: the representation feeds losses and linear probes.
    out["pre_logits"] = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                               name="head")(out["pre_logits"])
    return out
