"""Projection heads for the SSL objectives.

`Projector` is the Barlow Twins projector (Zbontar et al. 2021): for each hidden width a
Dense (no bias) -> BatchNorm -> ReLU, then a final Dense (no bias). Biases are dropped
because a BatchNorm follows (its shift plays their part) or, for the last layer, because
the objectives standardise or normalise the embeddings anyway. `last_bn=True` adds a
BatchNorm without scale or shift after the last layer (SimSiam / MoCo v3 style).
BatchNorm uses the package convention: momentum 0.9, eps 1e-5, batch statistics when
`train=True`, no axis_name (the jitted step already sees the global batch).
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Projector(nn.Module):
  """MLP projector: [B, D] -> [B, out_dim] (float32)."""
  hidden_dims: Sequence[int]
  out_dim: int
  last_bn: bool = False
  norm: str = "batch"  # "none": no BatchNorm (an exactly accumulable projector).
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    norm = lambda name, affine=True: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
        use_bias=affine, use_scale=affine, name=name)
    x = x.astype(self.dtype)
    for i, dim in enumerate(self.hidden_dims):
      x = nn.Dense(dim, use_bias=False, dtype=self.dtype, name=f"dense{i + 1}")(x)
      x = nn.relu(norm(f"bn{i + 1}")(x) if self.norm == "batch" else x)
    x = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, name="out")(x)
    if self.last_bn and self.norm == "batch":
      x = norm("out_bn", affine=False)(x)
    return x.astype(jnp.float32)
