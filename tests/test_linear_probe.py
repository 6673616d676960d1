"""The linear probe: correct optimum, L2 chosen without test labels."""
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from tandem.transfer import linear_probe


def _data(seed=0):
  x, y = make_classification(n_samples=1500, n_features=20, n_informative=10,
                             n_classes=4, class_sep=2.0, random_state=seed)
  return x[:1000].astype(np.float32), y[:1000], x[1000:].astype(np.float32), y[1000:]


def test_fit_matches_sklearn_optimum():
  x, y, _, _ = _data()
  l2 = 1e-2
  (w, b), _ = linear_probe.fit_logistic_regression(x, y, 4, l2, max_iter=300)
  # sklearn minimises 0.5‖W‖² + C Σ CE; ours mean CE + l2‖W‖²: C = 1 / (2 l2 N).
  ref = LogisticRegression(C=1 / (2 * l2 * len(x)), tol=1e-10, max_iter=5000).fit(x, y)
  np.testing.assert_allclose(np.asarray(w), ref.coef_.T, atol=2e-3)
  np.testing.assert_allclose(np.asarray(b) - np.mean(b),
                             ref.intercept_ - ref.intercept_.mean(), atol=2e-3)


def test_zero_weight_examples_are_left_out():
  x, y, _, _ = _data()
  weights = np.zeros(len(x), np.float32)
  weights[:600] = 1
  fit = lambda *a, **k: linear_probe.fit_logistic_regression(*a, max_iter=300, **k)[0]
  w1, b1 = fit(x, y, 4, 1e-3, weights=weights)
  w2, b2 = fit(x[:600], y[:600], 4, 1e-3)
  w3, _ = fit(x, y, 4, 1e-3)
  np.testing.assert_allclose(w1, w2, atol=1e-3)
  np.testing.assert_allclose(b1, b2, atol=1e-3)
  assert np.abs(np.asarray(w3) - np.asarray(w2)).max() > 1e-2  # The subset matters.


def test_model_selection_never_sees_test_labels():
  x, y, xt, yt = _data()
  a = linear_probe.linear_probe(x, y, xt, yt, num_val=200)
  shuffled = np.random.default_rng(0).permutation(yt)
  b = linear_probe.linear_probe(x, y, xt, shuffled, num_val=200)
  assert a["l2"] == b["l2"] and a["val_top1"] == b["val_top1"]
  assert a["test_top1"] > 0.7 > b["test_top1"]
  sk = LogisticRegression(max_iter=2000).fit(x, y).score(xt, yt)
  assert abs(a["test_top1"] - sk) < 0.03
