"""Representation similarity: linear CKA, full-data and over minibatches.

Linear centred kernel alignment (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity
of Neural Network Representations Revisited", ICML 2019, Eq. 5) between
representations X [N, D1] and Y [N, D2] of the same N examples, with X and Y
centred over examples:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
              = <K, L>_F / (||K||_F ||L||_F),  K = X X^T, L = Y Y^T.

It is invariant to orthogonal transforms and isotropic scaling of either
representation, not to arbitrary invertible linear maps. The feature-space form
costs O(N D^2) and the Gram form O(N^2 D); each call uses the cheaper one.

When N is too large for one pass (or an N×N Gram), `minibatch_cka` follows Nguyen,
Raghu & Kornblith 2021 ("Do Wide and Deep Networks Learn the Same Things?", ICLR
2021, Eq. 3): the unbiased HSIC estimator of Song et al. 2012 ("Feature Selection
via Dependence Maximization", JMLR 13) is summed over minibatches,

    CKA = sum_i HSIC_1(K_i, L_i) / sqrt(sum_i HSIC_1(K_i, K_i) sum_i HSIC_1(L_i, L_i)),

whose sums are unbiased, so unlike an average of per-batch CKAs it does not drift
with the batch size. HSIC_1 is unchanged by
adding a constant to every example's features, so minibatches are not centred.

Choice: features with more than two dimensions ([N, H, W, C], [N, T, C]) are
flattened per example to [N, H*W*C]; nothing is pooled. Flattening keeps where a
feature is: two layers whose spatial means agree but whose per-position features
differ have CKA < 1, while mean-pooled features would call them identical.
All arithmetic is in float64.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np


def _as_2d(x) -> np.ndarray:
  """Returns `x` [N, ...] as float64 [N, prod(...)], flattened per example."""
  x = np.asarray(x, np.float64)
  if x.ndim < 2:
    raise ValueError(f"features must be [N, ...] with a feature axis; got {x.shape}")
  return x.reshape(x.shape[0], -1)


def _centred(x) -> np.ndarray:
  """Returns `x` as [N, D] float64 with each feature's mean over examples removed."""
  x = _as_2d(x)
  return x - x.mean(axis=0)


def _feature_form(x: np.ndarray, y: np.ndarray) -> float:
  """Returns ||Y^T X||_F^2 for centred x [N, D1], y [N, D2], in O(N D1 D2)."""
  return float(np.sum((y.T @ x) ** 2))


def _gram_form(x: np.ndarray, y: np.ndarray) -> float:
  """Returns <X X^T, Y Y^T>_F (= ||Y^T X||_F^2) for centred x, y, in O(N^2 (D1+D2))."""
  return float(np.sum((x @ x.T) * (y @ y.T)))


def _cross(x: np.ndarray, y: np.ndarray) -> float:
  """Returns ||Y^T X||_F^2 for centred x, y by the cheaper of the two forms."""
  n, d1 = x.shape
  d2 = y.shape[1]
  if d1 * d2 <= n * (d1 + d2):
    return _feature_form(x, y)
  return _gram_form(x, y)


def _normalised(xy: float, xx: float, yy: float) -> float:
  """Returns xy / sqrt(xx yy), or NaN when a representation is constant (0/0)."""
  denominator = float(np.sqrt(xx * yy))
  return xy / denominator if denominator > 0.0 else float("nan")


def _cka_centred(x: np.ndarray, y: np.ndarray, xx: float, yy: float) -> float:
  """Returns linear CKA of centred x, y given xx = ||X^T X||_F^2, yy = ||Y^T Y||_F^2."""
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"different numbers of examples: {x.shape[0]} and {y.shape[0]}")
  return _normalised(_cross(x, y), xx, yy)


def linear_cka(x, y) -> float:
  """Linear CKA (Kornblith et al. 2019, Eq. 5) between two representations.

  Args:
    x: [N, ...] features of N examples; more than two dims are flattened per example.
    y: [N, ...] features of the same N examples, in the same order.

  Returns:
    CKA in [0, 1]: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on the centred
    features, or NaN when either is constant over the examples.
  """
  x, y = _centred(x), _centred(y)
  return _cka_centred(x, y, _cross(x, x), _cross(y, y))


def hsic_unbiased(k, l) -> float:
  """The unbiased HSIC estimator of Song et al. 2012 (Nguyen et al. 2021, Eq. 3).

  With K~, L~ the Gram matrices with their diagonals set to zero and 1 the ones
  vector,

    HSIC_1 = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2))
              - 2/(n-2) 1^T K~ L~ 1] / (n (n-3)).

  Args:
    k: [n, n] Gram matrix of one representation over n > 3 examples.
    l: [n, n] Gram matrix of the other, over the same examples.

  Returns:
    The estimate (it can be slightly negative when the dependence is weak).
  """
  k, l = np.array(k, np.float64), np.array(l, np.float64)
  n = k.shape[0]
  if k.shape != (n, n) or l.shape != (n, n):
    raise ValueError(f"need two [n, n] Gram matrices; got {k.shape} and {l.shape}")
  if n < 4:
    raise ValueError(f"the unbiased HSIC needs at least 4 examples; got {n}")
  np.fill_diagonal(k, 0.0)
  np.fill_diagonal(l, 0.0)
  trace_kl = np.sum(k * l.T)
  sums = k.sum() * l.sum() / ((n - 1) * (n - 2))
  cross = 2.0 * (k.sum(axis=0) @ l.sum(axis=1)) / (n - 2)
  return float((trace_kl + sums - cross) / (n * (n - 3)))


def minibatch_cka(batches_x: Iterable, batches_y: Iterable) -> float:
  """Linear CKA accumulated over minibatches (Nguyen et al. 2021, Eq. 3).

  Each batch contributes unbiased HSIC estimates (`hsic_unbiased`) of its linear
  Grams; only one batch's [B, B] Grams are held at a time. With large batches the
  result approaches `linear_cka` of all the data.

  Args:
    batches_x: iterable of [B_i, ...] features (B_i > 3), flattened per example.
    batches_y: iterable of [B_i, ...] features of the same examples, as many batches.

  Returns:
    sum HSIC_1(X_i, Y_i) / sqrt(sum HSIC_1(X_i, X_i) sum HSIC_1(Y_i, Y_i)), or
    NaN when either representation is constant.
  """
  xy = xx = yy = 0.0
  for x, y in zip(batches_x, batches_y, strict=True):
    x, y = _as_2d(x), _as_2d(y)
    k, l = x @ x.T, y @ y.T
    xy += hsic_unbiased(k, l)
    xx += hsic_unbiased(k, k)
    yy += hsic_unbiased(l, l)
  return _normalised(xy, xx, yy)


def _named(features: Mapping[str, object] | Sequence) -> tuple[list, list]:
  """Returns (names, centred 2-D features): a dict's keys, or a sequence's indices."""
  if isinstance(features, Mapping):
    names = list(features)
    values = [features[name] for name in names]
  else:
    names, values = list(range(len(features))), list(features)
  return names, [_centred(v) for v in values]


def cka_matrix(features_a: Mapping[str, object] | Sequence, features_b=None
               ) -> tuple[np.ndarray, list, list]:
  """Linear CKA (Kornblith et al. 2019) between every pair of layers.

  Every layer's features are [N, ...] for the same N examples; more than two dims
  are flattened per example (no pooling; see the module docstring).

  Args:
    features_a: layer name -> [N, ...] features, or a list of them (named by index).
    features_b: the same for a second checkpoint; None compares `features_a`'s
      layers with each other.

  Returns:
    (matrix, names_a, names_b): matrix[i, j] is the CKA between layer names_a[i]
    of `features_a` and layer names_b[j] of `features_b` (of `features_a` when it
    is None, and then the matrix is symmetric with a diagonal of 1).
  """
  names_a, xs = _named(features_a)
  names_b, ys = (names_a, xs) if features_b is None else _named(features_b)
  self_a = [_cross(x, x) for x in xs]
  self_b = self_a if features_b is None else [_cross(y, y) for y in ys]
  matrix = np.empty((len(xs), len(ys)))
  for i, x in enumerate(xs):
    for j, y in enumerate(ys):
      if features_b is None and j < i:
        matrix[i, j] = matrix[j, i]
      else:
        matrix[i, j] = _cka_centred(x, y, self_a[i], self_b[j])
  return matrix, names_a, names_b


def nearest_neighbours(query, gallery, k: int = 5, *, exclude_self: bool = False,
                       chunk_size: int = 1024) -> np.ndarray:
  """Indices [Q, k] into `gallery` [N, D] of each query's k nearest neighbours by
  cosine similarity, nearest first (the similarity the k-NN evaluator uses,
  tandem/transfer/neighbors.py). `exclude_self`: the query set is the gallery, and
  each query's own row is not its neighbour."""
  query, gallery = _as_2d(query), _as_2d(gallery)
  if query.shape[1] != gallery.shape[1]:
    raise ValueError(f"query has {query.shape[1]} features per example, gallery "
                     f"{gallery.shape[1]}.")
  if not 1 <= k <= len(gallery) - exclude_self:
    raise ValueError(f"k={k} must be in [1, {len(gallery) - exclude_self}].")
  if exclude_self and len(query) != len(gallery):
    raise ValueError("exclude_self needs the query set to be the gallery.")
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  query, gallery = unit(query), unit(gallery)
  out = []
  for start in range(0, len(query), chunk_size):
    sims = query[start:start + chunk_size] @ gallery.T
    if exclude_self:
      rows = np.arange(len(sims))
      sims[rows, rows + start] = -np.inf
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    out.append(np.take_along_axis(top, order, axis=1))
  return np.concatenate(out) if out else np.zeros((0, k), np.int64)
