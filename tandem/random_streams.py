"""Named random streams: each consumer of a step's key folds in its own salt.

The train step hands one key to the objective; every random draw made from it
(each view's augmentation, Mixed Barlow Twins' permutation and α, MAE's mask)
derives its key as `stream(rng, name)`, with a salt made from the stream's name.
No consumer splits or folds the shared key with small integers that another one
might also use, so two streams never share a key (tests/test_random_streams.py).
"""
from __future__ import annotations

import zlib

import jax

# Every stream, by name. A new consumer adds its name here.
NAMES = (
    "augment/view1", "augment/view2",  # Two-view objectives (tandem/data/augment.py).
    "augment/view",  # One-view objectives: MAE, CLIP/SigLIP.
    # Multi-crop's local views (DINO; tandem.data.augment.local_views), up to 16.
    *(f"augment/local{i}" for i in range(16)),
    "mixup/permutation", "mixup/alpha",  # Mixed Barlow Twins.
    "mae/mask",
)


def salt(name: str) -> int:
  """A stable 31-bit integer for `name` (CRC-32), the same in every process."""
  if name not in NAMES:
    raise ValueError(f"Unknown random stream {name!r}; known: {NAMES}. Add new "
                     "streams to tandem.random_streams.NAMES.")
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def stream(rng: jax.Array, name: str) -> jax.Array:
  """The key of stream `name` derived from `rng`."""
  return jax.random.fold_in(rng, salt(name))
