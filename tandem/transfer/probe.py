"""Linear probe: multinomial logistic regression on frozen features.

Protocol (docs/PROTOCOLS.md): features are standardised with trainval's mean/std;
the L2 strength is chosen from `l2_grid` by fitting trainval with the val examples
weighted 0 and scoring val (largest L2 first, each fit warm-started from the
previous solution; ties go to the larger L2); the model is then refit on trainval
with that L2, from its sweep solution, and scored once on test (top-1). Inside
pretraining val is a seeded random `num_val` examples of the training split
(`TaskData.carved`); in the suite it is VTAB's val200. The test split is never read
before the choice is made. Solver: `tandem/transfer/lbfgs.py`.
"""
from __future__ import annotations

import numpy as np

from tandem.transfer import lbfgs
from tandem.transfer import protocol
from tandem.transfer import results

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def evaluate_task(data: protocol.TaskData, settings, model=None) -> list[dict]:
  """The linear probe's records on one task. Settings: `layer` (default pre_logits),
  `l2_grid`, `max_iter`, `seed` (the solver's row draws), `prefixes`: also probe
  the first m dimensions of the layer for each m (Matryoshka representations; the
  records' layer is "LAYER[:m]")."""
  del model  # Features come through `data`.
  layer = settings.get("layer", "pre_logits")
  return [_probe(data, settings)[0]] + [
      _probe(data, {**settings, "layer": f"{layer}[:{int(m)}]"})[0]
      for m in settings.get("prefixes", ()) or ()]


def _probe(data: protocol.TaskData, settings
           ) -> tuple[dict, results.LinearClassifier, np.ndarray]:
  """(record, classifier, test predictions) of `evaluate_task`."""
  layer = settings.get("layer", "pre_logits")
  l2_grid = tuple(settings.get("l2_grid", DEFAULT_L2_GRID))
  max_iter = int(settings.get("max_iter", lbfgs.DEFAULT_MAX_ITER))
  seed = int(settings.get("seed", 0))
  k = data.num_classes
  with data.selection():
    x, y, val = data.features("trainval", layer), data.trainval.labels, data.val_index
    if not len(val):
      raise ValueError(f"Task {data.name}: the linear probe needs a val split to "
                       "choose its L2 strength on (set num_val).")
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    weights = np.ones(len(x), np.float32)
    weights[val] = 0.0  # The sweep never fits on the validation examples.
    device = lbfgs.device_data(x, y, k)  # Shared by all the fits.
    scores, solutions, params = {}, {}, None
    for l2 in sorted(l2_grid, reverse=True):
      params, _ = lbfgs.solve(device, k, l2, params, max_iter, weights,
                              lbfgs.DEFAULT_TOL, seed)
      scores[float(l2)] = lbfgs.accuracy(params, x[val], y[val])
      solutions[float(l2)] = params
    best = max(scores, key=lambda l2: (scores[l2], l2))
    params, iters = lbfgs.solve(device, k, best, solutions[best], max_iter, None,
                                lbfgs.DEFAULT_TOL, seed)
    train_top1 = lbfgs.accuracy(params, x, y)
  classifier = results.LinearClassifier(*(np.asarray(p, np.float32) for p in params),
                                        mean=mean, std=std)
  predictions = classifier.predict(data.features("test", layer))
  return {"evaluator": "linear_probe", "metric": "test_top1", "layer": layer,
          "value": float(np.mean(predictions == data.test.labels)), "l2": best,
          "val_top1": scores[best], "train_top1": train_top1, "iterations": iters,
          "protocol": (f"multinomial logistic regression on standardised features; "
                       f"L2 from {sorted(l2_grid)} chosen on {len(val)} val "
                       f"examples, refit on train+val; test top-1")
          }, classifier, predictions


def linear_probe(train_x, train_y, test_x, test_y, *, num_val: int = 10000,
                 l2_grid=DEFAULT_L2_GRID, seed: int = 0,
                 max_iter: int = lbfgs.DEFAULT_MAX_ITER) -> results.Result:
  """Linear probe of features given as arrays, with L2 chosen on `num_val`
  examples carved from train (seeded), as `evaluate_task` does it: a
  `tandem.transfer.Result` with the test top-1 and predictions (setting
  `linear_probe`), the choices in `details` (l2, val_top1, train_top1,
  iterations) and the fitted `classifier` (applies to raw features)."""
  train_x = protocol.check_finite(np.asarray(train_x, np.float32),
                                  "linear_probe: train features")
  test_x = protocol.check_finite(np.asarray(test_x, np.float32),
                                 "linear_probe: test features")
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  if not 0 < num_val < len(train_y):
    raise ValueError(f"num_val={num_val} must be in (0, {len(train_y)}).")
  data = protocol.TaskData.carved(
      "linear_probe", int(max(train_y.max(), test_y.max())) + 1,
      protocol.Split("train", train_x, train_y),
      protocol.Split("test", test_x, test_y), num_val=num_val, seed=seed,
      extract=lambda x, layer: x)  # The "images" are the features.
  record, classifier, predictions = _probe(data, dict(
      l2_grid=l2_grid, seed=seed, max_iter=max_iter, layer="features"))
  return results.Result(
      "linear_probe", {"linear_probe": record["value"]},
      {"linear_probe": predictions}, test_y, data.num_classes,
      {"linear_probe": {k: record[k] for k in (
          "train_top1", "val_top1", "l2", "iterations", "protocol")}},
      classifier=classifier)
