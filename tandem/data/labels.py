"""Labels of VTAB's structured tasks (Zhai et al. 2019): functions of one decoded
example (a NumPy dict with TFDS's feature names), equal to google-research/
task_adaptation's TensorFlow preprocessing.

The VTAB task table (`tandem/transfer/vtab.py`) labels TFDS's clevr, kitti and
dsprites with them, and our procedural `clevr_like` and `dsprites_like` (the same
features) too; `clevr_like` draws its scenes so that `clevr_distance`'s bins
(`CLEVR_DISTANCE_THRESHOLDS`) come out uniform.
"""
from typing import Any, Mapping

import numpy as np

CLEVR_MIN_OBJECTS = 3  # CLEVR scenes hold 3 to 10 objects
# task_adaptation/data/clevr.py's distance bins.
CLEVR_DISTANCE_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_VEHICLE_TYPES = (0, 1, 2)  # Car, Van, Truck in TFDS's kitti `type` ClassLabel
KITTI_DISTANCE_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)


def _bin(value: float, thresholds: tuple[float, ...]) -> int:
  """task_adaptation's `reduce_max(where(thresholds - value < 0))`: the last i with
  thresholds[i] < value (compared in float32, as TF does); -1 when there is none."""
  below = np.asarray(thresholds, np.float32) < np.float32(value)
  return int(np.nonzero(below)[0].max()) if below.any() else -1


def _regroup(value: Any, num_values: int, num_classes: int) -> int:
  """task_adaptation's `floordiv(value, num_values / num_classes)`, in integers (the
  float32 quotient never lands within rounding error of an integer it is not)."""
  return int(value) * num_classes // num_values


def clevr_count(example: Mapping[str, Any]) -> int:
  """Number of objects - 3 (CLEVR scenes hold 3 to 10 objects): 8 classes."""
  return len(example["objects"]["size"]) - CLEVR_MIN_OBJECTS


def clevr_distance(example: Mapping[str, Any]) -> int:
  """Depth of the closest object (pixel_coords[:, 2]) in 6 bins."""
  depth = np.asarray(example["objects"]["pixel_coords"], np.float32).reshape(-1, 3)
  closest = depth[:, 2].min() if len(depth) else np.inf  # TF's min of nothing
  return _bin(closest, CLEVR_DISTANCE_THRESHOLDS)


def kitti_closest_vehicle_distance(example: Mapping[str, Any]) -> int:
  """Distance (location z, metres) to the closest vehicle in 4 classes: up to 8 m,
  8 to 20 m, beyond 20 m, no vehicle (its distance counts as 1000 m)."""
  objects = example["objects"]
  object_types = np.asarray(objects["type"]).reshape(-1)
  depth = np.asarray(objects["location"], np.float32).reshape(-1, 3)[:, 2]
  vehicle_depth = depth[np.isin(object_types, KITTI_VEHICLE_TYPES)]
  closest = np.concatenate([vehicle_depth, np.float32([1000.0])]).min()
  return _bin(closest, KITTI_DISTANCE_THRESHOLDS)


def dsprites_location(example: Mapping[str, Any]) -> int:
  """x position (32 values) in 16 classes: x // 2."""
  return _regroup(example["label_x_position"], 32, 16)


def dsprites_orientation(example: Mapping[str, Any]) -> int:
  """Orientation (40 values) in 16 classes: floor(o / 2.5)."""
  return _regroup(example["label_orientation"], 40, 16)
