"""The linear probe: correct optimum, L2 chosen without test labels."""
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from tandem.transfer import lbfgs
from tandem.transfer import probe


def _data(seed=0):
  x, y = make_classification(n_samples=1500, n_features=20, n_informative=10,
                             n_classes=4, class_sep=2.0, random_state=seed)
  return x[:1000].astype(np.float32), y[:1000], x[1000:].astype(np.float32), y[1000:]


def test_fit_matches_sklearn_optimum():
  x, y, _, _ = _data()
  l2 = 1e-2
  (w, b), _ = lbfgs.fit_logistic_regression(x, y, 4, l2, max_iter=300)
  # sklearn minimises 0.5‖W‖² + C Σ CE; ours mean CE + l2‖W‖²: C = 1 / (2 l2 N).
  ref = LogisticRegression(C=1 / (2 * l2 * len(x)), tol=1e-10, max_iter=5000).fit(x, y)
  np.testing.assert_allclose(np.asarray(w), ref.coef_.T, atol=2e-3)
  np.testing.assert_allclose(np.asarray(b) - np.mean(b),
                             ref.intercept_ - ref.intercept_.mean(), atol=2e-3)


def test_zero_weight_examples_are_left_out():
  x, y, _, _ = _data()
  weights = np.zeros(len(x), np.float32)
  weights[:600] = 1
  fit = lambda *a, **k: lbfgs.fit_logistic_regression(*a, max_iter=300, **k)[0]
  w1, b1 = fit(x, y, 4, 1e-3, weights=weights)
  w2, b2 = fit(x[:600], y[:600], 4, 1e-3)
  w3, _ = fit(x, y, 4, 1e-3)
  np.testing.assert_allclose(w1, w2, atol=1e-3)
  np.testing.assert_allclose(b1, b2, atol=1e-3)
  assert np.abs(np.asarray(w3) - np.asarray(w2)).max() > 1e-2  # The subset matters.


def test_model_selection_never_sees_test_labels():
  x, y, xt, yt = _data()
  a = probe.linear_probe(x, y, xt, yt, num_val=200)
  shuffled = np.random.default_rng(0).permutation(yt)
  b = probe.linear_probe(x, y, xt, shuffled, num_val=200)
  chosen_a, chosen_b = a.details["linear_probe"], b.details["linear_probe"]
  assert chosen_a["l2"] == chosen_b["l2"] and chosen_a["val_top1"] == chosen_b["val_top1"]
  assert a.accuracy > 0.7 > b.accuracy
  sk = LogisticRegression(max_iter=2000).fit(x, y).score(xt, yt)
  assert abs(a.accuracy - sk) < 0.03


def _larger_data(seed=1):
  """Enough rows that the solver samples: the warm-up subsample and each class's
  curvature rows (`_BLOCK_ROWS`) are fewer than N."""
  x, y = make_classification(n_samples=6000, n_features=16, n_informative=8,
                             n_classes=5, class_sep=1.0, random_state=seed)
  x = (x - x.mean(0)) / x.std(0)
  return x.astype(np.float32), y


def _sklearn_optimum(x, y, l2):
  ref = LogisticRegression(C=1 / (2 * l2 * len(x)), tol=1e-10, max_iter=5000).fit(x, y)
  return ref.coef_.T, ref.intercept_ - ref.intercept_.mean()


def test_sampled_curvature_blocks_reach_the_optimum():
  x, y = _larger_data()
  assert len(x) > max(lbfgs._BLOCK_ROWS, lbfgs._MIN_WARMUP_ROWS)
  l2 = 1e-4
  (w, b), iters = lbfgs.fit_logistic_regression(x, y, 5, l2, tol=1e-6)
  ref_w, ref_b = _sklearn_optimum(x, y, l2)
  np.testing.assert_allclose(np.asarray(w), ref_w, atol=2e-3)
  np.testing.assert_allclose(np.asarray(b), ref_b, atol=2e-3)
  assert iters <= 12  # 6 here; ~12 with one block shared by all classes.


def test_accelerator_layout_and_other_preconditioners_reach_the_same_optimum(
    monkeypatch):
  """X kept only as [D, N] (the layout used off CPU); one curvature block shared
  by all classes, and none (used where per-class blocks would cost too much)."""
  x, y = _larger_data()
  l2 = 1e-4
  ref_w, ref_b = _sklearn_optimum(x, y, l2)
  xt, _, y1 = lbfgs.device_data(x, y, 5)
  init = (np.zeros((16, 5), np.float32), np.zeros(5, np.float32))
  (w, b), _ = lbfgs.solve((xt, None, y1), 5, l2, init, 300, None, 1e-6)
  np.testing.assert_allclose(np.asarray(w), ref_w, atol=2e-3)
  np.testing.assert_allclose(np.asarray(b), ref_b, atol=2e-3)
  monkeypatch.setattr(lbfgs, "_MAX_BLOCK_FLOATS", 0)  # -> "shared"
  (w, b), _ = lbfgs.fit_logistic_regression(x, y, 5, l2, init=init, tol=1e-6)
  np.testing.assert_allclose(np.asarray(w), ref_w, atol=2e-3)
  np.testing.assert_allclose(np.asarray(b), ref_b, atol=2e-3)
  # No blocks (when building them would cost more than it saves), from cold.
  monkeypatch.setattr(lbfgs, "_blocks_kind", lambda *args: "none")
  (w, b), _ = lbfgs.fit_logistic_regression(x, y, 5, l2, tol=1e-6)
  np.testing.assert_allclose(np.asarray(w), ref_w, atol=2e-3)
  np.testing.assert_allclose(np.asarray(b), ref_b, atol=2e-3)
