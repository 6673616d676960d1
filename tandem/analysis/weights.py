"""Weight-space analysis: linear interpolation, loss barriers and model merging.

All functions take parameter pytrees (nested dicts of arrays, as Flax returns) and
return pytrees of the first tree's structure whose leaves are NumPy arrays of the
parameters' floating dtype. Arithmetic runs on host copies, in float32 for
bfloat16/float16 parameters and in the parameters' dtype otherwise, and is cast
back. Every tree must have the same structure, leaf shapes and leaf dtypes as the
first (a ValueError names the first path that differs), and leaves must be floats.

- Linear interpolation (1 - alpha) a + alpha b and the loss barrier along it
  (Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the
  Lottery Ticket Hypothesis", ICML 2020). WiSE-FT (Wortsman et al. 2022, "Robust
  fine-tuning of zero-shot models", CVPR 2022) is this interpolation with a
  zero-shot/pretrained checkpoint as a and its fine-tuned version as b.
- Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic",
  ICLR 2023): pretrained + scale * sum of task vectors (fine-tuned - pretrained).
- TIES-Merging (Yadav et al. 2023, "TIES-Merging: Resolving Interference When
  Merging Models", NeurIPS 2023, Sec. 3 and Algorithm 1): trim, elect sign,
  disjoint mean.
"""
from __future__ import annotations

import itertools
from typing import Callable, Mapping, Sequence

import jax
import numpy as np


def _flatten(tree) -> tuple[list[str], list[np.ndarray], object]:
  """Returns the tree's leaf paths (as `keystr`), leaves as NumPy arrays, treedef."""
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [jax.tree_util.keystr(path) for path, _ in with_paths]
  return paths, [np.asarray(leaf) for _, leaf in with_paths], treedef


def _aligned(reference, others: Sequence) -> tuple[object, list, list[list]]:
  """Checks that `others` match `reference` leaf by leaf.

  Returns:
    (treedef, reference's leaves, each other tree's leaves) as NumPy arrays.
  """
  paths, leaves, treedef = _flatten(reference)
  for path, leaf in zip(paths, leaves):
    if not jax.dtypes.issubdtype(leaf.dtype, np.floating):
      raise TypeError(f"parameter {path} is {leaf.dtype}; only floats can be merged")
  others_leaves = []
  for other in others:
    other_paths, other_leaves, other_treedef = _flatten(other)
    for path, other_path in itertools.zip_longest(paths, other_paths):
      if path != other_path:
        raise ValueError(f"parameter trees differ: one has {path or 'no more leaves'}"
                         f" where the other has {other_path or 'no more leaves'}")
    if other_treedef != treedef:
      raise ValueError("parameter trees have the same paths in different "
                       f"containers: {treedef} and {other_treedef}")
    for path, leaf, other_leaf in zip(paths, leaves, other_leaves):
      if (leaf.shape, leaf.dtype) != (other_leaf.shape, other_leaf.dtype):
        raise ValueError(f"parameter {path} is {leaf.dtype}{list(leaf.shape)} in one "
                         f"tree and {other_leaf.dtype}{list(other_leaf.shape)} in "
                         "the other")
    others_leaves.append(other_leaves)
  return treedef, leaves, others_leaves


def _upcast(x: np.ndarray) -> np.ndarray:
  """Returns `x` in its arithmetic dtype: float32 for 16-bit floats, else its own."""
  return x.astype(np.promote_types(x.dtype, np.float32), copy=False)


def interpolate(params_a, params_b, alpha: float):
  """Linear interpolation (1 - alpha) params_a + alpha params_b, leaf by leaf.

  WiSE-FT (Wortsman et al. 2022) is this with params_a the zero-shot/pretrained
  and params_b the fine-tuned weights.

  Args:
    params_a: parameter pytree, returned at alpha = 0.
    params_b: parameter pytree of the same structure, shapes and dtypes.
    alpha: the weight of params_b; values outside [0, 1] extrapolate.

  Returns:
    The interpolated pytree. At alpha = 0 (1) its leaves are copies of params_a's
    (params_b's), bit for bit: (1 - 1) a + 1 b is not b when a has infs or NaNs.
  """
  treedef, a, (b,) = _aligned(params_a, [params_b])
  if alpha == 0:
    leaves = [np.array(x) for x in a]
  elif alpha == 1:
    leaves = [np.array(y) for y in b]
  else:
    alpha = float(alpha)  # A NumPy float64 scalar would promote float32 leaves.
    leaves = [((1.0 - alpha) * _upcast(x) + alpha * _upcast(y)).astype(x.dtype)
              for x, y in zip(a, b)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def interpolation_path(params_a, params_b,
                       score_fn: Callable[..., Mapping[str, float] | float],
                       alphas: Sequence[float] = np.linspace(0.0, 1.0, 11)
                       ) -> list[dict]:
  """Scores the linear path from params_a to params_b (Frankle et al. 2020).

  Args:
    params_a: parameter pytree at alpha = 0 (e.g. WiSE-FT's zero-shot weights).
    params_b: parameter pytree at alpha = 1 (e.g. the fine-tuned weights).
    score_fn: interpolated params -> a dict of floats (e.g. {"loss", "accuracy"})
      or a single float.
    alphas: where to evaluate, in order.

  Returns:
    One dict per alpha: {"alpha": alpha, **score_fn(params)}, with a float score
    recorded as {"score": value}.
  """
  path = []
  for alpha in alphas:
    scores = score_fn(interpolate(params_a, params_b, alpha))
    if isinstance(scores, Mapping):
      scores = {name: float(value) for name, value in scores.items()}
    else:
      scores = {"score": float(scores)}
    path.append({"alpha": float(alpha), **scores})
  return path


def loss_barrier(path: Sequence[Mapping[str, float]], key: str = "loss") -> float:
  """Height of the loss barrier along an interpolation path.

  max over alpha in [0, 1] of loss(alpha) - ((1 - alpha) loss(0) + alpha loss(1)):
  the rise above the straight line between the endpoints' losses, as in Entezari
  et al. 2022 ("The Role of Permutation Invariance in Linear Mode Connectivity of
  Neural Networks", ICLR 2022). Frankle et al. 2020's instability measures
  the rise above the endpoints' mean instead, (loss(0) + loss(1)) / 2; the two
  agree when loss(0) = loss(1). Linearly mode connected endpoints have a barrier
  of about 0.

  Args:
    path: `interpolation_path`'s records; must include alpha = 0 and alpha = 1.
    key: the record to use as the loss (e.g. "loss" or an error rate).

  Returns:
    The barrier height, >= 0 (the endpoints contribute 0).
  """
  losses = {float(record["alpha"]): float(record[key]) for record in path}
  if 0.0 not in losses or 1.0 not in losses:
    raise ValueError(f"the path needs alpha = 0 and alpha = 1; has {sorted(losses)}")
  start, end = losses[0.0], losses[1.0]
  return max(loss - ((1.0 - alpha) * start + alpha * end)
             for alpha, loss in losses.items() if 0.0 <= alpha <= 1.0)


def task_vector(finetuned, pretrained):
  """The task vector finetuned - pretrained (Ilharco et al. 2023).

  Args:
    finetuned: parameter pytree after fine-tuning on a task.
    pretrained: parameter pytree it was fine-tuned from.

  Returns:
    finetuned - pretrained, leaf by leaf, in the parameters' dtype.
  """
  treedef, tuned, (base,) = _aligned(finetuned, [pretrained])
  leaves = [(_upcast(t) - _upcast(p)).astype(t.dtype) for t, p in zip(tuned, base)]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def task_arithmetic(pretrained, finetuned_list: Sequence, scale: float = 1.0):
  """Task arithmetic: adds the sum of task vectors (Ilharco et al. 2023).

  Args:
    pretrained: parameter pytree the models were fine-tuned from.
    finetuned_list: parameter pytrees fine-tuned from `pretrained` (at least one).
    scale: lambda, the weight of the summed task vectors (negative forgets them).

  Returns:
    pretrained + scale * sum_t (finetuned_t - pretrained).
  """
  if not finetuned_list:
    raise ValueError("task arithmetic needs at least one fine-tuned model")
  treedef, base, tuned = _aligned(pretrained, finetuned_list)
  scale = float(scale)
  leaves = []
  for i, p in enumerate(base):
    total = sum(_upcast(t[i]) - _upcast(p) for t in tuned)
    leaves.append((_upcast(p) + scale * total).astype(p.dtype))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _trim(task_vectors: np.ndarray, density: float) -> np.ndarray:
  """TIES step 1: keeps each row's top-`density` fraction by magnitude.

  With d entries per row, k = int(density * d) (rounded down, as in the reference
  code) and every entry whose magnitude is at least the k-th largest is kept, so
  ties at the threshold are all kept and a row may keep more than k entries. (The
  reference code's `kthvalue(d - k)` threshold is the (k+1)-th largest magnitude,
  one entry more than k; negligible at the size of a model.)

  Returns:
    task_vectors [T, d] with the other entries set to zero.
  """
  d = task_vectors.shape[1]
  k = int(density * d)
  if not 0.0 < density <= 1.0 or k == 0:
    raise ValueError(f"density {density} keeps none of {d} parameters or is not "
                     "in (0, 1]")
  magnitudes = np.abs(task_vectors)
  threshold = np.partition(magnitudes, d - k, axis=1)[:, d - k:d - k + 1]
  return np.where(magnitudes >= threshold, task_vectors, 0.0)


def ties_merge(pretrained, finetuned_list: Sequence, density: float = 0.2,
               scale: float = 1.0):
  """TIES-Merging (Yadav et al. 2023, Sec. 3, Algorithm 1).

  For task vectors tau_t = finetuned_t - pretrained, each flattened over ALL the
  model's parameters (as the paper's reference code does, so a layer may keep
  more or less than `density` of its own entries):
    1. Trim: keep the top-`density` fraction of each tau_t by magnitude, zero the
       rest (ties at the threshold are kept; see `_trim`).
    2. Elect: gamma = sign(sum_t trimmed tau_t), per parameter.
    3. Disjoint merge: per parameter, the mean of the trimmed tau_t entries that
       are non-zero and have sign gamma (0 where none has).
  Choice: where the trimmed entries cancel exactly (sum 0), gamma is 0 and the
  merged entry is 0; the reference code instead gives such parameters the sign
  of the majority of all elected signs. Exact cancellation is rare in practice.

  Args:
    pretrained: parameter pytree the models were fine-tuned from.
    finetuned_list: parameter pytrees fine-tuned from `pretrained` (at least one).
    density: fraction of each task vector's entries to keep (the paper's k%,
      default 20%).
    scale: lambda, the weight of the merged task vector.

  Returns:
    pretrained + scale * merged task vector, in the parameters' dtypes.
  """
  if not finetuned_list:
    raise ValueError("TIES-Merging needs at least one fine-tuned model")
  treedef, base, tuned = _aligned(pretrained, finetuned_list)
  dtype = np.result_type(*(_upcast(p).dtype for p in base))
  flat_base = np.concatenate([p.ravel().astype(dtype) for p in base])
  task_vectors = np.stack([
      np.concatenate([t.ravel().astype(dtype) for t in leaves]) - flat_base
      for leaves in tuned])
  trimmed = _trim(task_vectors, density)
  elected = np.sign(trimmed.sum(axis=0))
  agrees = (trimmed != 0) & (np.sign(trimmed) == elected)
  counts = np.maximum(agrees.sum(axis=0), 1).astype(dtype)
  merged = np.where(agrees, trimmed, 0.0).sum(axis=0) / counts
  flat = flat_base + float(scale) * merged
  splits = np.split(flat, np.cumsum([p.size for p in base])[:-1])
  leaves = [s.reshape(p.shape).astype(p.dtype) for s, p in zip(splits, base)]
  return jax.tree_util.tree_unflatten(treedef, leaves)
