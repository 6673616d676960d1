"""Representation-quality scores (tandem/analysis/representation.py) against direct
NumPy transcriptions of the papers' formulas and on features whose answer is known:
isotropic vs rank-1 (RankMe), a planted power-law spectrum (α-ReQ), collapsed vs
Gaussian (collapse stats), class-collapsed (NC1), separable vs random (LogME,
H-score); and malformed input is refused with a message."""
import itertools

import numpy as np
import pytest

from tandem.analysis import representation as rep


def _rng(seed=0):
  return np.random.default_rng(seed)


def _separable(rng, n=300, d=16, num_classes=4, noise=0.3):
  """Features whose class is the direction of a distinct one-hot mean, + noise."""
  labels = np.arange(n) % num_classes
  means = 3.0 * np.eye(num_classes, d)
  return means[labels] + noise * rng.normal(size=(n, d)), labels


# ----------------------------------------------------------------- RankMe


def test_rankme_isotropic_gaussian_is_about_full_rank():
  x = _rng().normal(size=(4000, 64))
  assert 0.9 * 64 < rep.rankme(x) <= 64


def test_rankme_rank_one_is_about_one():
  rng = _rng()
  x = np.outer(rng.normal(size=500), rng.normal(size=64))
  assert 1.0 <= rep.rankme(x) < 1.1


def test_rankme_matches_direct_formula():
  x = _rng().normal(size=(200, 32)) * np.linspace(0.1, 3, 32)
  s = np.linalg.svd(x, compute_uv=False)
  p = s / np.sum(np.abs(s)) + 1e-7
  expected = np.exp(-np.sum(p * np.log(p)))
  np.testing.assert_allclose(rep.rankme(x), expected, rtol=1e-12)
  np.testing.assert_allclose(rep.rankme(x.astype(np.float32)), expected,
                             rtol=1e-5)


# ------------------------------------------------------------------ α-ReQ


def test_eigenspectrum_is_descending_covariance_eigenvalues():
  x = _rng().normal(size=(100, 8)) * np.arange(1, 9)
  expected = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
  np.testing.assert_allclose(rep.eigenspectrum(x), expected, rtol=1e-10)


def test_alpha_req_recovers_planted_power_law_exactly():
  """Features with covariance eigenvalues exactly k^-1.5: centred orthonormal
  columns scaled by sqrt((N - 1) λ_k), in a random orthonormal basis."""
  rng = _rng()
  n, d, a = 1000, 64, 1.5
  q, _ = np.linalg.qr(rng.normal(size=(n, d + 1)))
  ones = np.ones((n, 1)) / np.sqrt(n)
  u = q - ones @ (ones.T @ q)  # Orthogonal to the constant vector: centred.
  u, _ = np.linalg.qr(u[:, :d])
  basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
  lam = np.arange(1, d + 1) ** -a
  x = u * np.sqrt((n - 1) * lam) @ basis.T
  np.testing.assert_allclose(rep.eigenspectrum(x), lam, rtol=1e-8)
  assert rep.alpha_req(x) == pytest.approx(a, abs=1e-6)
  assert rep.alpha_req(x, fit_range=(3, 40)) == pytest.approx(a, abs=1e-6)


def test_alpha_req_recovers_power_law_of_sampled_gaussian_features():
  lam = np.arange(1, 65) ** -1.5
  x = _rng().normal(size=(4000, 64)) * np.sqrt(lam)
  assert rep.alpha_req(x) == pytest.approx(1.5, abs=0.1)


def test_alpha_req_ignores_numerical_zeros_and_is_nan_without_a_spectrum():
  rng = _rng()
  x = rng.normal(size=(10, 32))  # Rank 9 after centring: 23 numerical zeros.
  lam = rep.eigenspectrum(x)
  k = np.arange(1, 10)
  slope, _ = np.polyfit(np.log(k), np.log(lam[:9]), 1)
  assert rep.alpha_req(x) == pytest.approx(-slope, rel=1e-10)
  assert np.isnan(rep.alpha_req(np.outer(rng.normal(size=50), np.ones(8))))


# ----------------------------------------------------- alignment / uniformity


def _normalize(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_alignment_matches_loop_and_is_zero_for_identical_views():
  rng = _rng()
  z1, z2 = rng.normal(size=(37, 5)), rng.normal(size=(37, 5))
  a, b = _normalize(z1), _normalize(z2)
  for alpha in (1, 2, 3.5):
    expected = np.mean([np.linalg.norm(a[i] - b[i]) ** alpha
                        for i in range(len(a))])
    assert rep.alignment(z1, z2, alpha=alpha) == pytest.approx(expected,
                                                               rel=1e-12)
  assert rep.alignment(z1, 3.0 * z1) == pytest.approx(0.0, abs=1e-24)
  assert rep.alignment(z1, -z1) == pytest.approx(4.0)  # Antipodal: ‖2z‖² = 4.


@pytest.mark.parametrize("n,block_size", [(2, 1), (7, 3), (23, 5), (23, 22),
                                          (23, 23), (23, 1000), (40, 8)])
def test_uniformity_matches_double_loop_across_block_boundaries(n, block_size):
  z = _rng(n).normal(size=(n, 6))
  x = _normalize(z)
  terms = [np.exp(-2 * np.sum((x[i] - x[j]) ** 2))
           for i, j in itertools.combinations(range(n), 2)]
  expected = np.log(np.mean(terms))
  assert rep.uniformity(z, block_size=block_size) == pytest.approx(expected,
                                                                   rel=1e-12)


def test_uniformity_matches_full_pairwise_reference_for_several_t():
  z = _rng().normal(size=(301, 16))
  x = _normalize(z)
  sq = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
  upper = sq[np.triu_indices(len(x), k=1)]
  for t in (0.5, 2, 5):
    expected = np.log(np.mean(np.exp(-t * upper)))
    assert rep.uniformity(z, t=t, block_size=64) == pytest.approx(expected,
                                                                  rel=1e-10)
  # A large t would underflow a plain sum of exponentials; log-space does not.
  shift = 500 * upper.min()
  expected = np.log(np.mean(np.exp(-500 * upper + shift))) - shift
  assert rep.uniformity(z, t=500, block_size=64) == pytest.approx(expected,
                                                                  rel=1e-10)


def test_uniformity_is_zero_for_identical_rows():
  assert rep.uniformity(np.tile([[1.0, 2.0, 3.0]], (9, 1))) == pytest.approx(
      0.0, abs=1e-12)


# ----------------------------------------------------------- collapse stats


def test_collapse_stats_of_collapsed_features():
  """All rows equal plus tiny noise; "dead" is relative to the liveliest
  dimension, so it takes a few live dimensions to make the others dead."""
  rng = _rng()
  collapsed = np.tile(rng.normal(size=(1, 56)), (500, 1)) + 1e-7 * rng.normal(
      size=(500, 56))
  stats = rep.collapse_stats(collapsed)
  assert stats["normalized_std"] < 1e-5
  assert stats["std_mean"] < 1e-6
  assert stats["rankme"] < 1.1
  x = np.concatenate([rng.normal(size=(500, 8)), collapsed], axis=1)
  stats = rep.collapse_stats(x)
  assert stats["dead_fraction"] == pytest.approx(56 / 64)
  assert stats["std_min"] < 1e-6


def test_collapse_stats_of_gaussian_features():
  x = _rng().normal(size=(4000, 64))
  stats = rep.collapse_stats(x)
  assert stats["normalized_std"] == pytest.approx(1.0, abs=0.02)
  assert stats["std_mean"] == pytest.approx(1.0, abs=0.02)
  assert stats["dead_fraction"] == 0.0
  assert stats["rankme"] == rep.rankme(x)
  # Every constant dimension is dead.
  assert rep.collapse_stats(np.ones((5, 3)))["dead_fraction"] == 1.0


def test_label_free_metrics_collects_every_score():
  rng = _rng()
  x = rng.normal(size=(200, 8))
  z1, z2 = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
  metrics = rep.label_free_metrics(x, views=(z1, z2))
  assert metrics == {**rep.collapse_stats(x),
                     "alpha_req": rep.alpha_req(x),
                     "uniformity": rep.uniformity(x),
                     "alignment": rep.alignment(z1, z2)}
  assert "alignment" not in rep.label_free_metrics(x)


# -------------------------------------------------------------------- NC1


def _nc1_reference(x, y):
  classes = np.unique(y)
  means = np.stack([x[y == c].mean(0) for c in classes])
  sigma_w = sum((x[y == c] - means[i]).T @ (x[y == c] - means[i])
                for i, c in enumerate(classes)) / len(x)
  centred = means - x.mean(0)
  sigma_b = centred.T @ centred / len(classes)
  return np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / len(classes)


def test_nc1_is_zero_for_collapsed_classes():
  rng = _rng()
  means = rng.normal(size=(5, 12))
  labels = rng.integers(0, 5, size=100)
  labels[:5] = np.arange(5)
  assert rep.nc1(means[labels], labels) == pytest.approx(0.0, abs=1e-20)


def test_nc1_matches_reference_on_random_data():
  rng = _rng()
  x = rng.normal(size=(150, 10)) + 0.5 * rng.normal(size=(1, 10))
  labels = rng.integers(0, 4, size=150) * 3 + 1  # Not contiguous, unbalanced.
  assert rep.nc1(x, labels) == pytest.approx(_nc1_reference(x, labels),
                                             rel=1e-9)
  x, labels = _separable(rng)
  assert rep.nc1(x, labels) == pytest.approx(_nc1_reference(x, labels),
                                             rel=1e-9)
  assert rep.nc1(x, labels) < 0.1 < rep.nc1(rng.normal(size=x.shape), labels)


# ------------------------------------------------------------------ LogME


def _logme_naive(f, labels, max_iter=100, tol=1e-3):
  """You et al. 2021, Algorithm 1, naive branch: A and m by direct solves; the
  updates' denominators get the authors' code's + 1e-5."""
  n, d = f.shape
  sigma = np.linalg.eigvalsh(f.T @ f)
  evidences = []
  for k in np.unique(labels):
    y = (labels == k).astype(np.float64)

    def posterior(alpha, beta):
      a = alpha * np.eye(d) + beta * f.T @ f
      return a, beta * np.linalg.solve(a, f.T @ y)

    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
      lam = alpha / beta
      gamma = np.sum(beta * sigma / (alpha + beta * sigma))
      _, m = posterior(alpha, beta)
      alpha = gamma / (m @ m + 1e-5)
      beta = (n - gamma) / (np.sum((f @ m - y) ** 2) + 1e-5)
      if abs(alpha / beta - lam) / lam <= tol:
        break
    a, m = posterior(alpha, beta)
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha)
                - n / 2 * np.log(2 * np.pi)
                - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * (m @ m)
                - np.linalg.slogdet(a)[1] / 2)
    evidences.append(evidence / n)
  return np.mean(evidences)


@pytest.mark.parametrize("n,d", [(200, 16), (30, 48)])
def test_logme_matches_naive_fixed_point(n, d):
  rng = _rng(d)
  f = rng.normal(size=(n, d)) + 0.3
  labels = rng.integers(0, 3, size=n)
  labels[:3] = [0, 1, 2]
  np.testing.assert_allclose(rep.logme(f, labels), _logme_naive(f, labels),
                             rtol=1e-6)
  f, labels = _separable(rng, n=n, d=d, num_classes=3)
  np.testing.assert_allclose(rep.logme(f, labels), _logme_naive(f, labels),
                             rtol=1e-6)


def test_logme_prefers_separable_features():
  rng = _rng()
  x, labels = _separable(rng)
  assert rep.logme(x, labels) > rep.logme(rng.normal(size=x.shape), labels)


# ---------------------------------------------------------------- H-score


def _hscore_reference(f, labels):
  """Bao et al.'s code: tr(pinv(cov f) cov g), g = each sample's class mean."""
  g = np.zeros_like(f)
  for c in np.unique(labels):
    g[labels == c] = f[labels == c].mean(0)
  cov_f, cov_g = np.cov(f, rowvar=False), np.cov(g, rowvar=False)
  return np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ cov_g)


def test_hscore_matches_reference_and_prefers_separable_features():
  rng = _rng()
  f = rng.normal(size=(120, 9)) * np.arange(1, 10)
  labels = rng.integers(0, 5, size=120)
  assert rep.hscore(f, labels) == pytest.approx(_hscore_reference(f, labels),
                                                rel=1e-9)
  x, labels = _separable(rng)
  assert rep.hscore(x, labels) == pytest.approx(_hscore_reference(x, labels),
                                                rel=1e-9)
  assert rep.hscore(x, labels) > 2.5  # At most C - 1 = 3.
  assert rep.hscore(x, labels) > 10 * rep.hscore(rng.normal(size=x.shape),
                                                 labels)


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize("features,match", [
    (np.zeros(10), "2-D array"),
    (np.zeros((2, 3, 4)), "2-D array"),
    (np.zeros((1, 4)), "at least 2 samples"),
    (np.array([[0.0, 1.0], [np.nan, 2.0]]), "NaN"),
    (np.array([[0.0, 1.0], [np.inf, 2.0]]), "infinite"),
])
def test_malformed_features_are_refused(features, match):
  for fn in (rep.rankme, rep.eigenspectrum, rep.alpha_req, rep.uniformity,
             rep.collapse_stats, rep.label_free_metrics):
    with pytest.raises(ValueError, match=match):
      fn(features)
  if features.ndim == 2:
    with pytest.raises(ValueError, match=match):
      rep.alignment(features, features)
    labels = np.arange(len(features)) % 2
    for fn in (rep.nc1, rep.logme, rep.hscore):
      with pytest.raises(ValueError, match=match):
        fn(features, labels)


@pytest.mark.parametrize("labels,match", [
    (np.arange(9) % 2, r"shape \(10,\)"),
    (np.zeros((10, 1), int), r"shape \(10,\)"),
    (np.arange(10) % 2 + 0.5, "integers"),
    (np.zeros(10, int), "at least 2 classes"),
])
def test_malformed_labels_are_refused(labels, match):
  x = _rng().normal(size=(10, 3))
  for fn in (rep.nc1, rep.logme, rep.hscore):
    with pytest.raises(ValueError, match=match):
      fn(x, labels)


def test_mismatched_views_and_bad_arguments_are_refused():
  x = _rng().normal(size=(10, 3))
  with pytest.raises(ValueError, match="same shape"):
    rep.alignment(x, x[:9])
  with pytest.raises(ValueError, match="same shape"):
    rep.label_free_metrics(x, views=(x, x[:, :2]))
  with pytest.raises(ValueError, match="fit_range"):
    rep.alpha_req(x, fit_range=(2, 4))
  with pytest.raises(ValueError, match="zero eigenvalues"):
    rep.alpha_req(np.outer(x[:, 0], [1.0, 2.0, 3.0]), fit_range=(1, 3))
  with pytest.raises(ValueError, match="t must be positive"):
    rep.uniformity(x, t=0)


# ------------------------------------------------- As an evaluator in pretraining


def test_label_free_evaluator_scores_training_features_and_reads_no_label():
  """`label_free` (config.evals) logs `label_free_metrics` of the task's training
  features, subsampled (seeded) to `max_examples`; labels play no part."""
  from tandem.transfer import label_free, protocol, report  # pylint: disable=g-import-not-at-top
  images = _rng(2).integers(0, 255, (200, 4, 4, 1)).astype(np.uint8)
  extract = lambda x, layer: x.reshape(len(x), -1).astype(np.float32) / 255.0

  def task(labels):
    return protocol.TaskData.carved(
        "toy", 4, protocol.Split("train", images, labels),
        protocol.Split("test", images[:20], labels[:20]), num_val=0, seed=0,
        extract=extract)

  labels = np.arange(200) % 4
  data = task(labels)
  records = label_free.evaluate_task(data, {"max_examples": 100, "seed": 3})
  rows = np.sort(np.random.default_rng(3).choice(200, 100, replace=False))
  expected = rep.label_free_metrics(extract(images[rows], None))
  assert {r["metric"]: r["value"] for r in records} == pytest.approx(expected)
  assert all(r["num_examples"] == 100 for r in records)
  assert report.metrics(records)["label_free/pre_logits/rankme"] == pytest.approx(
      expected["rankme"])
  # Other labels, and the test split fenced off: the same scores.
  other = task(_rng(1).permutation(labels))
  with other.selection():
    again = label_free.evaluate_task(other, {"max_examples": 100, "seed": 3})
  assert [r["value"] for r in again] == [r["value"] for r in records]
  assert protocol.get_evaluator("label_free") is label_free
