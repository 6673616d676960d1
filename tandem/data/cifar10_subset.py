"""`cifar10_subset`: a fixed subset of real CIFAR-10 (Krizhevsky 2009), as TFDS data.

Source: `cifar10_subset.npz` in the shared data folder (see shared/data/README.md):
the first 1017 images of each of the five original training batches (5085 train)
and the first 1017 of the test batch (1017 test), uint8 HWC RGB, CIFAR-10's label
order. Small enough for VTAB-1k style and few-shot transfer on natural images.

The file is read from `$TANDEM_CIFAR10_SUBSET`, else from
`../shared/data/cifar10_subset.npz` relative to the project root (the directory
holding the `tandem` package); it is never copied into the repository. Images are
stored as PNG like TFDS's `cifar10`, encoded by `png.encode_png`.
"""
import os

import numpy as np
import tensorflow_datasets as tfds

from tandem.data import png

PATH_ENV = "TANDEM_CIFAR10_SUBSET"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DEFAULT_PATH = os.path.normpath(
    os.path.join(_PROJECT_ROOT, "..", "shared", "data", "cifar10_subset.npz"))


def npz_path() -> str:
  """Where the npz is read from; FileNotFoundError saying how to point at it."""
  path = os.environ.get(PATH_ENV) or DEFAULT_PATH
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"cifar10_subset: {path} not found. Set ${PATH_ENV} to the path of"
        f" cifar10_subset.npz, or put it at {DEFAULT_PATH}.")
  return path


class Cifar10Subset(tfds.core.GeneratorBasedBuilder):
  """5085/1017 real CIFAR-10 images from a local npz."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First 1017 images of each CIFAR-10 batch."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "A fixed subset of CIFAR-10: the first 1017 images of each of the"
            " five training batches (5085 train) and of the test batch (1017"
            " test). 32x32 RGB, 10 classes."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
        }),
        supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        citation="""@techreport{krizhevsky2009learning,
  title = {Learning Multiple Layers of Features from Tiny Images},
  author = {Krizhevsky, Alex}, institution = {University of Toronto},
  year = {2009},
}""",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    path = npz_path()
    return {split: self._generate_examples(path, split) for split in ("train", "test")}

  def _generate_examples(self, path: str, split: str):
    with np.load(path) as data:
      images, labels = data[f"{split}_x"], data[f"{split}_y"]
    if images.dtype != np.uint8 or images.shape[1:] != (32, 32, 3):
      raise ValueError(f"{path}: {split}_x is {images.dtype}{images.shape},"
                       " expected uint8 (N, 32, 32, 3).")
    if len(images) != len(labels):
      raise ValueError(f"{path}: {len(images)} {split} images, {len(labels)} labels.")
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": png.encode_png(image), "label": int(label)}
