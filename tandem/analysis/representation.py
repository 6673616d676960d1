"""Representation-quality scores of frozen features, in plain NumPy.

Every function takes a feature matrix `features` [N, D] (any float dtype; all
arithmetic is float64) and, for the label-based scores, integer `labels` [N].

Label-free (no downstream task needed; from `tandem.transfer.label_free`, whose
evaluator logs them during pretraining):
  * `rankme`: RankMe, Garrido et al. 2023, Eq. 1.
  * `eigenspectrum`, `alpha_req`: α-ReQ, Agrawal et al. 2022.
  * `alignment`, `uniformity`: Wang & Isola 2020, Sec. 4.1.
  * `collapse_stats`: per-dimension spread, incl. SimSiam's collapse indicator
    (Chen & He 2021, Sec. 4.1).
  * `label_free_metrics`: all of the above in one dict.

With labels (how well the features suit a labelled task, without training on it):
  * `nc1`: neural-collapse NC1, Papyan, Han & Donoho 2020.
  * `logme`: LogME, You et al. 2021, Algorithm 2 (fast fixed point).
  * `hscore`: H-score, Bao et al. 2019.

Conventions, where the papers leave a choice (the label-free ones: see
`tandem.transfer.label_free`):
  * Input that is malformed (wrong rank, mismatched N, fewer than 2 samples,
    NaN or inf, labels with a single class) raises ValueError. Well-formed input
    on which a score is undefined (NC1 when all class means coincide, LogME of
    all-zero features) gives NaN.
  * Covariances divide by N (population statistics).
  * Label sets need not be contiguous: the classes are those that occur.
"""
from __future__ import annotations

import math

import numpy as np

from tandem.transfer.label_free import alignment
from tandem.transfer.label_free import alpha_req
from tandem.transfer.label_free import check_features
from tandem.transfer.label_free import collapse_stats
from tandem.transfer.label_free import eigenspectrum
from tandem.transfer.label_free import label_free_metrics
from tandem.transfer.label_free import rankme
from tandem.transfer.label_free import uniformity

__all__ = ["alignment", "alpha_req", "collapse_stats", "eigenspectrum", "hscore",
           "label_free_metrics", "logme", "nc1", "rankme", "uniformity"]

# Relative cutoff of cov(f)'s pseudo-inverse in `hscore` (the authors' rcond).
HSCORE_RCOND = 1e-15
# Added to the denominators of LogME's α and β updates (the authors' code).
LOGME_EPS = 1e-5


def _check_labels(labels, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (labels as an int array [N], the sorted distinct classes, ≥ 2)."""
  y = np.asarray(labels)
  if y.shape != (num_samples,):
    raise ValueError(f"labels must have shape ({num_samples},) to match "
                     f"features [N={num_samples}, D], got shape {y.shape}.")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {y.dtype}.")
  classes = np.unique(y)
  if len(classes) < 2:
    raise ValueError(f"labels need at least 2 classes, got {classes.tolist()}.")
  return y, classes


def _class_means(x: np.ndarray, y: np.ndarray, classes: np.ndarray):
  """Returns ([C, D] class means, [C] class counts) in the order of `classes`."""
  index = np.searchsorted(classes, y)
  counts = np.bincount(index, minlength=len(classes)).astype(np.float64)
  sums = np.zeros((len(classes), x.shape[1]))
  np.add.at(sums, index, x)
  return sums / counts[:, None], counts


def nc1(features, labels) -> float:
  """Neural-collapse NC1 (Papyan, Han & Donoho 2020, "Prevalence of neural
  collapse during the terminal phase of deep learning training", PNAS, Fig. 6):
  tr(Σ_W Σ_B⁺) / C.

  Σ_W = Ave_{i,c} (h_ic - μ_c)(h_ic - μ_c)ᵀ averages over all samples;
  Σ_B = Ave_c (μ_c - μ_G)(μ_c - μ_G)ᵀ averages over classes, with μ_G the mean of
  all samples (the paper's definitions; with unbalanced classes μ_G is not the
  mean of the class means). Σ_B⁺ comes from the SVD of the centred class means,
  dropping singular values below max(C, D)·ε of the largest.

  Returns:
    NC1 ≥ 0; 0 when every sample equals its class mean. NaN when all class means
    coincide (Σ_B = 0).
  """
  x = check_features(features)
  y, classes = _check_labels(labels, len(x))
  means, _ = _class_means(x, y, classes)
  within = x - means[np.searchsorted(classes, y)]
  sigma_w = within.T @ within / len(x)
  # Σ_B = MᵀM / C with M = U S Vᵀ, so Σ_B⁺ = C · V S⁻² Vᵀ.
  _, s, vt = np.linalg.svd(means - x.mean(axis=0), full_matrices=False)
  if s[0] == 0:
    return math.nan
  keep = s > max(means.shape) * np.finfo(np.float64).eps * s[0]
  v = vt[keep]
  # tr(Σ_W Σ_B⁺) / C = Σ_k v_kᵀ Σ_W v_k / s_k²: the factors C cancel.
  return float(np.sum(np.einsum("kd,de,ke->k", v, sigma_w, v) / s[keep] ** 2))


def _logme_moments(sigma: np.ndarray, proj2: np.ndarray, outside2: float,
                   ratio: float) -> tuple[float, float, float]:
  """Returns (γ, mᵀm, ‖Fm - y‖²) of LogME's posterior at α/β = `ratio`, from the
  squared singular values `sigma` of F, the squared coordinates `proj2` of y in
  F's left singular basis and ‖y‖² outside F's column space, `outside2`."""
  gamma = np.sum(sigma / (sigma + ratio))
  m2 = np.sum(sigma * proj2 / (sigma + ratio) ** 2)
  res2 = np.sum(proj2 * (ratio / (sigma + ratio)) ** 2) + outside2
  return gamma, m2, res2


def logme(features, labels, max_iter: int = 100, tol: float = 1e-3) -> float:
  """LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models
  for Transfer Learning", ICML, Algorithms 1 and 2).

  For each class k, the one-hot target y = [labels == k] is modelled as
  y = F m + noise, m ~ N(0, α⁻¹I), noise ~ N(0, β⁻¹I), with F the raw features
  (no centring, no bias, as in the paper). From α = β = 1, the fixed point
    γ = Σ_i βσ_i / (α + βσ_i),  m = β A⁻¹ Fᵀ y,  A = αI + βFᵀF,
    α ← γ / mᵀm,  β ← (N - γ) / ‖F m - y‖²
  runs until α/β changes by at most `tol` (relative) or for `max_iter` steps,
  with σ_i the eigenvalues of FᵀF, every step evaluated in the basis of one SVD
  of F (the paper's fast version). As in the authors' code, LOGME_EPS is added
  to both denominators of the update; it keeps β finite when F fits y exactly
  (D ≥ N), where the evidence is maximal at β = ∞. The evidence (Eq. 2)
    L = N/2 log β + D/2 log α - N/2 log 2π - β/2 ‖Fm - y‖² - α/2 mᵀm - 1/2 log|A|
  is then evaluated at the final (α, β), with m recomputed there (the authors'
  code reuses the m of the last update). log|A| counts the D - rank(F) zero
  eigenvalues of FᵀF (log α each) when D > N, which the authors' fast version
  omits.

  Returns:
    The mean over classes of L / N (per-sample log evidence); higher means the
    features suit the labels better. NaN for all-zero features.
  """
  x = check_features(features)
  y, classes = _check_labels(labels, len(x))
  if max_iter < 1 or tol <= 0:
    raise ValueError(f"max_iter must be ≥ 1 and tol > 0, got {max_iter}, {tol}.")
  n, d = x.shape
  u, s, _ = np.linalg.svd(x, full_matrices=False)
  if s[0] == 0:
    return math.nan
  sigma = s ** 2  # The min(N, D) largest eigenvalues of FᵀF; the rest are 0.

  evidences = []
  for k in classes:
    target = (y == k).astype(np.float64)
    proj = u.T @ target  # y in the left singular basis.
    proj2 = proj ** 2
    # ‖y‖² outside the column space of F; round-off can make it negative.
    outside2 = max(target @ target - proj2.sum(), 0.0)

    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
      ratio = alpha / beta
      gamma, m2, res2 = _logme_moments(sigma, proj2, outside2, ratio)
      alpha = gamma / (m2 + LOGME_EPS)
      beta = (n - gamma) / (res2 + LOGME_EPS)
      if abs(alpha / beta - ratio) <= tol * ratio:
        break
    _, m2, res2 = _logme_moments(sigma, proj2, outside2, alpha / beta)
    log_det_a = (np.sum(np.log(alpha + beta * sigma))
                 + (d - len(sigma)) * np.log(alpha))
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha)
                - n / 2 * np.log(2 * np.pi) - beta / 2 * res2 - alpha / 2 * m2
                - log_det_a / 2)
    evidences.append(evidence / n)
  return float(np.mean(evidences))


def hscore(features, labels) -> float:
  """H-score (Bao et al. 2019, "An Information-Theoretic Approach to
  Transferability in Task Transfer Learning", ICIP, the definition of H(f)):
  tr(cov(f)⁺ cov(E[f | y])).

  cov(E[f | y]) is the covariance over samples of each sample's class mean (so
  classes are weighted by their frequency). cov(f)⁺ is the pseudo-inverse from
  an eigendecomposition, dropping eigenvalues below 1e-15 of the largest (the
  authors' code: `np.linalg.pinv(cov_f, rcond=1e-15)`); H-score is sensitive to
  this cutoff when cov(f) is ill-conditioned.

  Returns:
    The H-score, in [0, min(C - 1, D)]; higher means class means further apart
    relative to the feature covariance (an easier linear task). 0 for constant
    features.
  """
  x = check_features(features)
  y, classes = _check_labels(labels, len(x))
  mean = x.mean(axis=0)
  centred = x - mean
  cov_f = centred.T @ centred / len(x)
  means, counts = _class_means(x, y, classes)
  # cov(E[f|y]) = MᵀM with rows M_c = sqrt(n_c / N) (μ_c - μ).
  m = np.sqrt(counts / len(x))[:, None] * (means - mean)
  eigenvalues, vectors = np.linalg.eigh(cov_f)
  if eigenvalues[-1] <= 0:
    return 0.0
  keep = eigenvalues > HSCORE_RCOND * eigenvalues[-1]
  projected = m @ vectors[:, keep]  # [C, rank]
  return float(np.sum(projected ** 2 / eigenvalues[keep]))
