"""Few-shot ridge: big_vision's bias column on unbalanced data, and the periodic
evaluator's mean ± std over seeds. NumPy-sized; the suite-level few-shot tests live
in test_transfer.py."""
import numpy as np
import pytest

from tandem.transfer import protocol
from tandem.transfer import report
from tandem.transfer import ridge as fewshot

# google-research/big_vision, big_vision/evaluators/fewshot_lsr.py: BIAS_CONSTANT.
BIG_VISION_BIAS = 100.0


def _unbalanced(n, dim, seed, prior=(0.7, 0.2, 0.1)):
  """Weakly separated classes with a skewed prior: the bias carries real signal."""
  rng = np.random.default_rng(seed)
  y = rng.choice(len(prior), n, p=prior)
  centres = np.eye(len(prior), dim) * 1.0
  return centres[y] + rng.normal(size=(n, dim)), y


def _ridge(x, y, num_classes, l2, bias):
  """big_vision's `_precompute_cache` + `_eig_fewshot_acc_fn`, by np.linalg.solve."""
  mean, std = x.mean(0), x.std(0) + 1e-5
  prep = lambda a: np.concatenate([(a - mean) / std, np.full((len(a), 1), bias)], 1)
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  w = np.linalg.solve(prep(x).T @ prep(x) + l2 * np.eye(x.shape[1] + 1),
                      prep(x).T @ targets)
  return w, lambda a: np.argmax(prep(a) @ w, 1)


@pytest.mark.parametrize("n,dim", [(200, 4), (30, 64)])  # Primal and dual solutions.
def test_bias_column_is_big_visions_almost_unregularised_constant(n, dim):
  x, y = _unbalanced(n, dim, 0)
  tx, ty = _unbalanced(2000, dim, 1)
  solver = fewshot.RidgeSolver(x, y, 3)
  targets = 2.0 * np.eye(3)[y] - 1.0
  for l2 in (2.0 ** 10, 2.0 ** 15):
    w, predict = _ridge(x, y, 3, l2, BIG_VISION_BIAS)
    np.testing.assert_allclose(solver.weights(l2), w, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(solver.predict(tx, l2), predict(tx))
  # The L2 sweep's shortcut (project once, then one small product per L2) scores
  # like predicting at each L2.
  grid = [2.0 ** k for k in range(-6, 21)]
  assert solver.accuracies(tx, ty, grid) == {l2: solver.accuracy(tx, ty, l2)
                                            for l2 in grid}
  # Almost unregularised: with centred features the intercept of unpenalised least
  # squares is the targets' mean; at big_vision's λ = 2^10 we are within 1% of it.
  intercept = BIG_VISION_BIAS * solver.weights(2.0 ** 10)[-1]
  np.testing.assert_allclose(intercept, targets.mean(0), rtol=0.01)
  # A bias column of 1 (penalised like any weight) shrinks the intercept towards 0
  # and changes the answer: this case discriminates the two constructions.
  w_one, predict_one = _ridge(x, y, 3, 2.0 ** 15, 1.0)
  assert np.all(np.abs(w_one[-1]) < 0.2 * np.abs(targets.mean(0)))
  changed = np.mean(predict_one(tx) != solver.predict(tx, 2.0 ** 15))
  assert changed > 0.05, changed


def test_bias_column_cannot_change_balanced_predictions():
  """Whitening centres the columns and every class has s examples, so the bias is
  the same for every class: the constant is irrelevant to the few-shot protocol."""
  x, y = _unbalanced(300, 16, 2, prior=(1 / 3,) * 3)
  tx, _ = _unbalanced(500, 16, 3)
  idx = fewshot.draw_shots(y, 10, 3, seed=0)
  solver = fewshot.RidgeSolver(x[idx], y[idx], 3)
  bias = BIG_VISION_BIAS * solver.weights(2.0 ** 10)[-1]
  np.testing.assert_allclose(bias, bias[0], rtol=1e-9)
  for l2 in (1.0, 2.0 ** 10, 2.0 ** 20):
    np.testing.assert_array_equal(solver.predict(tx, l2),
                                  _ridge(x[idx], y[idx], 3, l2, 1.0)[1](tx))


def test_periodic_evaluator_reports_every_seed_and_mean_std_over_seeds():
  x, y = _unbalanced(900, 8, 4, prior=(0.25,) * 4)
  x, y, tx, ty = x[:600], y[:600], x[600:], y[600:]
  shots, seeds = (1, 5), (0, 1, 2)
  # As inside pretraining: the task's records, as named metrics.
  data = protocol.TaskData.carved(
      "toy", 4, protocol.Split("train", x, y), protocol.Split("test", tx, ty),
      num_val=0, seed=0, extract=lambda features, layer: features)
  metrics = report.metrics(fewshot.evaluate_task(
      data, {"layer": "pre_logits", "shots": shots, "seeds": seeds}))
  expected = set()
  for s in shots:
    # Every seed on its own: a separate call that knows no other seed.
    per_seed = [fewshot.fewshot(x, y, tx, ty, shots=(s,), seeds=(seed,)).accuracy
                for seed in seeds]
    assert len(set(per_seed)) > 1, per_seed  # Seeds differ, so std is not trivially 0.
    name = f"fewshot_{s}shot/pre_logits/test_top1"
    for seed, top1 in zip(seeds, per_seed):
      assert metrics[f"{name}_seed{seed}"] == pytest.approx(top1)
    assert metrics[f"{name}_mean"] == pytest.approx(np.mean(per_seed))
    assert metrics[f"{name}_std"] == pytest.approx(np.std(per_seed))  # ddof=0
    assert metrics[f"{name}_std"] > 0
    expected |= {f"{name}_mean", f"{name}_std", *(f"{name}_seed{i}" for i in seeds)}
  assert set(metrics) == expected
