"""MAE reconstructions of any images from a checkpoint, for notebooks.

    out = reconstruct(tandem.load("/tmp/mae"), images, seed=0)
    plots.image_grid({k: out[k] for k in ("original", "masked", "reconstruction")})
"""
from __future__ import annotations

import numpy as np


def reconstruct(model, images: np.ndarray, seed: int = 0) -> dict:
  """{"original", "masked", "reconstruction" (uint8 [N, H, W, C]), "loss"} of
  `images` under an MAE checkpoint `model` (`tandem.load`); `seed` draws the mask,
  0 being the one of the evaluation inside pretraining
  (`tandem.ssl.mae.reconstruct`)."""
  from tandem.ssl import mae  # pylint: disable=g-import-not-at-top
  return mae.reconstruct(model.config, model.variables, images, seed)
