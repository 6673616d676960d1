"""Linear CKA: its invariances, a NumPy reference through centred Grams
(tr(KHLH)), the feature-space and Gram forms, the unbiased HSIC against its formula
and its U-statistic, minibatch CKA against full-data CKA, and `cka_matrix`
(symmetric with a unit diagonal; features flattened, not pooled)."""
import itertools

import numpy as np
import pytest

from tandem.analysis import similarity


def reference_cka(x, y):
  """Kornblith et al. 2019, Eqs. 3-4: HSIC(K, L) = tr(K H L H) / (n-1)^2 of linear
  Grams, H = I - 11^T / n, normalised."""
  x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
  n = len(x)
  h = np.eye(n) - np.ones((n, n)) / n
  hsic = lambda k, l: np.trace(k @ h @ l @ h) / (n - 1) ** 2
  k, l = x @ x.T, y @ y.T
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def related(n, d, seed, noise=1.0):
  """Features x [n, d] and a noisy linear function of them y [n, d]."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  return x, x @ rng.normal(size=(d, d)) + noise * rng.normal(size=(n, d))


def orthogonal(d, seed):
  return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


@pytest.mark.parametrize("n,d", [(100, 8), (20, 50)])
def test_cka_of_a_representation_with_itself_is_one(n, d):
  x, _ = related(n, d, 0)
  np.testing.assert_allclose(similarity.linear_cka(x, x), 1.0, rtol=1e-12)


def test_invariant_to_orthogonal_maps_isotropic_scaling_and_offsets():
  x, y = related(200, 10, 1)
  cka = similarity.linear_cka(x, y)
  assert 0.1 < cka < 0.99
  transformed = 3.7 * x @ orthogonal(10, 2) + 5.0
  np.testing.assert_allclose(similarity.linear_cka(transformed, y), cka, rtol=1e-12)
  np.testing.assert_allclose(similarity.linear_cka(x, 0.01 * y @ orthogonal(10, 3)),
                             cka, rtol=1e-12)


def test_not_invariant_to_a_general_linear_map():
  x, y = related(200, 10, 1)
  stretch = np.diag(np.logspace(0, 2, 10)) @ orthogonal(10, 4)
  assert abs(similarity.linear_cka(x @ stretch, y) - similarity.linear_cka(x, y)) > 0.05


@pytest.mark.parametrize("n,d1,d2", [(200, 10, 6), (30, 100, 80), (40, 3, 500)])
def test_matches_the_gram_reference(n, d1, d2):
  rng = np.random.default_rng(5)
  x = rng.normal(size=(n, d1)) + 2.0
  y = np.tanh(x[:, :1] * rng.normal(size=(1, d2))) + rng.normal(size=(n, d2))
  np.testing.assert_allclose(similarity.linear_cka(x, y), reference_cka(x, y),
                             rtol=1e-10)


@pytest.mark.parametrize("n,d", [(200, 10), (30, 100)])
def test_feature_space_and_gram_forms_agree(n, d):
  x, y = related(n, d, 6)
  x, y = x - x.mean(0), y - y.mean(0)
  np.testing.assert_allclose(similarity._feature_form(x, y),
                             similarity._gram_form(x, y), rtol=1e-10)


def naive_hsic_unbiased(k, l):
  """Song et al. 2012's HSIC_1 written out with explicit ones vectors."""
  n = len(k)
  kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
  one = np.ones(n)
  return (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
          - 2.0 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3))


def u_statistic_hsic(k, l):
  """HSIC's U-statistic: the mean over distinct (i, j, q, r) of
  k_ij l_ij + k_ij l_qr - 2 k_ij l_iq, which HSIC_1 equals (Song et al. 2012)."""
  terms = [k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
           for i, j, q, r in itertools.permutations(range(len(k)), 4)]
  return np.mean(terms)


def test_unbiased_hsic_matches_its_formula_and_u_statistic():
  x, y = related(8, 3, 7)
  k, l = x @ x.T, np.exp(-np.sum((y[:, None] - y[None]) ** 2, -1) / 4)  # RBF for l.
  hsic = similarity.hsic_unbiased(k, l)
  np.testing.assert_allclose(hsic, naive_hsic_unbiased(k, l), rtol=1e-12)
  np.testing.assert_allclose(hsic, u_statistic_hsic(k, l), rtol=1e-10)
  with pytest.raises(ValueError, match="at least 4"):
    similarity.hsic_unbiased(k[:3, :3], l[:3, :3])


def test_minibatch_cka_approaches_full_data_cka():
  x, y = related(4096, 16, 8, noise=3.0)
  full = similarity.linear_cka(x, y)
  batches = lambda a: np.split(a, 8)  # 8 batches of 512.
  minibatch = similarity.minibatch_cka(batches(x), batches(y))
  assert 0.2 < full < 0.9
  np.testing.assert_allclose(minibatch, full, atol=0.01)
  with pytest.raises(ValueError):
    similarity.minibatch_cka(batches(x), batches(y)[:-1])


def test_cka_matrix_of_one_checkpoint_is_symmetric_with_a_unit_diagonal():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(64, 12))
  layers = {"stem": x.reshape(64, 2, 2, 3), "block1": np.maximum(x, 0.0),
            "block2": x @ rng.normal(size=(12, 40)) + rng.normal(size=(64, 40)),
            "head": rng.normal(size=(64, 4, 5))}
  matrix, names_a, names_b = similarity.cka_matrix(layers)
  assert names_a == names_b == ["stem", "block1", "block2", "head"]
  np.testing.assert_array_equal(matrix, matrix.T)
  np.testing.assert_allclose(np.diag(matrix), 1.0, rtol=1e-12)
  for (i, a), (j, b) in itertools.product(enumerate(names_a), repeat=2):
    np.testing.assert_allclose(matrix[i, j], reference_cka(layers[a], layers[b]),
                               rtol=1e-10)


def test_cka_matrix_across_checkpoints():
  rng = np.random.default_rng(10)
  first = [rng.normal(size=(32, 5)), rng.normal(size=(32, 3, 3))]
  second = [first[0] @ orthogonal(5, 11), rng.normal(size=(32, 7)), first[1] * 2.0]
  matrix, names_a, names_b = similarity.cka_matrix(first, second)
  assert matrix.shape == (2, 3) and names_a == [0, 1] and names_b == [0, 1, 2]
  np.testing.assert_allclose(matrix[[0, 1], [0, 2]], 1.0, rtol=1e-12)
  for i, j in itertools.product(range(2), range(3)):
    np.testing.assert_allclose(matrix[i, j], reference_cka(first[i], second[j]),
                               rtol=1e-10)


def test_spatial_features_are_flattened_not_pooled():
  # x holds independent u and v at its two positions, y their mean m at both: the
  # spatial means are both m (pooled CKA 1), but flattened, x's [u, v] and y's
  # [m, m] give CKA 1/sqrt(2) in expectation.
  rng = np.random.default_rng(12)
  u, v = rng.normal(size=(2, 500, 8))
  m = (u + v) / 2
  x = np.stack([u, v], axis=1)[:, :, None, :]  # [N, H=2, W=1, C].
  y = np.stack([m, m], axis=1)[:, :, None, :]
  np.testing.assert_allclose(similarity.linear_cka(x.mean((1, 2)), y.mean((1, 2))),
                             1.0, rtol=1e-12)
  flattened = similarity.linear_cka(x, y)
  np.testing.assert_allclose(flattened, 1 / np.sqrt(2), atol=0.03)
  assert flattened == similarity.linear_cka(x.reshape(500, -1), y.reshape(500, -1))
  matrix, _, _ = similarity.cka_matrix({"x": x}, {"y": y})
  np.testing.assert_allclose(matrix[0, 0], flattened, rtol=1e-12)


def test_malformed_and_degenerate_inputs():
  x, y = related(20, 4, 13)
  with pytest.raises(ValueError, match="numbers of examples"):
    similarity.linear_cka(x, y[:10])
  with pytest.raises(ValueError, match="feature axis"):
    similarity.linear_cka(x[:, 0], y)
  assert np.isnan(similarity.linear_cka(np.ones((20, 4)), y))
