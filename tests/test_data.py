"""Host data layer: builders, prepare, data sources, train iterator, image ops.

Datasets are built from tiny fake files written here (never /usr/share/datasets or
the shared npz), so the tests pin behaviour, not the real data. Every fake image
carries its example id in its first two pixels, so order and identity are checkable
after TFDS's shuffled write.
"""
import io
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tandem.data import cifar10_subset
from tandem.data import fashion_mnist
from tandem.data import image_ops
from tandem.data import input_pipeline
from tandem.data import png
from tandem.data import prepare as prepare_lib
from tandem.data import records
from idx_files import write_idx

NUM_TRAIN, NUM_TEST = 50, 20


def _fake_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
  images = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
  flat = images.reshape(n, -1)
  flat[:, 0], flat[:, 1] = np.arange(n) // 256, np.arange(n) % 256
  return images


def _ids(images: np.ndarray) -> np.ndarray:
  flat = images.reshape(len(images), -1).astype(np.int64)
  return flat[:, 0] * 256 + flat[:, 1]


def _write_fake_fashion_mnist(directory) -> dict[str, np.ndarray]:
  os.makedirs(directory, exist_ok=True)
  data = {
      "train_images": _fake_images(NUM_TRAIN, (28, 28), seed=0),
      "train_labels": (np.arange(NUM_TRAIN) % 10).astype(np.uint8),
      "test_images": _fake_images(NUM_TEST, (28, 28), seed=1),
      "test_labels": (np.arange(NUM_TEST) * 3 % 10).astype(np.uint8),
  }
  for key, array in data.items():
    write_idx(os.path.join(directory, fashion_mnist.FILES[key]), array)
  return data


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
  """(written arrays, data_dir with fashion_mnist prepared from them)."""
  idx_dir = tmp_path_factory.mktemp("idx")
  data = _write_fake_fashion_mnist(idx_dir)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(fashion_mnist.LOCAL_DIR_ENV, str(idx_dir))
    prepare_lib.prepare("fashion_mnist", data_dir)
  return data, data_dir


def _iterator(data_dir, **kwargs):
  args = dict(data_dir=data_dir, image_size=28, channels=1, global_batch_size=10,
              seed=0)
  args.update(kwargs)
  return input_pipeline.make_train_iterator("fashion_mnist", "train", **args)


# --- builders and prepare -----------------------------------------------------


def test_read_idx_roundtrip(tmp_path):
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  write_idx(tmp_path / "a.gz", array)
  np.testing.assert_array_equal(fashion_mnist.read_idx(str(tmp_path / "a.gz")), array)


def test_fashion_mnist_holds_what_was_written(fake_fmnist):
  data, data_dir = fake_fmnist
  for split, n in (("train", NUM_TRAIN), ("test", NUM_TEST)):
    images, labels = input_pipeline.load_arrays("fashion_mnist", split,
                                                data_dir=data_dir)
    assert images.dtype == np.uint8 and images.shape == (n, 28, 28, 1)
    assert labels.dtype == np.int32
    order = np.argsort(_ids(images))
    np.testing.assert_array_equal(images[order, :, :, 0], data[f"{split}_images"])
    np.testing.assert_array_equal(labels[order], data[f"{split}_labels"])


def test_fashion_mnist_loads_by_name_like_tfds(fake_fmnist):
  data, data_dir = fake_fmnist
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  assert builder.info.splits["train"].num_examples == NUM_TRAIN
  assert builder.info.features["label"].names[0] == "T-shirt/top"
  assert builder.info.features["image"].shape == (28, 28, 1)
  # TFDS's own decoding (Pillow) reads our PNGs to the same pixels.
  example = builder.as_data_source("train")[3]
  i = _ids(example["image"][None])[0]
  np.testing.assert_array_equal(example["image"][:, :, 0], data["train_images"][i])
  assert example["label"] == data["train_labels"][i]


def test_prepare_is_idempotent(fake_fmnist):
  _, data_dir = fake_fmnist
  path = os.path.join(data_dir, "fashion_mnist", "3.0.1")
  before = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
  assert prepare_lib.prepare("fashion_mnist", data_dir) == path
  after = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
  assert before == after


def test_fashion_mnist_falls_back_to_download(tmp_path, monkeypatch):
  data = _write_fake_fashion_mnist(tmp_path / "downloaded")
  asked = {}

  def fake_download(self, urls):
    del self
    asked.update(urls)
    return {k: tmp_path / "downloaded" / os.path.basename(u) for k, u in urls.items()}

  monkeypatch.setenv(fashion_mnist.LOCAL_DIR_ENV, str(tmp_path / "missing"))
  monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
  data_dir = str(tmp_path / "tfds")
  prepare_lib.prepare("fashion_mnist", data_dir)
  assert sorted(asked.values()) == sorted(
      fashion_mnist.URL + f for f in fashion_mnist.FILES.values())
  _, labels = input_pipeline.load_arrays("fashion_mnist", "test", data_dir=data_dir)
  assert sorted(labels) == sorted(data["test_labels"])


def test_cifar10_subset(tmp_path, monkeypatch):
  npz = tmp_path / "fake.npz"
  train_x, test_x = _fake_images(12, (32, 32, 3), 2), _fake_images(6, (32, 32, 3), 3)
  np.savez(npz, train_x=train_x, train_y=np.arange(12, dtype=np.uint8) % 10,
           test_x=test_x, test_y=np.arange(6, dtype=np.uint8))
  monkeypatch.setenv(cifar10_subset.PATH_ENV, str(npz))
  data_dir = str(tmp_path / "tfds")
  prepare_lib.prepare("cifar10_subset", data_dir)
  images, labels = input_pipeline.load_arrays("cifar10_subset", "train",
                                              data_dir=data_dir)
  order = np.argsort(_ids(images))
  np.testing.assert_array_equal(images[order], train_x)
  np.testing.assert_array_equal(labels[order], np.arange(12) % 10)
  info = tfds.builder("cifar10_subset", data_dir=data_dir).info
  assert info.features["label"].names == list(cifar10_subset.LABEL_NAMES)


def test_cifar10_subset_missing_file_says_how_to_fix(tmp_path, monkeypatch):
  monkeypatch.setenv(cifar10_subset.PATH_ENV, str(tmp_path / "nope.npz"))
  with pytest.raises(FileNotFoundError, match=cifar10_subset.PATH_ENV):
    cifar10_subset.npz_path()


# --- data sources ---------------------------------------------------------------


def test_split_slicing(fake_fmnist):
  _, data_dir = fake_fmnist
  head = input_pipeline.get_data_source("fashion_mnist", "train[:30]", data_dir)
  tail = input_pipeline.get_data_source("fashion_mnist", "train[30:]", data_dir)
  assert (len(head), len(tail)) == (30, 20)
  images, _ = input_pipeline.load_arrays("fashion_mnist", "train", data_dir=data_dir)
  np.testing.assert_array_equal(tail[0]["image"], images[30])
  sliced, _ = input_pipeline.load_arrays("fashion_mnist", "train[30:]",
                                         data_dir=data_dir)
  np.testing.assert_array_equal(sliced, images[30:])


@pytest.mark.parametrize(
    "name", ["fashion_mnist", "cifar10_subset", "mnist", "no_such_dataset"])
def test_unprepared_dataset_names_the_prepare_command(tmp_path, name):
  data_dir = str(tmp_path / "empty")
  command = f"python -m tandem.data.prepare --dataset {name} --data_dir {data_dir}"
  for load in (
      lambda: input_pipeline.get_data_source(name, "train", data_dir),
      lambda: input_pipeline.load_arrays(name, "train", data_dir=data_dir),
      lambda: _iterator(data_dir) if name == "fashion_mnist" else
      input_pipeline.make_train_iterator(
          name, "train", data_dir=data_dir, image_size=28, channels=1,
          global_batch_size=8, seed=0),
  ):
    with pytest.raises(input_pipeline.DatasetNotPreparedError) as e:
      load()
    assert command in str(e.value) and name in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_resolve_data_dir(monkeypatch):
  monkeypatch.setenv(input_pipeline.DATA_DIR_ENV, "/from/env")
  assert input_pipeline.resolve_data_dir("/given") == "/given"
  assert input_pipeline.resolve_data_dir(None) == "/from/env"
  monkeypatch.delenv(input_pipeline.DATA_DIR_ENV)
  assert input_pipeline.resolve_data_dir(None) == os.path.expanduser(
      "~/tensorflow_datasets")


def test_load_arrays_resizes_like_image_ops(fake_fmnist):
  _, data_dir = fake_fmnist
  images, _ = input_pipeline.load_arrays("fashion_mnist", "test", data_dir=data_dir)
  rgb32, _ = input_pipeline.load_arrays("fashion_mnist", "test", data_dir=data_dir,
                                        image_size=32, channels=3)
  assert rgb32.shape == (NUM_TEST, 32, 32, 3)
  np.testing.assert_array_equal(rgb32, image_ops.to_size_and_channels(images, 32, 3))


class _VariableSizeJpeg(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Stands in for a standard TFDS dataset: JPEG images of varying sizes."""

  name = "tandem_test_variable_jpeg"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3),
                                         encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=6),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):  # constant colour 40 * i, so JPEG keeps it (within 1-2)
      image = np.full((10 + i, 20 - i, 3), 40 * i, np.uint8)
      yield i, {"image": Image.fromarray(image), "label": i}


def test_standard_tfds_dataset_with_jpegs_of_varying_size(tmp_path):
  data_dir = str(tmp_path)
  builder = _VariableSizeJpeg(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  # Not registered: found by name from its files in data_dir.
  images, labels = input_pipeline.load_arrays(
      _VariableSizeJpeg.name, "train", data_dir=data_dir, image_size=8, channels=1)
  assert images.shape == (6, 8, 8, 1)
  assert np.abs(images.astype(np.int32) - 40 * labels[:, None, None, None]).max() <= 2
  with pytest.raises(ValueError, match="image_size"):
    input_pipeline.load_arrays(_VariableSizeJpeg.name, "train", data_dir=data_dir)
  batch = next(input_pipeline.make_train_iterator(
      _VariableSizeJpeg.name, "train", data_dir=data_dir, image_size=12, channels=3,
      global_batch_size=4, seed=0))
  assert batch["image"].shape == (4, 12, 12, 3)
  assert np.abs(batch["image"].astype(np.int32)
                - 40 * batch["label"][:, None, None, None]).max() <= 2


# --- train iterator -----------------------------------------------------------


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_iterator_shapes_and_dtypes(fake_fmnist):
  _, data_dir = fake_fmnist
  batch = next(_iterator(data_dir))
  assert batch["image"].shape == (10, 28, 28, 1) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (10,) and batch["label"].dtype == np.int32
  batch = next(_iterator(data_dir, image_size=16, channels=3))
  assert batch["image"].shape == (10, 16, 16, 3) and batch["image"].dtype == np.uint8


def test_train_iterator_yields_stored_examples(fake_fmnist):
  data, data_dir = fake_fmnist
  batch = next(_iterator(data_dir))
  ids = _ids(batch["image"])
  np.testing.assert_array_equal(batch["image"][..., 0], data["train_images"][ids])
  np.testing.assert_array_equal(batch["label"], data["train_labels"][ids])


def test_train_iterator_is_seeded(fake_fmnist):
  _, data_dir = fake_fmnist
  a, b = _take(_iterator(data_dir), 3), _take(_iterator(data_dir), 3)
  c = _take(_iterator(data_dir, seed=1), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not all(np.array_equal(x["label"], z["label"]) and
                 np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_train_iterator_reshuffles_each_epoch(fake_fmnist):
  _, data_dir = fake_fmnist
  batches = _take(_iterator(data_dir), 2 * NUM_TRAIN // 10)  # two epochs
  ids = np.concatenate([_ids(b["image"]) for b in batches])
  first, second = ids[:NUM_TRAIN], ids[NUM_TRAIN:]
  assert sorted(first) == sorted(second) == list(range(NUM_TRAIN))
  assert not np.array_equal(first, second)


def test_processes_read_slices_of_the_global_batch(fake_fmnist):
  _, data_dir = fake_fmnist
  whole = _take(_iterator(data_dir), 6)  # crosses the epoch boundary at batch 5
  halves = [_take(_iterator(data_dir, process_index=i, process_count=2), 6)
            for i in range(2)]
  for batch, first, second in zip(whole, *halves):
    assert first["image"].shape[0] == second["image"].shape[0] == 5
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([first[key], second[key]]), batch[key])
  with pytest.raises(ValueError, match="divisible"):
    _iterator(data_dir, global_batch_size=10, process_count=3, process_index=0)


def test_get_state_set_state_resumes_exactly(fake_fmnist):
  _, data_dir = fake_fmnist
  reference = _iterator(data_dir, seed=7)
  _take(reference, 4)
  state = json.loads(json.dumps(reference.get_state()))
  expected = _take(reference, 5)  # crosses the epoch boundary at batch 5
  resumed = _iterator(data_dir, seed=7)
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 5)):
    np.testing.assert_array_equal(want["image"], got["image"])
    np.testing.assert_array_equal(want["label"], got["label"])


def test_finite_epochs(fake_fmnist):
  _, data_dir = fake_fmnist
  sizes = [len(b["label"]) for b in _iterator(
      data_dir, global_batch_size=8, num_epochs=2, drop_remainder=False)]
  assert sum(sizes) == 2 * NUM_TRAIN and sizes[-1] == 2 * NUM_TRAIN % 8
  sizes = [len(b["label"]) for b in _iterator(
      data_dir, global_batch_size=8, num_epochs=2)]
  assert sizes == [8] * (2 * NUM_TRAIN // 8)
  # Processes split the last, partial global batch (2 * 50 % 8 = 4) evenly.
  whole = list(_iterator(data_dir, global_batch_size=8, num_epochs=2,
                         drop_remainder=False))
  halves = [list(_iterator(data_dir, global_batch_size=8, num_epochs=2,
                           drop_remainder=False, process_index=i, process_count=2))
            for i in range(2)]
  assert [len(b["label"]) for b in halves[1]] == [4] * 12 + [2]
  for batch, first, second in zip(whole, *halves, strict=True):
    np.testing.assert_array_equal(
        np.concatenate([first["image"], second["image"]]), batch["image"])
  # 50 % 8 = 2 examples cannot go to 4 processes: dropped, or an error.
  sizes = [len(b["label"]) for b in _iterator(
      data_dir, global_batch_size=8, num_epochs=1, process_index=3, process_count=4)]
  assert sizes == [2] * (NUM_TRAIN // 8)
  with pytest.raises(ValueError, match="cannot be split over 4 processes"):
    _iterator(data_dir, global_batch_size=8, num_epochs=1, drop_remainder=False,
              process_index=0, process_count=4)


# --- PNG and image ops --------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_roundtrip(channels):
  image = _fake_images(1, (5, 7, channels), seed=channels)[0]
  encoded = png.encode_png(image)
  np.testing.assert_array_equal(png.decode_png(encoded), image)
  with Image.open(io.BytesIO(encoded)) as pil:  # a standard PNG
    np.testing.assert_array_equal(
        np.asarray(pil).reshape(image.shape), image)


def test_filtered_png_falls_back_to_a_general_decoder():
  image = _fake_images(1, (9, 11, 3), seed=5)[0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="png")  # Pillow filters rows
  assert png.decode_png(buffer.getvalue()) is None
  np.testing.assert_array_equal(records.decode_image(buffer.getvalue()), image)
  np.testing.assert_array_equal(records.decode_image(buffer.getvalue(), 1),
                                image_ops.convert_channels(image, 1))


@pytest.mark.parametrize("shape,size", [
    ((4, 28, 28, 1), 32), ((2, 32, 32, 3), (28, 20)), ((2, 100, 60, 4), 17),
    ((9, 7, 3), (1, 1)), ((1, 1, 1, 1), 5),
    ((1, 401, 350, 3), 224), ((2, 90, 64, 1), 17), ((1, 90, 64, 2), (20, 70)),
])
def test_resize_matches_jax_antialiased_linear(shape, size):
  images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  out = image_ops.resize_uint8(images, size)
  h, w = (size, size) if isinstance(size, int) else size
  want = jax.image.resize(images.astype(np.float32), (*shape[:-3], h, w, shape[-1]),
                          "linear", antialias=True)
  want = np.clip(np.rint(np.asarray(want)), 0, 255)
  assert out.dtype == np.uint8 and out.shape == want.shape
  assert np.abs(out.astype(np.int32) - want).max() <= 1


def test_resize_keeps_same_size_and_constants():
  images = _fake_images(3, (28, 28, 1), seed=4)
  assert image_ops.resize_uint8(images, 28) is images
  constant = np.full((2, 13, 9, 3), 77, np.uint8)
  assert (image_ops.resize_uint8(constant, (31, 4)) == 77).all()
  with pytest.raises(TypeError):
    image_ops.resize_uint8(images.astype(np.float32), 32)


def test_convert_channels():
  rgb = _fake_images(2, (4, 5, 3), seed=6)
  gray = image_ops.convert_channels(rgb, 1)
  want = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
  assert gray.shape == (2, 4, 5, 1)
  assert np.abs(gray[..., 0].astype(np.int32) - want).max() <= 1
  tiled = image_ops.convert_channels(gray, 3)
  assert (tiled == gray).all() and tiled.shape == (2, 4, 5, 3)
  rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
  np.testing.assert_array_equal(image_ops.convert_channels(rgba, 3), rgb)
  np.testing.assert_array_equal(image_ops.convert_channels(rgba, 1), gray)
  assert image_ops.convert_channels(rgb[0], 1).shape == (4, 5, 1)  # one HWC image
  with pytest.raises(ValueError):
    image_ops.convert_channels(rgb, 2)
  with pytest.raises(ValueError):
    image_ops.convert_channels(np.zeros((2, 4, 5, 6), np.uint8), 3)
