"""VTAB-1k task table and task loading (tandem/transfer/vtab.py), and the structured
tasks' labels (tandem/data/labels.py).

The 19 VTAB datasets cannot be downloaded here, so loading is tested on TFDS's mock
(`tfds.testing.mock_data`, USE_CODE: the real builders' features, no files). Two
quirks of that mock without TensorFlow: its default data source encodes images with
TensorFlow (absent), and it makes sequences 5 to 49 long (CLEVR counts out of range).
So the tests pass `as_data_source_fn`: records made by TFDS's own random example
generator with fixed-length sequences, images PNG-encoded by `png.encode_png`,
serialized by TFDS and read back through TFDS's real `BaseDataSource`
deserialization. The mock also points every builder at a non-existent data dir, so
`is_prepared` and the array_record file format are patched in too.
"""
import dataclasses
import pickle
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import splits as splits_lib
from tensorflow_datasets.core.data_sources import base as data_source_base
from tensorflow_datasets.testing import mocking

from tandem.data import captions
from tandem.data import image_ops
from tandem.data import input_pipeline
from tandem.data import labels
from tandem.data import png
from tandem.transfer import vtab

# (task, TFDS dataset, group, classes) in the order of the VTAB paper.
EXPECTED = [
    ("caltech101", "caltech101:3.*.*", "natural", 102),
    ("cifar100", "cifar100:3.*.*", "natural", 100),
    ("dtd", "dtd:3.*.*", "natural", 47),
    ("oxford_flowers102", "oxford_flowers102:2.*.*", "natural", 102),
    ("oxford_iiit_pet", "oxford_iiit_pet:4.*.*", "natural", 37),
    ("sun397", "sun397/tfds:4.*.*", "natural", 397),
    ("svhn", "svhn_cropped:3.*.*", "natural", 10),
    ("patch_camelyon", "patch_camelyon:2.*.*", "specialized", 2),
    ("eurosat", "eurosat/rgb:2.*.*", "specialized", 10),
    ("resisc45", "resisc45:3.*.*", "specialized", 45),
    ("diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300:3.*.*",
     "specialized", 5),
    ("clevr_count", "clevr:3.*.*", "structured", 8),
    ("clevr_distance", "clevr:3.*.*", "structured", 6),
    ("dmlab", "dmlab:2.0.1", "structured", 6),
    ("kitti_distance", "kitti:3.*.*", "structured", 4),
    ("dsprites_location", "dsprites:2.*.*", "structured", 16),
    ("dsprites_orientation", "dsprites:2.*.*", "structured", 16),
    ("smallnorb_azimuth", "smallnorb:2.*.*", "structured", 18),
    ("smallnorb_elevation", "smallnorb:2.*.*", "structured", 9),
]

# TFDS split sizes of the source datasets.
SOURCE_SIZES = {
    "caltech101": {"train": 3060, "test": 6084},
    "cifar100": {"train": 50000, "test": 10000},
    "dtd": {"train": 1880, "validation": 1880, "test": 1880},
    "oxford_flowers102": {"train": 1020, "validation": 1020, "test": 6149},
    "oxford_iiit_pet": {"train": 3680, "test": 3669},
    "sun397/tfds": {"train": 76128, "validation": 10875, "test": 21750},
    "svhn_cropped": {"train": 73257, "test": 26032, "extra": 531131},
    "patch_camelyon": {"train": 262144, "validation": 32768, "test": 32768},
    "eurosat/rgb": {"train": 27000},
    "resisc45": {"train": 31500},
    "diabetic_retinopathy_detection/btgraham-300": {
        "train": 35126, "validation": 10906, "test": 42670},
    "clevr": {"train": 70000, "validation": 15000, "test": 15000},
    "dmlab": {"train": 65550, "validation": 22628, "test": 22735},
    "kitti": {"train": 6347, "validation": 423, "test": 711},
    "dsprites": {"train": 737280},
    "smallnorb": {"train": 24300, "test": 24300},
    "fashion_mnist": {"train": 60000, "test": 10000},
    "cifar10_subset": {"train": 5085, "test": 1017},
    "dsprites_like": {"train": 5000, "validation": 1000, "test": 2000},
    "clevr_like": {"train": 5000, "validation": 1000, "test": 2000},
}

# Tasks whose label is the supervised label that `load_arrays` decodes.
FAST = {"caltech101", "cifar100", "dtd", "oxford_flowers102", "oxford_iiit_pet",
        "sun397", "svhn", "patch_camelyon", "eurosat", "resisc45",
        "diabetic_retinopathy", "dmlab"}


def test_vtab1k_table():
  assert [(t.name, t.dataset, t.group, t.num_classes) for t in vtab.VTAB1K.values()
          ] == EXPECTED
  groups = [t.group for t in vtab.get_tasks("vtab1k")]
  assert [groups.count(g) for g in vtab.GROUPS] == [7, 4, 8]
  for task in [*vtab.VTAB1K.values(), *vtab.OFFLINE.values()]:
    assert tuple(task.splits) == vtab.SPLIT_NAMES
  assert vtab.VTAB1K["smallnorb_azimuth"].label == "label_azimuth"
  assert vtab.VTAB1K["smallnorb_elevation"].label == "label_elevation"
  # The offline structured tasks use the very label functions of the real ones.
  for offline, real in [("dsprites_like_location", "dsprites_location"),
                        ("dsprites_like_orientation", "dsprites_orientation"),
                        ("clevr_like_count", "clevr_count"),
                        ("clevr_like_distance", "clevr_distance")]:
    assert vtab.OFFLINE[offline].label is vtab.VTAB1K[real].label
    assert vtab.OFFLINE[offline].num_classes == vtab.VTAB1K[real].num_classes


def _absolute(spec: str, sizes: dict[str, int]) -> list[tuple[str, int, int]]:
  infos = {name: splits_lib.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
           for name, n in sizes.items()}
  out = []
  for instruction in splits_lib.AbstractSplit.from_spec(spec).to_absolute(infos):
    n = sizes[instruction.splitname]
    start = 0 if instruction.from_ is None else instruction.from_
    stop = n if instruction.to is None else instruction.to
    assert 0 <= start <= stop <= n, (spec, instruction)
    out.append((instruction.splitname, start, stop))
  return out


def _ordered(ranges) -> list[tuple[str, int]]:
  return [(name, i) for name, start, stop in ranges for i in range(start, stop)]


def _indices(ranges) -> set[tuple[str, int]]:
  return set(_ordered(ranges))


@pytest.mark.parametrize("task", [*vtab.VTAB1K.values(), *vtab.OFFLINE.values()],
                         ids=lambda t: t.name)
def test_splits_are_800_200_and_disjoint_from_test(task):
  sizes = SOURCE_SIZES[task.dataset.split(":")[0]]
  train, val, trainval, test = (_absolute(task.splits[s], sizes)
                                for s in vtab.SPLIT_NAMES)
  assert train[0][0] == "train" and _indices(train) == _indices([("train", 0, 800)])
  assert len(_indices(val)) == 200 and not _indices(val) & _indices(train)
  assert _ordered(trainval) == _ordered(train) + _ordered(val)
  assert not _indices(test) & _indices(trainval)


def test_split_strings_as_task_adaptation_derives_them():
  splits = {name: dict(task.splits) for name, task in vtab.VTAB1K.items()}
  assert splits["cifar100"] == {
      "train800": "train[:800]", "val200": "train[45000:45200]",
      "train800val200": "train[:800]+train[45000:45200]", "test": "test"}
  assert splits["caltech101"]["val200"] == "train[2754:2954]"  # 90 % of 3060
  assert splits["oxford_iiit_pet"]["val200"] == "train[2944:3144]"  # 80 % of 3680
  assert splits["svhn"]["val200"] == "train[65931:66131]"  # 90 % of 73257
  assert splits["eurosat"]["val200"] == "train[16200:16400]"
  assert splits["eurosat"]["test"] == "train[21600:]"
  assert splits["resisc45"]["test"] == "train[25200:]"
  assert splits["dsprites_location"]["val200"] == "train[589824:590024]"
  assert splits["dsprites_location"]["test"] == "train[663552:]"
  assert splits["smallnorb_azimuth"]["train800val200"] == "train[:800]+test[:200]"
  assert splits["smallnorb_azimuth"]["test"] == "test[50%:]"
  assert splits["clevr_count"]["val200"] == "train[63000:63200]"
  assert splits["clevr_count"]["test"] == "validation"
  for name in ("dtd", "oxford_flowers102", "sun397", "patch_camelyon",
               "diabetic_retinopathy", "dmlab", "kitti_distance"):
    assert splits[name]["train800val200"] == "train[:800]+validation[:200]", name
  assert dict(vtab.OFFLINE["fashion_mnist"].splits) == {
      "train800": "train[:800]", "val200": "train[800:1000]",
      "train800val200": "train[:1000]", "test": "test"}
  assert dict(vtab.OFFLINE["clevr_like_count"].splits) == {
      "train800": "train[:800]", "val200": "validation[:200]",
      "train800val200": "train[:800]+validation[:200]", "test": "test"}


def _clevr(depths):
  n = len(depths)
  return {"objects": {"size": np.zeros(n, np.int64),
                      "pixel_coords": np.array([[10.0, 20.0, d] for d in depths],
                                               np.float32).reshape(n, 3)}}


def test_clevr_labels():
  assert labels.clevr_count(_clevr([9.0] * 5)) == 2
  assert labels.clevr_count(_clevr([9.0] * 3)) == 0
  assert labels.clevr_count(_clevr([9.0] * 10)) == 7
  assert labels.clevr_distance(_clevr([9.2, 12.0])) == 3
  # Bins: (0, 8], (8, 8.5], (8.5, 9], (9, 9.5], (9.5, 10], (10, 100].
  for depth, label in [(0.5, 0), (8.0, 0), (8.01, 1), (8.5, 1), (8.7, 2), (9.5, 3),
                       (9.8, 4), (10.0, 4), (10.1, 5), (99.0, 5)]:
    assert labels.clevr_distance(_clevr([depth, 50.0])) == label, depth


def _kitti(objects):
  """objects: (type, z) pairs; type 0 Car, 1 Van, 2 Truck, 3 Pedestrian, 5 Cyclist."""
  return {"objects": {
      "type": np.array([t for t, _ in objects], np.int64),
      "location": np.array([[1.0, 1.5, z] for _, z in objects],
                           np.float32).reshape(-1, 3)}}


def test_kitti_closest_vehicle_distance():
  label = labels.kitti_closest_vehicle_distance
  assert label(_kitti([])) == 3  # no object at all
  assert label(_kitti([(3, 5.0), (5, 30.0)])) == 3  # pedestrian, cyclist: no vehicle
  assert label(_kitti([(0, 10.0)])) == 1  # a car at 10 m
  assert label(_kitti([(0, 10.0), (3, 2.0)])) == 1  # the pedestrian does not count
  assert label(_kitti([(1, 5.0), (0, 30.0)])) == 0  # a van at 5 m
  assert label(_kitti([(2, 25.0), (0, 30.0)])) == 2  # a truck at 25 m
  assert label(_kitti([(0, 8.0)])) == 0 and label(_kitti([(0, 20.0)])) == 1


def test_dsprites_labels():
  assert labels.dsprites_location({"label_x_position": 31}) == 15
  assert labels.dsprites_location({"label_x_position": np.int64(2)}) == 1
  assert labels.dsprites_orientation({"label_orientation": 39}) == 15
  assert labels.dsprites_orientation({"label_orientation": 5}) == 2
  # task_adaptation: floordiv(float32(value), num_values / 16).
  for key, fn, num_values in [("label_x_position", labels.dsprites_location, 32),
                              ("label_orientation", labels.dsprites_orientation, 40)]:
    values = np.arange(num_values)
    reference = np.floor_divide(values.astype(np.float32), np.float32(num_values / 16))
    assert [fn({key: v}) for v in values] == reference.astype(int).tolist()
    assert np.bincount([fn({key: v}) for v in values]).min() >= 2  # 16 classes used


def test_get_tasks():
  assert [t.name for t in vtab.get_tasks("offline")] == list(vtab.OFFLINE)
  assert len(vtab.get_tasks("vtab1k")) == 19
  tasks = vtab.get_tasks(" dmlab, fashion_mnist,dmlab ")
  assert [t.name for t in tasks] == ["dmlab", "fashion_mnist"]
  assert tasks[0] is vtab.VTAB1K["dmlab"]
  assert len(vtab.get_tasks("offline,vtab1k")) == len(vtab.OFFLINE) + 19
  with pytest.raises(ValueError, match="no_such_task.*clevr_count.*fashion_mnist"):
    vtab.get_tasks("dmlab,no_such_task")
  with pytest.raises(ValueError):
    vtab.get_tasks(" , ")


def test_task_checks_and_prepare_command():
  task = vtab.VTAB1K["caltech101"]
  assert task.prepare_command("/data dir") == (
      "python -m tandem.data.prepare --dataset 'caltech101:3.*.*'"
      " --data_dir '/data dir'")
  assert pickle.loads(pickle.dumps(task)) == task
  hash(task)
  with pytest.raises(ValueError, match="splits"):
    dataclasses.replace(task, splits={"train": "train", "test": "test"})
  with pytest.raises(ValueError, match="group"):
    dataclasses.replace(task, group="medical")


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  data_dir = str(tmp_path)
  for task in (vtab.OFFLINE["fashion_mnist"], vtab.VTAB1K["caltech101"],
               dataclasses.replace(vtab.OFFLINE["fashion_mnist"],
                                   dataset="no_such_dataset")):
    assert not vtab.is_prepared(task, data_dir)
    with pytest.raises(input_pipeline.DatasetNotPreparedError) as e:
      vtab.load_split(task, "train800", data_dir=data_dir)
    assert task.prepare_command(data_dir) in str(e.value)
    assert task.name in str(e.value)


# Offline data: the tiny Fashion-MNIST of conftest (train 320, test 160, 10 classes;
# stored in TFDS's shuffled order, which `load_arrays` reads as is).

def test_offline_fashion_mnist_from_tiny_data(tiny_data_dir):
  task = vtab.OFFLINE["fashion_mnist"]
  assert vtab.is_prepared(task, tiny_data_dir)
  assert vtab.class_names(task, tiny_data_dir) == tuple(
      captions.class_names("fashion_mnist"))
  images, labels = vtab.load_split(task, "test", data_dir=tiny_data_dir)
  assert images.shape == (160, 28, 28, 1) and images.dtype == np.uint8
  assert labels.dtype == np.int32 and np.bincount(labels).tolist() == [16] * 10
  # Each image with its own label: conftest draws rows 2 + 2·label to 4 + 2·label
  # at 230 over noise below 60.
  bar_rows = (images[:, :, 4:24, 0] == 230).all(-1)
  np.testing.assert_array_equal(bar_rows.sum(1), 3)
  np.testing.assert_array_equal(np.argmax(bar_rows, axis=1), 2 + 2 * labels)
  with pytest.raises(ValueError, match="fashion_mnist.*train800.*incompatible"):
    vtab.load_split(task, "train800", data_dir=tiny_data_dir)  # only 320 exist


def test_split_strings_on_tiny_data(tiny_data_dir):
  all_train = input_pipeline.load_arrays("fashion_mnist", "train",
                                         data_dir=tiny_data_dir)
  all_test = input_pipeline.load_arrays("fashion_mnist", "test",
                                        data_dir=tiny_data_dir, image_size=8,
                                        channels=3)
  task = dataclasses.replace(vtab.OFFLINE["fashion_mnist"], splits={
      "train800": "train[:80]", "val200": "train[300:]",
      "train800val200": "train[:80]+train[300:]", "test": "test[50%:]"})
  train = vtab.load_split(task, "train800", data_dir=tiny_data_dir)
  val = vtab.load_split(task, "val200", data_dir=tiny_data_dir)
  trainval = vtab.load_split(task, "train800val200", data_dir=tiny_data_dir)
  test = vtab.load_split(task, "test", data_dir=tiny_data_dir, image_size=8,
                         channels=3)
  for got, want in [(train, [a[:80] for a in all_train]),
                    (val, [a[300:] for a in all_train]),
                    (trainval, [np.concatenate([a[:80], a[300:]]) for a in all_train]),
                    (test, [a[80:] for a in all_test])]:
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  assert test[0].shape == (80, 8, 8, 3)
  # A label function goes through TFDS's deserialization, with the same pixels.
  parity = dataclasses.replace(task, num_classes=2, class_names=None,
                               label=lambda ex: int(ex["label"]) % 2)
  images, labels = vtab.load_split(parity, "train800val200", data_dir=tiny_data_dir)
  np.testing.assert_array_equal(images, trainval[0])
  np.testing.assert_array_equal(labels, trainval[1] % 2)
  with pytest.raises(ValueError, match="labels lie outside"):
    vtab.load_split(dataclasses.replace(task, num_classes=5, class_names=None),
                    "test", data_dir=tiny_data_dir)


# The 19 VTAB tasks on TFDS's mock.

_NUM_FAKE = 3


class _Records:
  def __init__(self, records):
    self._records = records

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    return self._records[i]

  def __getitems__(self, keys):
    return [self._records[i] for i in keys]


@dataclasses.dataclass(repr=False)
class _FakeSource(data_source_base.BaseDataSource):
  """TFDS's data source over in-memory serialized records."""
  records: list = dataclasses.field(default_factory=list)

  def __post_init__(self):
    self.data_source = _Records(self.records)


def _encodable(feature, value):
  """A random example made serializable without TensorFlow."""
  if isinstance(feature, tfds.features.Image):
    return png.encode_png(value)
  if isinstance(feature, tfds.features.BBoxFeature):  # needs min <= max
    y, x = np.sort(value[..., 0::2], axis=-1), np.sort(value[..., 1::2], axis=-1)
    return np.stack([y[..., 0], x[..., 0], y[..., 1], x[..., 1]], axis=-1)
  if isinstance(feature, tfds.features.Sequence):
    return _encodable(feature.feature, value)
  if isinstance(feature, tfds.features.FeaturesDict):
    return {key: _encodable(feature[key], v) for key, v in value.items()}
  return value


def _fake_examples(info):
  generator = mocking.RandomFakeGenerator(info.features, _NUM_FAKE,
                                          constant_dynamic_shape=True)
  examples = [generator[i] for i in range(_NUM_FAKE)]
  for i, ex in enumerate(examples):  # spread depths over the label bins
    if info.name == "clevr":
      ex["objects"]["pixel_coords"][:, 2] = 7.5 + 3.0 * i + np.arange(10) / 10
    if info.name == "kitti":
      ex["objects"]["location"][:, 2] = 4.0 + 10.0 * i + np.arange(10)
    if info.name == "dsprites":  # binary pixels, stored as 0 or 1
      ex["image"] = (ex["image"] > 127).astype(np.uint8)
  return examples


_FAKE_DATA = {}  # dataset full name -> (examples, their serialized records)


@pytest.fixture
def fake_tfds():
  """TFDS mocked: every dataset is 'prepared' with _NUM_FAKE examples per split."""
  requests = []
  cache = _FAKE_DATA

  def as_data_source(self, split=None, *, decoders=None,
                     deserialize_method=tfds.decode.DeserializeMethod
                     .DESERIALIZE_AND_DECODE, **kwargs):
    del kwargs
    if self.info.full_name not in cache:
      examples = _fake_examples(self.info)
      cache[self.info.full_name] = examples, [
          self.info.features.serialize_example(_encodable(self.info.features, ex))
          for ex in examples]
    requests.append((split, deserialize_method))
    return _FakeSource(dataset_info=self.info, split=split, decoders=decoders,
                       deserialize_method=deserialize_method,
                       records=cache[self.info.full_name][1])

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source), \
       mock.patch.object(tfds.core.DatasetBuilder, "is_prepared",
                         return_value=True), \
       mock.patch("tensorflow_datasets.core.dataset_info.DatasetInfo.file_format",
                  new_callable=mock.PropertyMock,
                  return_value=tfds.core.FileFormat.ARRAY_RECORD):
    yield requests, cache


@pytest.mark.parametrize("name", list(vtab.VTAB1K))
def test_vtab_task_loads_on_mock(fake_tfds, name):
  requests, cache = fake_tfds
  task = vtab.VTAB1K[name]
  info = tfds.builder(task.dataset).info
  if isinstance(task.label, str):  # the feature has the task's classes
    assert info.features[task.label].num_classes == task.num_classes
  stored = info.features[task.image_key].shape[-1]
  for split in vtab.SPLIT_NAMES:
    del requests[:]
    images, labels = vtab.load_split(task, split, data_dir="/unused", image_size=16,
                                     channels=3)
    assert images.shape == (_NUM_FAKE, 16, 16, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    assert ((0 <= labels) & (labels < task.num_classes)).all()
    examples = cache[info.full_name][0]
    label = task.label if callable(task.label) else lambda ex: ex[task.label]
    assert labels.tolist() == [label(ex) for ex in examples]
    # Each example's own pixels (dSprites' 0/1 as 0/255), resized like the rest.
    stored_images = np.stack([ex[task.image_key] for ex in examples]).astype(np.uint8)
    if name.startswith("dsprites"):
      stored_images *= 255
    np.testing.assert_array_equal(
        images, image_ops.to_size_and_channels(stored_images, 16, 3))
    expected_method = (tfds.decode.DeserializeMethod.RAW_BYTES if name in FAST else
                       tfds.decode.DeserializeMethod.DESERIALIZE_AND_DECODE)
    assert requests == [(task.splits[split], expected_method)]
  images, _ = vtab.load_split(task, "test", image_size=16)  # channels as stored
  assert images.shape[-1] == stored


def test_mock_images_as_stored(fake_tfds):
  del fake_tfds
  images, labels = vtab.load_split(vtab.VTAB1K["smallnorb_elevation"], "val200")
  assert images.shape == (_NUM_FAKE, 96, 96, 1) and labels.max() < 9
  images, _ = vtab.load_split(vtab.VTAB1K["dsprites_orientation"], "test")
  assert images.shape == (_NUM_FAKE, 64, 64, 1)
  # dSprites' 0/1 pixels become 0/255, as in task_adaptation.
  stored = np.stack([ex["image"] for ex in _FAKE_DATA["dsprites/2.0.0"][0]])
  assert set(np.unique(stored)) == {0, 1}
  np.testing.assert_array_equal(images, stored * 255)


def test_class_names_on_mock(fake_tfds):
  del fake_tfds
  for task in vtab.VTAB1K.values():
    names = vtab.class_names(task)
    if task.group == "natural":
      assert len(names) == task.num_classes, task.name
    else:
      assert names is None, task.name
  assert vtab.class_names(vtab.VTAB1K["sun397"])[:2] == ("abbey", "airplane cabin")
  assert "american bulldog" in vtab.class_names(vtab.VTAB1K["oxford_iiit_pet"])
