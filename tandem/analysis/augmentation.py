"""The run's own two augmented views of any images (positive pairs), for
alignment and for looking at what the objective was asked to match.

    v1, v2 = views(tandem.load("/tmp/bt"), images, seed=0)
    analysis.alignment(model.embed(v1), model.embed(v2))
"""
from __future__ import annotations

import functools
import json

import numpy as np


@functools.lru_cache(maxsize=8)
def _two_views_fn(aug_json: str):
  """The jitted two-view augmentation of one `config.aug` (compiled once)."""
  import jax  # pylint: disable=g-import-not-at-top
  from tandem.data import augment  # pylint: disable=g-import-not-at-top
  aug = json.loads(aug_json)
  return jax.jit(lambda rng, x: augment.two_views(rng, x, aug))


def views(model, images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Two augmented views (float32 [N, H, W, C] in [0, 1], at the checkpoint's image
  size and channels) of `images` (uint8, or float in [0, 1]), drawn with the
  run's `config.aug.view1` / `view2` (`tandem.data.augment.two_views`) from
  `seed`; the same seed gives the same views."""
  import jax  # pylint: disable=g-import-not-at-top
  from tandem.transfer import features  # pylint: disable=g-import-not-at-top
  aug = model.config.get("aug")
  if aug is None or "view1" not in aug or "view2" not in aug:
    raise ValueError(f"The {model.config.get('objective')!r} checkpoint's config has "
                     "no two-view augmentation (config.aug.view1 / view2).")
  images = features.prepare_images(images, model.config.input)
  two = _two_views_fn(aug.to_json_best_effort(sort_keys=True))
  first, second = jax.device_get(two(jax.random.key(seed), images))
  return np.asarray(first, np.float32), np.asarray(second, np.float32)
