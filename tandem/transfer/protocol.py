"""The evaluator contract: task data in, records out, test labels fenced off.

Every evaluator module (`EVALUATORS`) has
`evaluate_task(data, settings, model) -> list[dict]`: `data` is the task
(`TaskData`, or the evaluator's own kind of data, e.g. image-caption pairs for
retrieval), `settings` the evaluator's block of the config (a mapping), `model` the
`Model` under evaluation. A record is {"evaluator", "metric", "value", ...the
protocol's choices} or {"evaluator", "skipped": why}. The suite runner
(`tandem.transfer.run`) and the evaluations inside pretraining
(`tandem.transfer.periodic`) call the same functions, so numbers in training and in
the suite come from the same code. An evaluator that also draws pictures has
`images(data, settings, model) -> {name: uint8 [H, W, C]}`; metrics and images
never share a dict.

VTAB-1k protocol (Zhai et al. 2019): hyper-parameters are swept by training on
`train` (train800) and scoring on `val` (val200); the chosen setting is retrained
on `trainval` (train800val200) and scored once on `test`. An evaluator does its
sweep inside `with data.selection():`; touching the test split there raises
`TestSplitAccessError`, so model selection can never see test labels.

Features are extracted lazily through the `extract(images, layer)` function the
caller passes in, and kept in one `FeatureCache` per run, keyed by params version
× images (dataset, split, cap) × layer: evaluators and tasks that read the same
images at the same layer share one extraction.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import re
from typing import Any, Callable, Hashable

import numpy as np

SPLITS = ("train", "val", "trainval", "test")
# Evaluator name -> module with `evaluate_task` (imported when used: fine-tuning
# pulls in the training machinery).
EVALUATORS = {"linear_probe": "tandem.transfer.probe",
              "fewshot": "tandem.transfer.ridge",
              "knn": "tandem.transfer.neighbors",
              "finetune": "tandem.transfer.finetune",
              "zeroshot": "tandem.transfer.zeroshot",
              "retrieval": "tandem.transfer.retrieval",
              "label_free": "tandem.transfer.label_free"}


def get_evaluator(name: str, module: str | None = None):
  """The module of evaluator `name` (or the given module path)."""
  if module is None and name not in EVALUATORS:
    raise ValueError(f"Unknown evaluator {name!r}; available: {sorted(EVALUATORS)} "
                     "(or give the block a `module`).")
  return importlib.import_module(module or EVALUATORS[name])


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


@dataclasses.dataclass
class Model:
  """What an evaluator may use of the model under evaluation.

  `config`: its pretraining config; `variables`: the whole model's
  {"params": ..., **model_state} (the backbone is `params["encoder"]`); `mesh`:
  where to run (None: the default device); `seed`: for the evaluators' own draws.
  """
  config: Any
  variables: dict
  mesh: Any = None
  seed: int = 0
  batch_size: int = 256  # Feature extraction batch.
  _embedder: Any = dataclasses.field(default=None, repr=False)

  @property
  def embedder(self):
    """Image and text embeddings of a two-tower checkpoint (None otherwise)."""
    if self._embedder is None and "text" in self.config.input:
      from tandem.transfer import features  # pylint: disable=g-import-not-at-top
      self._embedder = features.ImageTextEmbedder(self.config, self.batch_size)
    return self._embedder


def needs_text_tower(model: Model, evaluator: str) -> dict | None:
  """The skip record of an image-text evaluator on a checkpoint without a text
  tower, else None."""
  if model.embedder is not None:
    return None
  return {"evaluator": evaluator, "skipped": (
      f"{model.config.objective} checkpoints have no text tower; {evaluator} needs "
      "a CLIP/SigLIP checkpoint.")}


class FeatureCache:
  """Features of one params version, by (images key, layer); a new version (the
  train step, or the checkpoint) drops the old ones."""

  def __init__(self):
    self.version: Hashable = None
    self.extractions = 0
    self._store: dict = {}

  def set_version(self, version: Hashable) -> None:
    if version != self.version:
      self.version, self._store = version, {}

  def get(self, key: Hashable, layer: str, compute: Callable[[], np.ndarray],
          what: str) -> np.ndarray:
    if (key, layer) not in self._store:
      self.extractions += 1
      self._store[key, layer] = check_finite(np.asarray(compute(), np.float32), what)
    return self._store[key, layer]


class TaskData:
  """The splits of one task, their features, and the selection fence.

  Held as trainval (the examples a model may train on) with the indices of `val`
  inside it, and `test`. From VTAB-style splits (the constructor), trainval is
  train followed by val (train800val200); `carved` instead holds a training split
  as is and draws val from it (seeded), as the evaluations inside pretraining do.
  `train` is trainval without val, in order. A task without training data (zero-shot)
  gives only `test`.

  `extract(images, layer) -> float32 [N, D]` computes features of uint8 images;
  they are computed once per split × layer (train and val are rows of trainval's)
  and kept in `cache` (one `FeatureCache` shared by the run's tasks; by default the
  task's own) under `keys[split]` (default (task name, split)), so tasks that share
  images share their features. `test` (and `features("test", ...)`) raise
  `TestSplitAccessError` inside `selection()`.
  """

  def __init__(self, name: str, num_classes: int, splits: dict[str, Split],
               extract: Callable[[np.ndarray, str], np.ndarray] | None = None,
               class_names: tuple[str, ...] | None = None, group: str = "",
               cache: FeatureCache | None = None,
               keys: dict[str, Hashable] | None = None):
    if "test" not in splits or ("train" in splits) != ("val" in splits):
      raise ValueError(f"Task {name}: needs a test split, and train and val together "
                       f"(or neither); got {sorted(splits)}.")
    if "train" in splits:
      train, val = splits["train"], splits["val"]
      trainval = Split("trainval", np.concatenate([train.images, val.images]),
                       np.concatenate([train.labels, val.labels]))
      val_index = np.arange(len(train.labels), len(trainval.labels))
    else:
      trainval, val_index = None, np.zeros((0,), np.int64)
    self._init(name, num_classes, trainval, val_index, splits["test"], extract,
               class_names, group, cache, keys)

  @classmethod
  def carved(cls, name: str, num_classes: int, train: Split, test: Split, *,
             num_val: int, seed: int, **kwargs) -> "TaskData":
    """`train` as trainval, val its seeded random `num_val` examples
    (`default_rng(seed).permutation(len(train))[:num_val]`; 0: no val)."""
    if not 0 <= num_val < len(train.labels):
      raise ValueError(f"num_val={num_val} must be in [0, {len(train.labels)}).")
    val_index = np.random.default_rng(seed).permutation(len(train.labels))[:num_val]
    task = cls.__new__(cls)
    task._init(name, num_classes, Split("trainval", train.images, train.labels),
               val_index, test, **kwargs)
    return task

  def _init(self, name, num_classes, trainval, val_index, test, extract=None,
            class_names=None, group="", cache=None, keys=None):
    self.name, self.num_classes = name, num_classes
    self.class_names, self.group = class_names, group
    self._trainval, self._test = trainval, test
    self.val_index = val_index
    n = 0 if trainval is None else len(trainval.labels)
    self.train_index = np.setdiff1d(np.arange(n), val_index)
    self._extract = extract
    self.cache = cache if cache is not None else FeatureCache()
    self.keys = {"trainval": (name, "trainval"), "test": (name, "test"),
                 **(keys or {})}
    self._selecting = False
    self.extraction_count = 0  # Extractions this task ran (tests: once per split).

  @contextlib.contextmanager
  def selection(self):
    """Hyper-parameter selection: the test split is off limits in here."""
    previous, self._selecting = self._selecting, True
    try:
      yield self
    finally:
      self._selecting = previous

  def _rows(self, split: str):
    return {"train": self.train_index, "val": self.val_index}.get(split)

  def split(self, name: str) -> Split:
    if name not in SPLITS:
      raise KeyError(f"Task {self.name} has no split {name!r}; splits: {SPLITS}.")
    if name == "test" and self._selecting:
      raise TestSplitAccessError(
          f"Task {self.name}: the test split was accessed during model selection."
          " Select hyper-parameters on train/val only, then score test outside"
          " `selection()`.")
    if name == "test":
      return self._test
    if self._trainval is None:
      raise KeyError(f"Task {self.name} has only a test split.")
    rows = self._rows(name)
    if rows is None:
      return self._trainval
    return Split(name, self._trainval.images[rows], self._trainval.labels[rows])

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
    """float32 [N, D] features of `split` at `layer`, extracted once and cached.
    "LAYER[:m]": the first m dimensions of LAYER's (a Matryoshka prefix)."""
    prefix = re.fullmatch(r"(.+)\[:(\d+)\]", layer)
    if prefix:
      full = self.features(split, prefix.group(1))
      if int(prefix.group(2)) > full.shape[1]:
        raise ValueError(f"Layer {layer}: {prefix.group(1)} has only "
                         f"{full.shape[1]} dimensions.")
      return full[:, :int(prefix.group(2))]
    data = self.split(split)  # The fence applies to features too.
    rows = self._rows(split)
    if rows is not None:
      return self.features("trainval", layer)[rows]
    if self._extract is None:
      raise ValueError(f"Task {self.name}: no feature extractor was given.")

    def compute():
      self.extraction_count += 1
      return self._extract(data.images, layer)

    return self.cache.get(self.keys[split], layer, compute,
                          f"{self.name}/{split}/{layer}")
