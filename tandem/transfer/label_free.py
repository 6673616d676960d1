"""Label-free representation scores of frozen features, in plain NumPy, and an
evaluator that logs them during pretraining like the probes.

Every function takes a feature matrix `features` [N, D] (any float dtype; all
arithmetic is float64):
  * `rankme`: RankMe, Garrido et al. 2023, Eq. 1.
  * `eigenspectrum`, `alpha_req`: α-ReQ, Agrawal et al. 2022.
  * `alignment`, `uniformity`: Wang & Isola 2020, Sec. 4.1.
  * `collapse_stats`: per-dimension spread, incl. SimSiam's collapse indicator
    (Chen & He 2021, Sec. 4.1).
  * `label_free_metrics`: all of the above in one dict.
`tandem.analysis` offers them with the label-based scores (NC1, LogME, H-score).

The evaluator (`evaluate_task`, named `label_free` in `config.evals`; RankMe's
paper monitors pretraining with it, Garrido et al. 2023, Sec. 5) scores the
features of up to `max_examples` (default 10000, seeded) examples of the task's
training split at `layer`: no label is read, so it can run as often as wanted;
its features are shared with the probes evaluating the same split.

Conventions, where the papers leave a choice:
  * Input that is malformed (wrong rank, fewer than 2 samples, NaN or inf)
    raises ValueError. Well-formed input on which a score is undefined (RankMe
    of all-zero features, α-ReQ of a spectrum with fewer than two positive
    eigenvalues) gives NaN.
  * Standard deviations divide by N (population statistics); the eigenspectrum
    divides by N - 1, as np.cov (α-ReQ is invariant to it).
  * L2 normalisation divides by max(‖z‖, 1e-12), as torch.nn.functional.normalize
    in the reference code of Wang & Isola and of SimSiam, so zero rows stay zero.
  * RankMe depends on N (it is at most min(N, D)): compare scores of the same N.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

DEFAULT_MAX_EXAMPLES = 10000

# Eigenvalues at most this fraction of the largest are treated as zero by
# `alpha_req`: above round-off of float32 features (~1e-14 relative in a
# covariance), below any power law a D ≤ 10^4 spectrum can follow (k^-2 at
# k = 10^4 is 1e-8).
ALPHA_REQ_RELATIVE_FLOOR = 1e-10
# A dimension is "dead" when its std is at most this fraction of the largest.
DEAD_RELATIVE_STD = 1e-4
# torch.nn.functional.normalize's default eps.
NORMALIZE_EPS = 1e-12


def check_features(features, name: str = "features") -> np.ndarray:
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


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Returns the rows of `x` divided by max(‖row‖₂, NORMALIZE_EPS)."""
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norms, NORMALIZE_EPS)


def rankme(features, eps: float = 1e-7) -> float:
  """RankMe (Garrido et al. 2023, "RankMe: Assessing the downstream performance
  of pretrained self-supervised representations by their rank", ICML, Eq. 1).

  RankMe(Z) = exp(-Σ_k p_k log p_k) with p_k = σ_k(Z) / ‖σ(Z)‖₁ + eps, over the
  singular values σ_k of the (uncentred) features, as in the paper.

  Returns:
    The smooth rank, between about 1 (rank one) and min(N, D); NaN for all-zero
    features, which have no singular values to normalise.
  """
  x = check_features(features)
  s = np.linalg.svd(x, compute_uv=False)
  if s.sum() == 0:
    return math.nan
  p = s / s.sum() + eps
  return float(np.exp(-np.sum(p * np.log(p))))


def eigenspectrum(features) -> np.ndarray:
  """Returns the [D] eigenvalues of the centred feature covariance (divided by
  N - 1), in descending order; round-off below zero is clipped to 0."""
  x = check_features(features)
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
  a = check_features(z1, "z1")
  b = check_features(z2, "z2")
  if a.shape != b.shape:
    raise ValueError(f"z1 and z2 must have the same shape, got {a.shape} and "
                     f"{b.shape}.")
  if alpha <= 0:
    raise ValueError(f"alpha must be positive, got {alpha}.")
  distances = np.linalg.norm(l2_normalize(a) - l2_normalize(b), axis=1)
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
  x = l2_normalize(check_features(z, "z"))
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
  x = check_features(features)
  std = x.std(axis=0)
  normalized_std = l2_normalize(x).std(axis=0).mean() * math.sqrt(x.shape[1])
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


def evaluate_task(data, settings, model=None) -> list[dict]:
  """The label-free scores of the task's training features (see the module
  docstring). Settings: `layer` (default pre_logits), `max_examples`, `seed`."""
  del model  # Features come through `data`.
  layer = settings.get("layer", "pre_logits")
  max_examples = int(settings.get("max_examples", DEFAULT_MAX_EXAMPLES))
  x = data.features("trainval", layer)
  if max_examples and len(x) > max_examples:
    rng = np.random.default_rng(int(settings.get("seed", 0)))
    x = x[np.sort(rng.choice(len(x), max_examples, replace=False))]
  protocol = f"label-free, {len(x)} training examples, no labels read"
  return [{"evaluator": "label_free", "metric": name, "value": value,
           "layer": layer, "num_examples": len(x), "protocol": protocol}
          for name, value in label_free_metrics(x).items()]
