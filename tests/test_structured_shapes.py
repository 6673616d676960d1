"""dsprites_like and clevr_like: features as the real TFDS datasets', determinism,
labels checked against the pixels, and VTAB's label transforms on the built data.

Both are built once through `prepare.prepare` with small splits and read back with
TFDS's default decoding (`input_pipeline.get_data_source`); pixel checks use the
builders' `generate`, which reproduces the built examples.
"""
import functools
import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tandem.data import clevr_like
from tandem.data import dsprites_like
from tandem.data import input_pipeline
from tandem.data import labels
from tandem.data import prepare
from tandem.transfer import vtab

SPLITS = {"train": 40, "validation": 20, "test": 20}
BUILDERS = {"dsprites_like": dsprites_like.DspritesLike,
            "clevr_like": clevr_like.ClevrLike}
REAL = {"dsprites_like": "dsprites", "clevr_like": "clevr"}
# Real clevr features we do not make.
CLEVR_ONLY = {"file_name", "objects/3d_coords", "objects/rotation",
              "question_answer/question", "question_answer/answer"}
DSPRITES_FACTORS = ("shape", "scale", "orientation", "x_position", "y_position")


# VTAB's label transforms (google-research/task_adaptation), in NumPy.
def vtab_dsprites_location(example) -> int:
  return int(example["label_x_position"] // (32 / 16))


def vtab_dsprites_orientation(example) -> int:
  return int(example["label_orientation"] // (40 / 16))


def vtab_clevr_count(example) -> int:
  return len(example["objects"]["size"]) - 3


def vtab_clevr_distance(example) -> int:
  dist = np.min(np.asarray(example["objects"]["pixel_coords"])[:, 2])
  thrs = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
  return int(np.max(np.nonzero(thrs - dist < 0)[0]))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("structured"))
  with pytest.MonkeyPatch.context() as patch:
    for name, cls in BUILDERS.items():
      patch.setitem(prepare.BUILDERS, name, functools.partial(cls, split_sizes=SPLITS))
      prepare.prepare(name, data_dir)
  return data_dir


@pytest.fixture(scope="module")
def built(data_dir):
  """{name: {split: [examples as TFDS decodes them]}}."""
  out = {}
  for name in BUILDERS:
    out[name] = {}
    for split, size in SPLITS.items():
      source = input_pipeline.get_data_source(name, split, data_dir)
      assert len(source) == size
      out[name][split] = [source[i] for i in range(size)]
  return out


@pytest.fixture(scope="module")
def scenes():
  return clevr_like.ClevrLike.generate("train", 0, 120)


def _flatten(feature, prefix=""):
  if isinstance(feature, tfds.features.FeaturesDict):
    out = {}
    for key, sub in feature.items():
      out.update(_flatten(sub, f"{prefix}{key}"))
    return out
  if isinstance(feature, tfds.features.Sequence):
    return _flatten(feature.feature, prefix + "/")
  return {prefix: feature}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_features_mirror_real_tfds(name, tmp_path):
  ours = _flatten(BUILDERS[name](data_dir=str(tmp_path)).info.features)
  real = _flatten(tfds.builder(REAL[name], data_dir=str(tmp_path)).info.features)
  expected_missing = CLEVR_ONLY if name == "clevr_like" else set()
  assert set(real) - set(ours) == expected_missing
  assert set(ours) <= set(real)
  for key, feature in ours.items():
    other = real[key]
    assert type(feature) is type(other), key
    assert feature.np_dtype == other.np_dtype, key
    if isinstance(feature, tfds.features.ClassLabel):
      assert feature.names == other.names, key
    if isinstance(feature, tfds.features.Image):
      assert feature.shape[-1] == other.shape[-1]
    else:
      assert feature.shape == other.shape, key
  image = ours["image"].shape
  assert image == ((64, 64, 1) if name == "dsprites_like" else (64, 96, 3))


def _key(image) -> bytes:
  return np.asarray(image).tobytes()


@pytest.mark.parametrize("split", list(SPLITS))
def test_dsprites_built_equals_generate(built, split):
  generated = dsprites_like.DspritesLike.generate(split, 0, SPLITS[split])
  by_image = {_key(e["image"]): e for e in generated}
  assert len(by_image) == SPLITS[split]
  for example in built["dsprites_like"][split]:
    assert example["image"].dtype == np.uint8 and example["image"].shape == (64, 64, 1)
    expected = by_image.pop(_key(example["image"]))  # TFDS shuffles the order
    for factor in DSPRITES_FACTORS:
      assert example[f"label_{factor}"] == expected[f"label_{factor}"]
      assert expected[f"value_{factor}"].dtype == np.float32
      assert example[f"value_{factor}"] == expected[f"value_{factor}"]
  assert not by_image


@pytest.mark.parametrize("split", list(SPLITS))
def test_clevr_built_equals_generate(built, split):
  generated = clevr_like.ClevrLike.generate(split, 0, SPLITS[split])
  by_image = {_key(e["image"]): e for e in generated}
  assert len(by_image) == SPLITS[split]
  for example in built["clevr_like"][split]:
    assert example["image"].dtype == np.uint8 and example["image"].shape == (64, 96, 3)
    objects = example["objects"]
    expected = by_image.pop(_key(example["image"]))["objects"]
    for key in ("color", "shape", "size", "material"):
      np.testing.assert_array_equal(objects[key], expected[key])
    coords = np.asarray(objects["pixel_coords"])
    assert coords.dtype == np.float32 and coords.shape == (len(objects["size"]), 3)
    np.testing.assert_array_equal(coords, expected["pixel_coords"])
  assert not by_image


def _images(examples) -> np.ndarray:
  return np.stack([e["image"] for e in examples])


def test_deterministic():
  generate = dsprites_like.DspritesLike.generate
  a, b = generate("train", 5, 10), generate("train", 5, 10)
  assert len(a) == 10
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  later = generate("train", 8, 7)  # example i depends on i alone
  np.testing.assert_array_equal(_images(a)[3:], _images(later))
  other = generate("test", 5, 10)
  assert not np.array_equal(_images(a), _images(other))

  generate = clevr_like.ClevrLike.generate
  a, b = generate("validation", 0, 6), generate("validation", 0, 6)
  np.testing.assert_array_equal(_images(a), _images(b))
  for x, y in zip(a, b):
    for key in x["objects"]:
      np.testing.assert_array_equal(x["objects"][key], y["objects"][key])
  later = generate("validation", 2, 4)
  np.testing.assert_array_equal(_images(a)[2:], _images(later))
  other = generate("train", 0, 6)
  assert not np.array_equal(_images(a), _images(other))
  with pytest.raises(ValueError, match="Unknown split 'val'"):
    generate("val")


def _centroid(image) -> np.ndarray:
  """(x, y) of the white pixels."""
  ys, xs = np.nonzero(image[..., 0])
  return np.array([xs.mean(), ys.mean()]) + 0.5


def test_dsprites_position_moves_the_sprite():
  rng = np.random.default_rng(0)
  for _ in range(6):
    shape, scale, orientation, other = (int(rng.integers(n)) for n in (3, 6, 40, 32))
    along_x = np.array([_centroid(dsprites_like.render(shape, scale, orientation, x,
                                                       other)) for x in range(32)])
    along_y = np.array([_centroid(dsprites_like.render(shape, scale, orientation,
                                                       other, y)) for y in range(32)])
    assert np.all(np.diff(along_x[:, 0]) > 0.5)  # steps of 36/31 pixels
    assert np.all(np.diff(along_y[:, 1]) > 0.5)
    assert np.ptp(along_x[:, 1]) <= 1 and np.ptp(along_y[:, 0]) <= 1  # sampling
    assert along_x[-1, 0] - along_x[0, 0] > 30 and along_y[-1, 1] - along_y[0, 1] > 30


def test_dsprites_orientation_and_scale_change_the_mask():
  hearts = {_key(dsprites_like.render(2, 5, o, 16, 16)) for o in range(40)}
  assert len(hearts) == 40  # a heart has no symmetry
  ellipses = [dsprites_like.render(1, 5, o, 16, 16) for o in range(20)]
  assert len({_key(e) for e in ellipses}) == 20  # half a turn apart look alike
  # Quarter turns of a square coincide (as in the real data).
  np.testing.assert_array_equal(dsprites_like.render(0, 3, 0, 9, 9),
                                dsprites_like.render(0, 3, 10, 9, 9))
  assert not np.array_equal(dsprites_like.render(0, 3, 0, 9, 9),
                            dsprites_like.render(0, 3, 5, 9, 9))
  for shape in range(3):
    areas = [np.count_nonzero(dsprites_like.render(shape, s, 7, 16, 16))
             for s in range(6)]
    assert np.all(np.diff(areas) > 0)


def test_dsprites_built_labels_match_pixels(built):
  for split, examples in built["dsprites_like"].items():
    for example in examples:
      image = example["image"]
      assert set(np.unique(image)) == {0, 255}
      assert not image[[0, -1]].any() and not image[:, [0, -1]].any()  # unclipped
      centre = dsprites_like.centre_pixels(example["label_x_position"],
                                           example["label_y_position"])
      assert np.all(np.abs(_centroid(image) - centre) < 1.5)
      assert example["value_shape"] == example["label_shape"] + 1
      np.testing.assert_allclose(example["value_scale"],
                                 0.5 + 0.1 * example["label_scale"], rtol=1e-6)
      np.testing.assert_allclose(example["value_orientation"],
                                 example["label_orientation"] * 2 * math.pi / 40,
                                 rtol=1e-6)
      for axis in ("x", "y"):
        np.testing.assert_allclose(example[f"value_{axis}_position"],
                                   example[f"label_{axis}_position"] / 31, rtol=1e-6)


def test_clevr_counts_and_distances_cover_every_class(scenes):
  counts = [len(scene["objects"]["size"]) for scene in scenes]
  assert set(counts) == set(range(3, 11))
  distances = {labels.clevr_distance(scene) for scene in scenes}
  assert distances == set(range(6))
  for scene in scenes:
    depths = scene["objects"]["pixel_coords"][:, 2]
    assert 7.0 <= depths.min() < 12.0 and depths.max() <= 18.0


def test_clevr_labels_match_pixels(scenes):
  for scene in scenes:
    image, object_map, objects, masks = (
        scene[k] for k in ("image", "object_map", "objects", "masks"))
    assert image.dtype == np.uint8 and image.shape == (64, 96, 3)
    assert object_map.dtype == np.int8 and object_map.shape == (64, 96)
    count = len(objects["size"])
    assert masks.shape == (count, 64, 96)
    floor = object_map == -1
    np.testing.assert_array_equal(image[floor], clevr_like.BACKGROUND[floor])
    changed = (image != clevr_like.BACKGROUND).any(-1)
    # Every object can be counted: most of it is unoccluded and drawn.
    assert set(np.unique(object_map)) == set(range(-1, count))
    for i in range(count):
      visible = object_map == i
      assert np.all(masks[i] | ~visible)
      assert visible.sum() >= clevr_like.MIN_VISIBLE * masks[i].sum()
      assert masks[i].sum() >= 8  # the smallest: a small sphere at depth 18
      assert changed[visible].mean() > 0.9
      x, y, _ = objects["pixel_coords"][i]
      rows, cols = np.nonzero(masks[i])
      assert cols.min() <= x <= cols.max() + 1 and rows.min() <= y <= rows.max() + 1
    # Nearer objects stand lower and, at equal size and shape, look bigger (for
    # small objects a pixel more or less is much, hence the depth ratio of 1.5).
    depth = objects["pixel_coords"][:, 2]
    bottom = np.array([np.nonzero(m.any(1))[0].max() for m in masks])
    area = masks.sum((1, 2))
    for i in range(count):
      assert abs(bottom[i] - (clevr_like.floor_row(depth[i]) - 0.5)) <= 1.5
      for j in range(count):
        if depth[i] * 1.1 < depth[j]:
          assert bottom[i] > bottom[j]
        if (depth[i] * 1.5 < depth[j] and objects["size"][i] == objects["size"][j]
            and objects["shape"][i] == objects["shape"][j]):
          assert area[i] > area[j]


def test_clevr_apparent_area_falls_as_depth_squared(scenes):
  """Per shape and size, log(area) against log(depth) has slope about -2."""
  for shape in range(3):
    for size in range(2):
      depths, areas = [], []
      for scene in scenes:
        objects, masks = scene["objects"], scene["masks"]
        pick = (objects["shape"] == shape) & (objects["size"] == size)
        depths.extend(objects["pixel_coords"][pick, 2])
        areas.extend(masks[pick].sum((1, 2)))
      slope = np.polyfit(np.log(depths), np.log(areas), 1)[0]
      assert -2.3 < slope < -1.7, (shape, size, slope)


def test_vtab_transforms_on_built_data(built):
  locations, orientations, counts, distances = set(), set(), set(), set()
  for split in SPLITS:
    for example in built["dsprites_like"][split]:
      locations.add(vtab_dsprites_location(example))
      orientations.add(vtab_dsprites_orientation(example))
    for example in built["clevr_like"][split]:
      counts.add(vtab_clevr_count(example))
      distances.add(vtab_clevr_distance(example))
  assert locations <= set(range(16)) and orientations <= set(range(16))
  assert counts <= set(range(8)) and distances <= set(range(6))
  assert len(locations) > 8 and len(orientations) > 8  # 80 examples, 16 classes
  assert len(counts) > 4 and len(distances) > 3
  # The offline VTAB tasks' label functions (`labels.py`) agree with
  # task_adaptation's.
  for name, label, reference in (
      ("dsprites_like_location", labels.dsprites_location, vtab_dsprites_location),
      ("dsprites_like_orientation", labels.dsprites_orientation,
       vtab_dsprites_orientation),
      ("clevr_like_count", labels.clevr_count, vtab_clevr_count),
      ("clevr_like_distance", labels.clevr_distance, vtab_clevr_distance)):
    task = vtab.OFFLINE[name]
    assert task.label is label
    for split in SPLITS:
      for example in built[task.dataset][split]:
        assert task.label(example) == reference(example), (name, split)
