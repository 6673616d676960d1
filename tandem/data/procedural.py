"""Base of the procedurally drawn TFDS builders (captioned_shapes, dsprites_like,
clevr_like): nothing to download, split sizes overridable per instance.

Example i of a split is drawn from its own random stream,
`np.random.default_rng([seed, split id, i])` (`example_rng`; the built datasets use
`SEED`), so it depends only on (seed, split, i): every machine builds the same data,
and a builder's `generate` reproduces any slice of it without building.
"""
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from tandem.data import png

SEED = 0
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def example_rng(split: str, index: int, seed: int = SEED) -> np.random.Generator:
  """The random stream example `index` of `split` is drawn from."""
  if split not in SPLIT_IDS:
    raise ValueError(f"Unknown split {split!r}; choices: {list(SPLIT_IDS)}.")
  return np.random.default_rng([seed, SPLIT_IDS[split], index])


class ProceduralBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Subclasses set `SPLIT_SIZES` and `make_example`, a staticmethod
  `(rng, split) -> example`: a dict holding "image" (uint8 [H, W, C]) and the other
  TFDS features (and possibly more, for tests), drawn from `rng` alone."""

  SPLIT_SIZES: Mapping[str, int] = {}

  def __init__(self, *, split_sizes: Mapping[str, int] | None = None, **kwargs):
    self.split_sizes = {**self.SPLIT_SIZES, **(split_sizes or {})}
    super().__init__(**kwargs)

  @staticmethod
  def make_example(rng: np.random.Generator, split: str) -> dict[str, Any]:
    raise NotImplementedError

  @classmethod
  def generate(cls, split: str, start: int = 0, count: int = 1,
               seed: int = SEED) -> list[dict[str, Any]]:
    """Examples [start, start + count) of `split`, as `make_example` draws them
    (with `SEED`, the built dataset's)."""
    return [cls.make_example(example_rng(split, i, seed), split)
            for i in range(start, start + count)]

  def encode(self, example: dict[str, Any]) -> dict[str, Any]:
    """The TFDS features of one example: "image" PNG-encoded, other keys dropped."""
    return {key: png.encode_png(example[key]) if key == "image" else example[key]
            for key in self.info.features.keys()}

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, n)
            for split, n in self.split_sizes.items()}

  def _generate_examples(self, split: str, num_examples: int):
    for index in range(num_examples):
      yield index, self.encode(self.make_example(example_rng(split, index), split))
