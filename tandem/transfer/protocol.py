"""The data a transfer evaluator sees for one task, with test labels fenced off.

VTAB-1k protocol (Zhai et al. 2019): hyper-parameters are swept by training on
`train` (train800) and scoring on `val` (val200); the chosen setting is retrained
on `trainval` (train800val200) and scored once on `test`. An evaluator does its
sweep inside `with data.selection():`; touching the test split there raises
`TestSplitAccessError`, so model selection can never see test labels.

Features are extracted lazily, once per split × layer, through the `extract`
function the runner passes in (one checkpoint), and cached for every evaluator of
the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import numpy as np

SPLITS = ("train", "val", "trainval", "test")
_GIVEN = ("train", "val", "test")  # trainval is always train followed by val.


class TestSplitAccessError(RuntimeError):
  """The test split was read while hyper-parameters were being selected."""


class NonFiniteFeaturesError(ValueError):
  """Features hold NaN or Inf: the checkpoint or the layer is broken."""


@dataclasses.dataclass
class Split:
  """One split of a task: uint8 images [N, H, W, C] and int labels [N]."""
  name: str
  images: np.ndarray
  labels: np.ndarray


def check_finite(x: np.ndarray, what: str) -> np.ndarray:
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.all(np.isfinite(x), axis=tuple(range(1, x.ndim)))))
    raise NonFiniteFeaturesError(
        f"{what}: {bad} of {len(x)} feature vectors hold NaN or Inf. The checkpoint"
        " (or this layer) produces non-finite activations; evaluate another step or"
        " layer.")
  return x


class TaskData:
  """The splits of one task, their cached features, and the selection fence.

  `splits` holds train, val and test; trainval is train followed by val (VTAB's
  train800val200), and its features are the concatenation of theirs.

  `extract(images, layer) -> float32 [N, D]` computes features of uint8 images.
  `test` (and `features("test", ...)`) raise `TestSplitAccessError` inside
  `selection()`.
  """

  def __init__(self, name: str, num_classes: int, splits: dict[str, Split],
               extract: Callable[[np.ndarray, str], np.ndarray] | None = None,
               class_names: tuple[str, ...] | None = None, group: str = ""):
    missing = [s for s in _GIVEN if s not in splits]
    if missing:
      raise ValueError(f"Task {name}: missing splits {missing}.")
    self.name, self.num_classes = name, num_classes
    self.class_names, self.group = class_names, group
    self._splits = {s: splits[s] for s in _GIVEN}
    train, val = splits["train"], splits["val"]
    self._splits["trainval"] = Split(
        "trainval", np.concatenate([train.images, val.images]),
        np.concatenate([train.labels, val.labels]))
    self._extract = extract
    self._features: dict[tuple[str, str], np.ndarray] = {}
    self._selecting = False

  @contextlib.contextmanager
  def selection(self):
    """Hyper-parameter selection: the test split is off limits in here."""
    previous, self._selecting = self._selecting, True
    try:
      yield self
    finally:
      self._selecting = previous

  def split(self, name: str) -> Split:
    if name not in self._splits:
      raise KeyError(f"Task {self.name} has no split {name!r}; splits: {SPLITS}.")
    if name == "test" and self._selecting:
      raise TestSplitAccessError(
          f"Task {self.name}: the test split was accessed during model selection."
          " Select hyper-parameters on train/val only, then score test outside"
          " `selection()`.")
    return self._splits[name]

  @property
  def train(self) -> Split:
    return self.split("train")

  @property
  def val(self) -> Split:
    return self.split("val")

  @property
  def trainval(self) -> Split:
    return self.split("trainval")

  @property
  def test(self) -> Split:
    return self.split("test")

  def features(self, split: str, layer: str) -> np.ndarray:
    """float32 [N, D] features of `split` at `layer`, extracted once and cached."""
    data = self.split(split)  # The fence applies to features too.
    key = (split, layer)
    if key not in self._features and split == "trainval":
      self._features[key] = np.concatenate([self.features("train", layer),
                                            self.features("val", layer)])
    if key not in self._features:
      if self._extract is None:
        raise ValueError(f"Task {self.name}: no feature extractor was given.")
      self._features[key] = check_finite(
          np.asarray(self._extract(data.images, layer), np.float32),
          f"{self.name}/{split}/{layer}")
    return self._features[key]

  @property
  def extraction_count(self) -> int:
    """How many times the extractor ran (for tests: once per split × layer)."""
    return sum(1 for split, _ in self._features if split != "trainval")
