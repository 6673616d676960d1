"""Normalisation shared by training (on device) and feature extraction.

Images travel as uint8 and are turned into floats in [0, 1] on device (augmentations
work there), then normalised with the dataset's mean/std from `config.input`.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def normalize(images01, mean: Sequence[float], std: Sequence[float]):
  """(x - mean) / std per channel, for float images in [0, 1]."""
  return (images01 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
