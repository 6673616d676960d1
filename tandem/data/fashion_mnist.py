"""Fashion-MNIST (Xiao et al. 2017) as a TFDS dataset built from local IDX files.

Produces exactly what TFDS's own `fashion_mnist` 3.0.1 produces (image (28, 28, 1)
uint8 PNG-encoded, label ClassLabel over 10 names, train 60000 / test 10000), so once
prepared, `tfds.builder("fashion_mnist", data_dir=...)` and `tfds.data_source` read
our files through TFDS's registered class.

Why a builder of our own: TFDS's builder downloads, and our machines have no network
besides package registries. It reads the gzipped IDX files from
`$TANDEM_FASHION_MNIST_DIR`, else from `/usr/share/datasets/fashion-mnist/` (Debian
package `dataset-fashion-mnist`); when they are missing it falls back to TFDS's
download URLs (checked against TFDS's own recorded checksums). Images are stored as
PNG like TFDS's, encoded by `png.encode_png` (TFDS would need TensorFlow for it).

The class is not registered (`skip_registration=True`): TFDS already registers
`fashion_mnist` and a second registration is an error.
"""
import gzip
import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from tandem.data import png

LOCAL_DIR_ENV = "TANDEM_FASHION_MNIST_DIR"
DEFAULT_LOCAL_DIR = "/usr/share/datasets/fashion-mnist"
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
LABEL_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (LeCun's MNIST format), gzipped or not, into an array."""
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
  if data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an IDX file (magic {data[:4]!r}).")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  array = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
  if array.size != np.prod(shape):
    raise ValueError(f"{path}: header says {shape}, found {array.size} values.")
  return array.reshape(shape)


def local_dir() -> str:
  return os.environ.get(LOCAL_DIR_ENV) or DEFAULT_LOCAL_DIR


class FashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Fashion-MNIST from local IDX files, download as a fallback."""

  name = "fashion_mnist"
  VERSION = tfds.core.Version("3.0.1")
  RELEASE_NOTES = {"3.0.1": "Same content and format as TFDS's fashion_mnist."}

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    # Our module has no checksums.tsv; TFDS keeps the ones for these URLs.
    path = tfds.core.utils.tfds_path() / "url_checksums" / "fashion_mnist.txt"
    return tfds.download.checksums.load_url_infos(path) if path.exists() else None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Fashion-MNIST is a dataset of Zalando's article images consisting"
            " of a training set of 60,000 examples and a test set of 10,000"
            " examples. Each example is a 28x28 grayscale image, associated"
            " with a label from 10 classes."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        citation="""@article{DBLP:journals/corr/abs-1708-07747,
  author = {Han Xiao and Kashif Rasul and Roland Vollgraf},
  title = {Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
           Learning Algorithms},
  journal = {CoRR}, volume = {abs/1708.07747}, year = {2017},
  url = {http://arxiv.org/abs/1708.07747},
}""",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    directory = local_dir()
    paths = {k: os.path.join(directory, v) for k, v in FILES.items()}
    if not all(os.path.exists(p) for p in paths.values()):
      logging.warning(
          "Fashion-MNIST IDX files not found in %s (set $%s, or apt-get install"
          " dataset-fashion-mnist); downloading from %s.",
          directory, LOCAL_DIR_ENV, URL)
      paths = dl_manager.download({k: URL + v for k, v in FILES.items()})
    return {
        split: self._generate_examples(
            paths[f"{split}_images"], paths[f"{split}_labels"])
        for split in ("train", "test")
    }

  def _generate_examples(self, images_path, labels_path):
    images = read_idx(os.fspath(images_path))
    labels = read_idx(os.fspath(labels_path))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
      raise ValueError(f"Unexpected IDX shapes {images.shape} / {labels.shape} "
                       f"in {images_path} / {labels_path}.")
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": png.encode_png(image), "label": int(label)}
