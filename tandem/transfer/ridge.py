"""Few-shot linear transfer by closed-form ridge regression (big_vision's fewshot_lsr).

Follows google-research/big_vision, big_vision/evaluators/fewshot_lsr.py
(`_precompute_cache`, `_eig_fewshot_acc_fn`), except where marked. For each number
of shots s and each seed:
1. Draw s examples per class from the training pool (seeded, without replacement).
   big_vision permutes each class once per seed and takes the first s, so its shot
   sets are nested; we draw every s independently.
2. Whiten with the few-shot set's own per-feature mean and std (+1e-5; test features
   with the same statistics) and append a constant column of `BIAS_CONSTANT` = 100
   (big_vision's BIAS_CONSTANT, "large so it's almost unregularized"): the bias is
   β = 100·w_bias, so the ridge penalty λ‖W‖² charges it λβ²/10⁴, 10⁴ times less
   than a feature weight of the same size. Targets: one-hot mapped to {-1, +1}.
   Whitening centres every column on the few-shot set, so the bias decouples from
   the feature weights; with s examples of every class it is the same for every
   class and cannot change a prediction (up to round-off). It matters for
   unbalanced sets (`RidgeSolver` on any labels), where it carries the class prior.
3. Solve ridge regression W = (XᵀX + λI)⁻¹ XᵀY through one eigendecomposition of XᵀX
   (or of XXᵀ when there are fewer examples than dimensions: W = Xᵀ(XXᵀ + λI)⁻¹Y), so
   every λ of the sweep costs two small matrix products.
4. Choose λ from `l2_grid` (2^-6 ... 2^20) on held-out TRAINING examples: the pool
   examples not drawn into the few-shot set (at most `num_heldout` of them, seeded).
   Ties go to the larger λ. Deviation: big_vision fixes λ = 2^10
   (big_vision/configs/common_fewshot.py: `l2_reg = 2.0 ** 10`, 3 seeds, shots
   1/5/10/25); we select it, never on test.
5. Predict the test set with the chosen λ; report top-1.
big_vision logs each seed separately (`..._{s}shot-seed-{seed}`); we report every
seed and the mean ± std (population std, ddof=0, as the suite runner's summary) over
seeds, with each seed's chosen λ.

Errors rather than wrong numbers: a class with fewer than s examples in the pool
raises `NotEnoughExamplesError`; so does a pool with nothing left to hold out.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tandem.transfer import protocol
from tandem.transfer import results

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_L2_GRID = tuple(float(2.0 ** k) for k in range(-6, 21))
DEFAULT_NUM_HELDOUT = 2000
# big_vision's BIAS_CONSTANT: the bias column's value, large so that the bias is
# almost unregularised by the ridge penalty.
BIAS_CONSTANT = 100.0


class NotEnoughExamplesError(ValueError):
  """The training pool cannot supply the requested shots (or a held-out set)."""


def _prepare(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  x = (x - mean) / std
  return np.concatenate([x, np.full((len(x), 1), BIAS_CONSTANT)], axis=1)


class RidgeSolver:
  """Eigendecomposition of one few-shot set; `weights(l2)` is then nearly free."""

  def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int):
    x = np.asarray(x, np.float64)
    self.mean = x.mean(axis=0, keepdims=True)
    self.std = x.std(axis=0, keepdims=True) + 1e-5
    x = _prepare(x, self.mean, self.std)
    targets = 2.0 * np.eye(num_classes)[np.asarray(y)] - 1.0
    if len(x) >= x.shape[1]:  # Primal: eigh of XᵀX [D+1, D+1].
      self.eigs, q = np.linalg.eigh(x.T @ x)
      self.rhs, self.lhs = q.T @ (x.T @ targets), q
    else:  # Dual: eigh of XXᵀ [N, N].
      self.eigs, q = np.linalg.eigh(x @ x.T)
      self.rhs, self.lhs = q.T @ targets, x.T @ q
    self.eigs = np.maximum(self.eigs, 0.0)  # Round-off can make zeros negative.

  def weights(self, l2: float) -> np.ndarray:
    """[D+1, C] ridge weights; the bias is BIAS_CONSTANT × the last row."""
    return self.lhs @ (self.rhs / (self.eigs + l2)[:, None])

  def predict(self, x: np.ndarray, l2: float) -> np.ndarray:
    scores = _prepare(np.asarray(x, np.float64), self.mean, self.std) @ self.weights(l2)
    return np.argmax(scores, axis=1)

  def accuracy(self, x: np.ndarray, y: np.ndarray, l2: float) -> float:
    return float(np.mean(self.predict(x, l2) == np.asarray(y)))

  def accuracies(self, x: np.ndarray, y: np.ndarray,
                 l2_grid: Sequence[float]) -> dict[float, float]:
    """{l2: accuracy} for every L2 of a sweep: `x` is whitened and projected on
    the eigenvectors once, so each L2 costs one [N, r] x [r, C] product."""
    projected = _prepare(np.asarray(x, np.float64), self.mean, self.std) @ self.lhs
    y = np.asarray(y)
    return {float(l2): float(np.mean(np.argmax(
        projected @ (self.rhs / (self.eigs + l2)[:, None]), axis=1) == y))
            for l2 in l2_grid}


def draw_shots(labels: np.ndarray, shots: int, num_classes: int,
               seed: int) -> np.ndarray:
  """Indices of `shots` random examples of every class (sorted by class)."""
  rng = np.random.default_rng(seed)
  counts = np.bincount(labels, minlength=num_classes)
  short = [c for c in range(num_classes) if counts[c] < shots]
  if short:
    raise NotEnoughExamplesError(
        f"{shots}-shot needs {shots} training examples of every class; classes "
        f"{short[:10]}{' ...' if len(short) > 10 else ''} have only "
        f"{sorted(set(int(counts[c]) for c in short))[:5]} example(s).")
  return np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False)
                         for c in range(num_classes)])


def select(train_x, train_y, num_classes: int, shots: int, seed: int, *,
           l2_grid: Sequence[float] = DEFAULT_L2_GRID,
           num_heldout: int = DEFAULT_NUM_HELDOUT) -> dict:
  """Few-shot set of one seed, its solver and the λ chosen on held-out train data."""
  train_x, train_y = np.asarray(train_x), np.asarray(train_y)
  chosen = draw_shots(train_y, shots, num_classes, seed)
  unchosen = np.ones(len(train_y), bool)
  unchosen[chosen] = False
  rest = np.flatnonzero(unchosen)
  if not len(rest):
    raise NotEnoughExamplesError(
        f"{shots}-shot uses all {len(train_y)} training examples; none is left to "
        "choose the L2 strength on.")
  rng = np.random.default_rng([seed, 1])
  heldout = np.sort(rng.permutation(rest)[:num_heldout])
  solver = RidgeSolver(train_x[chosen], train_y[chosen], num_classes)
  scores = solver.accuracies(train_x[heldout], train_y[heldout], l2_grid)
  best = max(scores, key=lambda l2: (scores[l2], l2))
  return {"solver": solver, "l2": best, "heldout_top1": scores[best],
          "num_heldout": len(heldout)}


def fewshot(train_x, train_y, test_x, test_y, *, shots: Sequence[int] = DEFAULT_SHOTS,
            seeds: Sequence[int] = DEFAULT_SEEDS,
            l2_grid: Sequence[float] = DEFAULT_L2_GRID,
            num_heldout: int = DEFAULT_NUM_HELDOUT,
            num_classes: int | None = None) -> results.Result:
  """Few-shot ridge of features given as arrays, for every number of shots: a
  `tandem.transfer.Result` with settings `fewshot_{s}shot`, whose top-1 is the
  mean over seeds and whose predictions are [seeds, N_test]; `details` holds the
  shots, the mean and std over seeds, and per seed the top-1, chosen L2 and
  held-out top-1. A value of `shots` that the training data cannot supply raises
  `NotEnoughExamplesError`.
  """
  protocol.check_finite(np.asarray(train_x), "fewshot: train features")
  protocol.check_finite(np.asarray(test_x), "fewshot: test features")
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  if num_classes is None:
    num_classes = int(max(train_y.max(), test_y.max())) + 1
  selected = {s: [select(train_x, train_y, num_classes, s, seed, l2_grid=l2_grid,
                         num_heldout=num_heldout) for seed in seeds]
              for s in shots}  # All selection happens before test is looked at.
  predictions, details = {}, {}
  for s, fits in selected.items():
    name = f"fewshot_{s}shot"
    predictions[name] = np.stack([fit["solver"].predict(test_x, fit["l2"])
                                  for fit in fits])
    details[name] = {"shots": s, "seeds": list(seeds), **summarise(
        [float(np.mean(p == test_y)) for p in predictions[name]], fits)}
  return results.Result("fewshot", {n: d["mean"] for n, d in details.items()},
                        predictions, test_y, num_classes, details)


def summarise(top1: list[float], fits: list[dict]) -> dict:
  return {"mean": float(np.mean(top1)), "std": float(np.std(top1)),
          "top1": [float(a) for a in top1], "l2": [fit["l2"] for fit in fits],
          "heldout_top1": [fit["heldout_top1"] for fit in fits]}


PROTOCOL = ("closed-form ridge (big_vision fewshot_lsr): whitened with the few-shot "
            f"set's mean/std, bias column of {BIAS_CONSTANT:g}, ±1 targets; L2 from "
            "2^-6..2^20 chosen on held-out train examples; mean ± std over seeds")


def evaluate_task(data, block, model=None) -> list[dict]:
  """Suite protocol: shots drawn from the task's train+val (1000 in VTAB-1k), λ
  chosen on the rest of train+val, test scored once per seed."""
  layer = block.get("layer", "pre_logits")
  shots = tuple(block.get("shots", DEFAULT_SHOTS))
  seeds = tuple(block.get("seeds", DEFAULT_SEEDS))
  records = []
  for s in shots:
    name = f"fewshot_{s}shot"
    try:
      with data.selection():
        x, y = data.features("trainval", layer), data.trainval.labels
        fits = [select(x, y, data.num_classes, s, seed,
                       num_heldout=block.get("num_heldout", DEFAULT_NUM_HELDOUT))
                for seed in seeds]
    except NotEnoughExamplesError as e:
      records.append({"evaluator": name, "skipped": str(e)})
      continue
    test_x, test_y = data.features("test", layer), data.test.labels
    for seed, fit in zip(seeds, fits):
      records.append({
          "evaluator": name, "metric": "test_top1", "seed": seed, "layer": layer,
          "value": fit["solver"].accuracy(test_x, test_y, fit["l2"]),
          "l2": fit["l2"], "heldout_top1": fit["heldout_top1"], "shots": s,
          "protocol": PROTOCOL})
  return records
