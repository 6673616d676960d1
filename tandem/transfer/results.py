"""One result format for the array evaluators (`linear_probe`, `fewshot`, `knn`).

Each returns a `Result`: the test top-1 of every setting it scored, named as the
suite names its records ("linear_probe", "fewshot_5shot", "knn_k20_T0.07"), the
predicted test labels behind each number, the test labels, and what each setting
chose on training data (`details`). k-NN adds the neighbours of every test example
(training indices, nearest first, and their cosine similarities); the linear probe
adds its classifier, which applies to raw features. So a confusion matrix
(`Result.confusion`) or a grid of retrieved training images needs nothing
re-implemented:

    r = tandem.transfer.knn(train_x, train_y, test_x, test_y, ks=(20,))
    r.top1                    # {"knn_k20_T0.07": 0.91}
    r.accuracy                # 0.91 (the one setting's top-1)
    r.confusion()             # [C, C] counts: rows true class, columns predicted
    r.neighbours[:8, :5]      # the 5 nearest training examples of 8 test examples
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class LinearClassifier:
  """A linear probe's classifier on raw features: standardised with the training
  features' `mean` and `std`, then `x @ w + b`."""
  w: np.ndarray  # [D, K]
  b: np.ndarray  # [K]
  mean: np.ndarray  # [D]
  std: np.ndarray  # [D]

  def logits(self, x) -> np.ndarray:
    """[N, K] class scores of raw features x [N, D]."""
    x = (np.asarray(x, np.float32) - self.mean) / self.std
    return x @ self.w + self.b

  def predict(self, x) -> np.ndarray:
    """[N] predicted labels of raw features x [N, D]."""
    return np.argmax(self.logits(x), axis=-1)


@dataclasses.dataclass(frozen=True)
class Result:
  """What an array evaluator found on the test split (see the module docstring).

  `predictions[setting]` is [N_test] (few-shot: [seeds, N_test], one row per seed);
  `details[setting]` holds the protocol's choices (L2 strength, validation
  top-1, few-shot mean and std over seeds...).
  """
  evaluator: str
  top1: dict[str, float]
  predictions: dict[str, np.ndarray]
  labels: np.ndarray
  num_classes: int
  details: dict[str, dict]
  neighbours: np.ndarray | None = None  # k-NN: [N_test, max k] training indices.
  similarities: np.ndarray | None = None  # k-NN: [N_test, max k] cosine similarity.
  classifier: Any = None  # Linear probe: a `LinearClassifier`.

  def _setting(self, setting: str | None) -> str:
    if setting is None:
      if len(self.top1) != 1:
        raise ValueError(f"This {self.evaluator} result has {len(self.top1)} "
                         f"settings; name one of {sorted(self.top1)}.")
      return next(iter(self.top1))
    if setting not in self.top1:
      raise KeyError(f"No setting {setting!r} in this {self.evaluator} result; it "
                     f"has {sorted(self.top1)}.")
    return setting

  def __getitem__(self, setting: str) -> float:
    """The test top-1 of `setting`."""
    return self.top1[self._setting(setting)]

  @property
  def accuracy(self) -> float:
    """The test top-1 of a result with one setting."""
    return self.top1[self._setting(None)]

  def confusion(self, setting: str | None = None) -> np.ndarray:
    """[C, C] counts of test examples by true class (rows) and predicted class
    (columns), for `setting` (optional when there is one). Few-shot: summed over
    seeds."""
    preds = np.asarray(self.predictions[self._setting(setting)])
    labels = np.broadcast_to(self.labels, preds.shape)
    counts = np.zeros((self.num_classes, self.num_classes), np.int64)
    np.add.at(counts, (labels.ravel(), preds.ravel()), 1)
    return counts
