"""VTAB-1k tasks (Zhai et al. 2019) and the loading of their splits, without TensorFlow.

The 19 task definitions reproduce google-research/task_adaptation's
`task_adaptation/data/*.py`: the TFDS dataset and version pattern, the four VTAB-1k
split strings and the label of each task. task_adaptation derives the splits from a
dataset's own splits as follows (sizes of the source splits in the comments below):

- train800 is always the first 800 examples of the training split.
- val200 is the first 200 examples of task_adaptation's "val" split: the dataset's
  validation split where it has one; otherwise the part of the training split after
  task_adaptation's "train" part (e.g. CIFAR-100: train[:45000] is "train",
  train[45000:] "val", so val200 = train[45000:45200]); smallNORB's val is the first
  half of its test split.
- train800val200 is train800 followed by val200.
- test is the dataset's test split, except: EuroSAT and RESISC45 (train only, cut
  60/20/20 %), dSprites (train only, cut 80/10/10 %), smallNORB (second half of
  test), CLEVR (its "validation" split; TFDS's CLEVR test has no labels).

Structured tasks predict a label computed from other features (`Task.label` is then
a function of the decoded example, in NumPy, equal to task_adaptation's TensorFlow
preprocessing: `tandem/data/labels.py`). Two versions differ from task_adaptation's,
whose versions TFDS 4.9 no longer builds: Oxford-IIIT Pet is "oxford_iiit_pet:4.*.*"
(task_adaptation: 3.*.*; the same images, labels and splits, with corrupt images
fixed and head boxes added), KITTI "kitti:3.*.*" (task_adaptation pins 3.1.0; its
authors confirm that 3.2.0 yields the same data, task_adaptation issue #18; 3.3.0
adds `occluded` labels).

OFFLINE is a suite with the same protocol on data built locally by
`python -m tandem.data.prepare --dataset NAME` (no network): Fashion-MNIST and the
CIFAR-10 subset (natural), and the procedural `dsprites_like` and `clevr_like`
(structured; the same features as TFDS's dsprites and clevr, and the same label
functions as the VTAB tasks on them).

`load_split` returns uint8 images and int32 labels, read by
`input_pipeline.load_arrays` with the task's label (its fast record decoder when
that is the dataset's supervised label, TFDS's deserialization otherwise). Images
come as stored (smallNORB and dSprites are grayscale) unless `channels` is given,
except that dSprites' pixels, stored as 0 or 1, are multiplied by 255 as
task_adaptation does.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow_datasets as tfds

from tandem.data import captions
from tandem.data import input_pipeline
from tandem.data import labels
from tandem.transfer.report import GROUPS  # natural, specialized, structured

SPLIT_NAMES = ("train800", "val200", "train800val200", "test")

_NUM_THREADS = 2
# Datasets whose pixels are stored as 0/1 (TFDS base name -> factor to 0/255).
_PIXEL_SCALE = {"dsprites": 255}


@dataclasses.dataclass(frozen=True)
class Task:
  """One VTAB-1k-style task: which data, which splits, which label."""
  name: str
  dataset: str  # TFDS name[/config][:version pattern]
  group: str  # natural | specialized | structured
  num_classes: int
  splits: Mapping[str, str] = dataclasses.field(hash=False)  # SPLIT_NAMES -> TFDS split
  label: str | Callable[[Mapping[str, Any]], int] = "label"  # feature, or fn(example)
  image_key: str = "image"
  class_names: tuple[str, ...] | None = None  # for zero-shot prompts; None = unknown

  def __post_init__(self):
    if self.group not in GROUPS:
      raise ValueError(f"Task {self.name}: group {self.group!r} not in {GROUPS}.")
    if set(self.splits) != set(SPLIT_NAMES):
      raise ValueError(f"Task {self.name}: splits {sorted(self.splits)}, expected"
                       f" exactly {SPLIT_NAMES}.")
    if self.class_names is not None and len(self.class_names) != self.num_classes:
      raise ValueError(f"Task {self.name}: {len(self.class_names)} class names for"
                       f" {self.num_classes} classes.")
    object.__setattr__(self, "splits", dict(self.splits))  # a copy, picklable

  def prepare_command(self, data_dir: str | None = None) -> str:
    """The shell command that prepares this task's dataset in `data_dir`."""
    data_dir = input_pipeline.resolve_data_dir(data_dir)
    return (f"python -m tandem.data.prepare --dataset {shlex.quote(self.dataset)}"
            f" --data_dir {shlex.quote(data_dir)}")


def _splits(val200: str, test: str, train800: str = "train[:800]",
            train800val200: str | None = None) -> dict[str, str]:
  return {"train800": train800, "val200": val200,
          "train800val200": train800val200 or f"{train800}+{val200}", "test": test}


_VTAB1K = (
    # Natural.
    # train 3060, test 6084; train = train[:2754] (90 %), val = train[2754:].
    Task("caltech101", "caltech101:3.*.*", "natural", 102,
         _splits("train[2754:2954]", "test")),
    # train 50000, test 10000; train = train[:45000] (90 %).
    Task("cifar100", "cifar100:3.*.*", "natural", 100,
         _splits("train[45000:45200]", "test")),
    # train 1880, validation 1880, test 1880.
    Task("dtd", "dtd:3.*.*", "natural", 47, _splits("validation[:200]", "test")),
    # train 1020, validation 1020, test 6149.
    Task("oxford_flowers102", "oxford_flowers102:2.*.*", "natural", 102,
         _splits("validation[:200]", "test")),
    # train 3680, test 3669; train = train[:2944] (80 %).
    Task("oxford_iiit_pet", "oxford_iiit_pet:4.*.*", "natural", 37,
         _splits("train[2944:3144]", "test")),
    # train 76128, validation 10875, test 21750.
    Task("sun397", "sun397/tfds:4.*.*", "natural", 397,
         _splits("validation[:200]", "test")),
    # train 73257, test 26032 (extra unused); train = train[:65931] (90 %).
    Task("svhn", "svhn_cropped:3.*.*", "natural", 10,
         _splits("train[65931:66131]", "test")),
    # Specialized.
    # train 262144, validation 32768, test 32768.
    Task("patch_camelyon", "patch_camelyon:2.*.*", "specialized", 2,
         _splits("validation[:200]", "test")),
    # train 27000 only: train[:16200] / [16200:21600] / [21600:] (60/20/20 %).
    Task("eurosat", "eurosat/rgb:2.*.*", "specialized", 10,
         _splits("train[16200:16400]", "train[21600:]")),
    # train 31500 only: train[:18900] / [18900:25200] / [25200:] (60/20/20 %).
    Task("resisc45", "resisc45:3.*.*", "specialized", 45,
         _splits("train[18900:19100]", "train[25200:]")),
    # train 35126, validation 10906, test 42670.
    Task("diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300:3.*.*",
         "specialized", 5, _splits("validation[:200]", "test")),
    # Structured.
    # train 70000, validation 15000 (the test split), test 15000 (unlabelled);
    # train = train[:63000] (90 %).
    Task("clevr_count", "clevr:3.*.*", "structured", 8,
         _splits("train[63000:63200]", "validation"), label=labels.clevr_count),
    Task("clevr_distance", "clevr:3.*.*", "structured", 6,
         _splits("train[63000:63200]", "validation"), label=labels.clevr_distance),
    # train 65550, validation 22628, test 22735.
    Task("dmlab", "dmlab:2.0.1", "structured", 6,
         _splits("validation[:200]", "test")),
    # train 6347, validation 423, test 711.
    Task("kitti_distance", "kitti:3.*.*", "structured", 4,
         _splits("validation[:200]", "test"),
         label=labels.kitti_closest_vehicle_distance),
    # train 737280 only: train[:589824] / [589824:663552] / [663552:] (80/10/10 %).
    Task("dsprites_location", "dsprites:2.*.*", "structured", 16,
         _splits("train[589824:590024]", "train[663552:]"),
         label=labels.dsprites_location),
    Task("dsprites_orientation", "dsprites:2.*.*", "structured", 16,
         _splits("train[589824:590024]", "train[663552:]"),
         label=labels.dsprites_orientation),
    # train 24300, test 24300; val = test[:50%], test = test[50%:] (12150 each).
    Task("smallnorb_azimuth", "smallnorb:2.*.*", "structured", 18,
         _splits("test[:200]", "test[50%:]"), label="label_azimuth"),
    Task("smallnorb_elevation", "smallnorb:2.*.*", "structured", 9,
         _splits("test[:200]", "test[50%:]"), label="label_elevation"),
)

# Our own datasets: fashion_mnist (train 60000, test 10000), cifar10_subset (train
# 5085, test 1017), dsprites_like and clevr_like (train 5000, validation 1000, test
# 2000).
_LOCAL_NATURAL = _splits("train[800:1000]", "test", train800val200="train[:1000]")
_LOCAL_STRUCTURED = _splits("validation[:200]", "test")
_OFFLINE = (
    Task("fashion_mnist", "fashion_mnist", "natural", 10, _LOCAL_NATURAL,
         class_names=tuple(captions.class_names("fashion_mnist"))),
    Task("cifar10_subset", "cifar10_subset", "natural", 10, _LOCAL_NATURAL,
         class_names=tuple(captions.class_names("cifar10_subset"))),
    Task("dsprites_like_location", "dsprites_like", "structured", 16,
         _LOCAL_STRUCTURED, label=labels.dsprites_location),
    Task("dsprites_like_orientation", "dsprites_like", "structured", 16,
         _LOCAL_STRUCTURED, label=labels.dsprites_orientation),
    Task("clevr_like_count", "clevr_like", "structured", 8, _LOCAL_STRUCTURED,
         label=labels.clevr_count),
    Task("clevr_like_distance", "clevr_like", "structured", 6, _LOCAL_STRUCTURED,
         label=labels.clevr_distance),
)

VTAB1K: dict[str, Task] = {task.name: task for task in _VTAB1K}  # paper order
OFFLINE: dict[str, Task] = {task.name: task for task in _OFFLINE}
SUITES: dict[str, dict[str, Task]] = {"vtab1k": VTAB1K, "offline": OFFLINE}


def get_tasks(spec: str) -> list[Task]:
  """Tasks named by `spec`: a suite ("vtab1k", "offline") or comma-separated task
  (or suite) names, in the order given, each once."""
  known = {**VTAB1K, **OFFLINE}
  tasks: dict[str, Task] = {}
  names = [n.strip() for n in spec.split(",") if n.strip()]
  if not names:
    raise ValueError(f"No task named in {spec!r}; suites: {sorted(SUITES)}.")
  for name in names:
    if name in SUITES:
      tasks.update(SUITES[name])
    elif name in known:
      tasks[name] = known[name]
    else:
      raise ValueError(f"Unknown task {name!r}. Suites: {sorted(SUITES)}; tasks:"
                       f" {', '.join(known)}.")
  return list(tasks.values())


def _builder(task: Task, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The task's prepared TFDS builder, or DatasetNotPreparedError naming the fix."""
  data_dir = input_pipeline.resolve_data_dir(data_dir)
  try:
    return input_pipeline.prepared_builder(task.dataset, data_dir)
  except input_pipeline.DatasetNotPreparedError as e:
    reason = str(e).split("Prepare it with:")[0].strip()  # our command replaces its
    raise input_pipeline.DatasetNotPreparedError(
        f"Task {task.name}: {reason}\nPrepare it with:\n"
        f"  {task.prepare_command(data_dir)}") from e


def is_prepared(task: Task, data_dir: str | None = None) -> bool:
  """Whether the task's dataset is prepared (as array_record) in `data_dir`.

  A dataset prepared in another file format raises ValueError saying how to fix it.
  """
  try:
    _builder(task, data_dir)
  except input_pipeline.DatasetNotPreparedError:
    return False
  return True


def _readable(name: str) -> str:
  """A TFDS label name as prompt text: "/a/apartment_building/outdoor" (SUN397)
  -> "apartment building outdoor", "american_bulldog" -> "american bulldog"."""
  name = re.sub(r"^/[a-z]/", "", name)
  return " ".join(name.replace("/", " ").replace("_", " ").split()).lower()


def class_names(task: Task, data_dir: str | None = None) -> tuple[str, ...] | None:
  """Class names for zero-shot prompts, in label order, or None when none are known.

  `task.class_names` when set; for a natural task labelled by a ClassLabel feature,
  its names as the prepared dataset records them (TFDS fills some, e.g. CIFAR-100's,
  only when preparing), made readable; else None (specialized and structured labels
  are not nameable objects).
  """
  if task.class_names is not None:
    return task.class_names
  if task.group != "natural" or not isinstance(task.label, str):
    return None
  feature = _builder(task, data_dir).info.features[task.label]
  if not isinstance(feature, tfds.features.ClassLabel) or not feature.names:
    return None
  return tuple(_readable(name) for name in feature.names)


def load_split(task: Task, split: str, *, data_dir: str | None = None,
               image_size: int | None = None, channels: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """One split of a task in memory: (uint8 [N, H, W, C] images, int32 [N] labels).

  `split` is one of SPLIT_NAMES (mapped through `task.splits`) or any TFDS split
  string. Images are resized to `image_size` and converted to `channels` when given
  (`image_ops`, as `input_pipeline.load_arrays`); otherwise they must share one
  size. Raises DatasetNotPreparedError (with `task.prepare_command`) when the data
  is missing, and ValueError naming the task when the split does not fit the
  prepared data or a label falls outside [0, num_classes).
  """
  tfds_split = task.splits.get(split, split)
  try:
    images, label_ids = input_pipeline.load_arrays(
        task.dataset, tfds_split, data_dir=data_dir, image_size=image_size,
        channels=channels, label=task.label, image_key=task.image_key,
        pixel_scale=_PIXEL_SCALE.get(task.dataset.split(":")[0].split("/")[0], 1),
        num_threads=_NUM_THREADS)
  except input_pipeline.DatasetNotPreparedError:
    _builder(task, data_dir)  # Raises the error that names the task's command.
    raise
  except ValueError as e:
    raise ValueError(f"Task {task.name}, split {split!r} ({task.dataset}"
                     f" {tfds_split}): {e}") from e
  outside = (label_ids < 0) | (label_ids >= task.num_classes)
  if outside.any():
    raise ValueError(
        f"Task {task.name}, split {split!r} ({task.dataset} {tfds_split}):"
        f" {int(outside.sum())} of {len(label_ids)} labels lie outside [0,"
        f" {task.num_classes}), e.g. {np.unique(label_ids[outside])[:5].tolist()}."
        " The data does not match the task definition.")
  return images, label_ids
