"""Representation-quality scores of frozen features, in plain NumPy.

Every function takes a feature matrix `features` [N, D] (any float dtype; all
arithmetic is float64) and, for the label-based scores, integer `labels` [N].

Label-free (no downstream task needed):
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

Conventions, where the papers leave a choice:
  * Input that is malformed (wrong rank, mismatched N, fewer than 2 samples,
    NaN or inf, labels with a single class) raises ValueError. Well-formed input
    on which a score is undefined (RankMe of all-zero features, α-ReQ of a
    spectrum with fewer than two positive eigenvalues, NC1 when all class means
    coincide, LogME of all-zero features) gives NaN.
  * Standard deviations and covariances divide by N (population statistics);
    the eigenspectrum divides by N - 1, as np.cov (α-ReQ is invariant to it).
  * L2 normalisation divides by max(‖z‖, 1e-12), as torch.nn.functional.normalize
    in the reference code of Wang & Isola and of SimSiam, so zero rows stay zero.
  * Label sets need not be contiguous: the classes are those that occur.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

# Eigenvalues at most this fraction of the largest are treated as zero by
# `alpha_req`: above round-off of float32 features (~1e-14 relative in a
# covariance), below any power law a D ≤ 10^4 spectrum can follow (k^-2 at
# k = 10^4 is 1e-8).
ALPHA_REQ_RELATIVE_FLOOR = 1e-10
# A dimension is "dead" when its std is at most this fraction of the largest.
DEAD_RELATIVE_STD = 1e-4
# Relative cutoff of cov(f)'s pseudo-inverse in `hscore` (the authors' rcond).
HSCORE_RCOND = 1e-15
# Added to the denominators of LogME's α and β updates (the authors' code).
LOGME_EPS = 1e-5
# torch.nn.functional.normalize's default eps.
NORMALIZE_EPS = 1e-12


def _check_features(features, name: str = "features") -> np.ndarray:
  """Returns `features` as a float64 [N, D] array with N ≥ 2, all finite."""
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array [N, D], got shape {x.shape}.")
  if x.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 samples, got N={x.shape[0]}.")
  if x.shape[1] < 1:
    raise ValueError(f"{name} needs at least 1 dimension, got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or infinite values.")
  return x


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


def _l2_normalize(x: np.ndarray) -> np.ndarray:
  """Returns the rows of `x` divided by max(‖row‖₂, NORMALIZE_EPS)."""
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norms, NORMALIZE_EPS)


def _class_means(x: np.ndarray, y: np.ndarray, classes: np.ndarray):
  """Returns ([C, D] class means, [C] class counts) in the order of `classes`."""
  index = np.searchsorted(classes, y)
  counts = np.bincount(index, minlength=len(classes)).astype(np.float64)
  sums = np.zeros((len(classes), x.shape[1]))
  np.add.at(sums, index, x)
  return sums / counts[:, None], counts


def rankme(features, eps: float = 1e-7) -> float:
  """RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance
  of pretrained self-supervised representations by their rank", ICML, Eq. 1).

  RankMe(Z) = exp(-Σ_k p_k log p_k) with p_k = σ_k(Z) / ‖σ(Z)‖₁ + eps, over the
  singular values σ_k of the (uncentred) features, as in the paper.

  Returns:
    The smooth rank, between about 1 (rank one) and min(N, D); NaN for all-zero
    features, which have no singular values to normalise.
  """
  x = _check_features(features)
  s = np.linalg.svd(x, compute_uv=False)
  if s.sum() == 0:
    return math.nan
  p = s / s.sum() + eps
  return float(np.exp(-np.sum(p * np.log(p))))


def eigenspectrum(features) -> np.ndarray:
  """Returns the [D] eigenvalues of the centred feature covariance (divided by
  N - 1), in descending order; round-off below zero is clipped to 0."""
  x = _check_features(features)
  x = x - x.mean(axis=0)
  eigenvalues = np.linalg.eigvalsh(x.T @ x / (len(x) - 1))
  return np.maximum(eigenvalues[::-1], 0.0)


def alpha_req(features,
              fit_range: Optional[tuple[int, int]] = None) -> float:
  """α-ReQ (Agrawal et al. 2022, "α-ReQ: Assessing Representation Quality in
  Self-Supervised Learning by measuring eigenspectrum decay", NeurIPS).

  Fits log λ_k = c - α log k by least squares over the covariance eigenvalues λ_k
  (k = 1, 2, ... in descending order; `eigenspectrum`).

  Args:
    features: [N, D].
    fit_range: (first, last), 1-based inclusive ranks k to fit over; every λ_k in
      it must be positive. Default: every eigenvalue above
      ALPHA_REQ_RELATIVE_FLOOR × λ_1, i.e. the whole spectrum except numerical
      zeros (rank deficiency, N ≤ D). The authors' reptrix library instead asks
      for a range and suggests skipping the first few eigenvalues; pass
      `fit_range` to do so.

  Returns:
    The decay coefficient α (larger: faster decay, lower effective dimension);
    NaN when the default range holds fewer than two eigenvalues (a rank-≤1
    spectrum has no decay to fit).
  """
  spectrum = eigenspectrum(features)
  if fit_range is None:
    ranks = np.flatnonzero(spectrum > ALPHA_REQ_RELATIVE_FLOOR * spectrum[0]) + 1
    if len(ranks) < 2:
      return math.nan
  else:
    first, last = fit_range
    if not 1 <= first < last <= len(spectrum):
      raise ValueError(f"fit_range must be (first, last) with 1 <= first < last "
                       f"<= D={len(spectrum)}, got {fit_range}.")
    ranks = np.arange(first, last + 1)
    if np.any(spectrum[ranks - 1] <= 0):
      raise ValueError(f"fit_range {fit_range} includes zero eigenvalues; the "
                       f"spectrum has {np.count_nonzero(spectrum > 0)} positive.")
  slope, _ = np.polyfit(np.log(ranks), np.log(spectrum[ranks - 1]), deg=1)
  return float(-slope)


def alignment(z1, z2, alpha: float = 2) -> float:
  """Alignment (Wang & Isola 2020, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere", ICML, Sec. 4.1):
  mean over positive pairs (rows z1[i], z2[i]) of ‖f(x) - f(y)‖₂^alpha, on
  L2-normalised features.

  Returns:
    The alignment loss, in [0, 2^alpha]; 0 when the views coincide.
  """
  a = _check_features(z1, "z1")
  b = _check_features(z2, "z2")
  if a.shape != b.shape:
    raise ValueError(f"z1 and z2 must have the same shape, got {a.shape} and "
                     f"{b.shape}.")
  if alpha <= 0:
    raise ValueError(f"alpha must be positive, got {alpha}.")
  distances = np.linalg.norm(_l2_normalize(a) - _l2_normalize(b), axis=1)
  return float(np.mean(distances ** alpha))


def uniformity(z, t: float = 2, block_size: int = 256) -> float:
  """Uniformity (Wang & Isola 2020, ICML, Sec. 4.1): log of the mean over all
  N(N-1)/2 distinct pairs i < j of exp(-t ‖f(x_i) - f(x_j)‖₂²), on
  L2-normalised features.

  Rows are processed `block_size` at a time against the rows after them, so
  memory is O(block_size × N) (a few 40 MB temporaries at N = 20k); the sum of
  exponentials is accumulated in log space, so a large t cannot underflow it.

  Returns:
    The uniformity loss, ≤ 0; lower is more uniform. 0 for fully collapsed
    (identical) rows; close to -2t for uniform points on a high-dimensional
    sphere (squared distances ≈ 2).
  """
  x = _l2_normalize(_check_features(z, "z"))
  if t <= 0:
    raise ValueError(f"t must be positive, got {t}.")
  if block_size < 1:
    raise ValueError(f"block_size must be positive, got {block_size}.")
  n = len(x)
  sq_norms = np.sum(x * x, axis=1)
  log_total = -math.inf
  for start in range(0, n - 1, block_size):
    stop = min(start + block_size, n)
    # Rows start..stop-1 against columns start+1..n-1; column c is sample
    # start+1+c, paired with row r (sample start+r) only when c >= r (j > i).
    sq = (sq_norms[start:stop, None] + sq_norms[None, start + 1:]
          - 2.0 * x[start:stop] @ x[start + 1:].T)
    logits = -t * np.maximum(sq, 0.0)
    later = (np.arange(n - start - 1)[None, :]
             >= np.arange(stop - start)[:, None])
    logits = np.where(later, logits, -np.inf)
    peak = logits.max()
    log_total = np.logaddexp(log_total,
                             peak + np.log(np.sum(np.exp(logits - peak))))
  return float(log_total - math.log(n * (n - 1) / 2))


def collapse_stats(features) -> dict[str, float]:
  """Per-dimension spread of the features, to spot (partial) collapse.

  Returns:
    A dict with
      std_mean, std_min: mean and min over dimensions of the per-dim std;
      dead_fraction: fraction of dimensions whose std is at most
        DEAD_RELATIVE_STD (1e-4) × the largest per-dim std (all of them when
        every dimension is constant);
      normalized_std: SimSiam's collapse indicator (Chen & He 2021, "Exploring
        Simple Siamese Representation Learning", CVPR, Sec. 4.1): the per-dim
        std of the L2-normalised features, averaged over dims, × sqrt(D); ≈1 for
        isotropic zero-mean Gaussian features, ≈0 when collapsed;
      rankme: `rankme(features)`.
  """
  x = _check_features(features)
  std = x.std(axis=0)
  normalized_std = _l2_normalize(x).std(axis=0).mean() * math.sqrt(x.shape[1])
  return {
      "std_mean": float(std.mean()),
      "std_min": float(std.min()),
      "dead_fraction": float(np.mean(std <= DEAD_RELATIVE_STD * std.max())),
      "normalized_std": float(normalized_std),
      "rankme": rankme(x),
  }


def label_free_metrics(features,
                       views: Optional[Sequence] = None) -> dict[str, float]:
  """Returns every label-free score in one dict: the keys of `collapse_stats`,
  alpha_req and uniformity of `features` (default arguments), and alignment of
  `views` = (z1, z2), two augmented views' features [N', D'], when given."""
  metrics = collapse_stats(features)
  metrics["alpha_req"] = alpha_req(features)
  metrics["uniformity"] = uniformity(features)
  if views is not None:
    if len(views) != 2:
      raise ValueError(f"views must be a pair (z1, z2), got {len(views)} items.")
    metrics["alignment"] = alignment(*views)
  return metrics


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
  x = _check_features(features)
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
  x = _check_features(features)
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
  x = _check_features(features)
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
