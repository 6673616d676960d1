"""Frozen-feature evaluators run periodically inside pretraining (`config.evals`).

Each block of `config.evals` names a dataset, a train and a test split, optional
caps (`max_train`, `max_test`: a seeded subsample, 0 = all), the `layer` and the
extraction `batch_size`. Images are loaded once per (dataset, split, cap) for the
whole run, and features once per (params, dataset, split, layer): when
`linear_probe`, `fewshot` and `knn` evaluate the same checkpoint on the same data,
the backbone runs over those images once, not three times.
"""
from __future__ import annotations

import functools

import numpy as np

from tandem.transfer import features as features_lib
from tandem.transfer import protocol

# The features of the params evaluated last: {key: array}, reset for new params.
_FEATURES: dict = {"params": None, "cache": {}}


def _cached(variables, key, compute):
  params = variables["params"]
  if _FEATURES["params"] is not params:
    _FEATURES["params"], _FEATURES["cache"] = params, {}
  if key not in _FEATURES["cache"]:
    _FEATURES["cache"][key] = compute()
  return _FEATURES["cache"][key]


@functools.lru_cache(maxsize=8)
def _load(dataset: str, split: str, data_dir: str, image_size: int, channels: int,
          max_examples: int, seed: int):
  from tandem.data import input_pipeline  # Host data code, only when evaluating.
  images, labels = input_pipeline.load_arrays(dataset, split, data_dir=data_dir,
                                              image_size=image_size, channels=channels)
  if max_examples and len(images) > max_examples:
    keep = np.sort(np.random.default_rng(seed).choice(len(images), max_examples,
                                                      replace=False))
    images, labels = images[keep], labels[keep]
  return images, labels


class FrozenFeatureEvaluator:
  """Base: loads `config.evals.<name>`'s splits; `run` extracts and evaluates.

  Subclasses set `name` and define `evaluate(train_x, train_y, test_x, test_y)`.
  """
  name = ""

  def __init__(self, config, *, data_dir: str, mesh=None):
    self.config, self.mesh, self.data_dir = config, mesh, data_dir
    self.block = config.evals[self.name]
    self.layer = self.block.get("layer", "pre_logits")
    self._splits = {}
    for part in ("train", "test"):
      split = self.block[f"{part}_split"]
      self._splits[part] = (split, self.block.get(f"max_{part}", 0))
    self.train_images, self.train_labels = self._images("train")
    self.test_images, self.test_labels = self._images("test")

  def _images(self, part: str):
    split, cap = self._splits[part]
    return _load(self.block.dataset, split, self.data_dir,
                 self.config.input.image_size, self.config.input.channels, cap,
                 self.config.seed)

  def features(self, variables) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) features of the backbone inside the whole model's variables."""
    variables = dict(variables)
    params = variables.pop("params")
    backbone = features_lib.encoder_variables(params, variables)
    out = []
    for part, images in (("train", self.train_images), ("test", self.test_images)):
      key = (self.block.dataset, *self._splits[part], self.layer)
      out.append(_cached({"params": params}, key, lambda images=images: (
          protocol.check_finite(features_lib.extract(
              backbone, images, self.config, layer=self.layer,
              batch_size=self.block.get("batch_size", 256), mesh=self.mesh),
              f"{self.block.dataset}/{part}/{self.layer}"))))
    return out[0], out[1]

  def evaluate(self, train_x, train_y, test_x, test_y) -> dict[str, float]:
    raise NotImplementedError

  def run(self, variables) -> dict[str, float]:
    train_x, test_x = self.features(variables)
    return self.evaluate(train_x, self.train_labels, test_x, self.test_labels)
