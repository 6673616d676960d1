"""Base of the procedurally drawn TFDS builders (captioned_shapes, dsprites_like,
clevr_like): split sizes overridable per instance, nothing to download."""
from typing import Mapping

import tensorflow_datasets as tfds


class ProceduralBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Subclasses set `SPLIT_SIZES` and define `_generate_examples(split, n)`."""

  SPLIT_SIZES: Mapping[str, int] = {}

  def __init__(self, *, split_sizes: Mapping[str, int] | None = None, **kwargs):
    self.split_sizes = {**self.SPLIT_SIZES, **(split_sizes or {})}
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, n)
            for split, n in self.split_sizes.items()}
