"""Multinomial logistic regression on device: the linear probe's solver.

Public API: `fit_logistic_regression(x, y, num_classes, l2, ...)` for one fit;
`device_data(x, y, num_classes)` + `solve(data, ...)` for a sweep of fits that share
the data on device; `accuracy(params, x, y)`. The objective is
mean cross-entropy + l2 · ‖W‖² (bias not penalised; weighted mean with per-example
weights, weight 0 drops an example), minimised full-batch inside one jitted
computation. The protocol around it (standardisation, the L2 sweep) is
`tandem/transfer/probe.py`.

Solver: L-BFGS preconditioned with the class blocks of the Hessian, one objective
evaluation per iteration, all in `lax.while_loop`s.
Why: the Hessian is Σ_i w_i (diag(p_i) − p_i p_iᵀ) ⊗ x̂_i x̂_iᵀ (x̂ = [x, 1]). It is
badly conditioned, and not only because features are correlated (whitening them
still left ~230 iterations of optax's L-BFGS on 60,000 × 512 features): examples a
class is sure of stop contributing curvature, so each class sees its own, shrinking,
rotated metric. The class-diagonal blocks G_k = Σ_i w_i p_ik (1 − p_ik) x̂_i x̂_iᵀ
carry most of it (CG on the Hessian at the optimum, to 1e-3: 14 steps preconditioned
with the exact blocks, 160 whitened). Exact blocks cost K·N·D² flops (~100 passes
over the data), so G_k is estimated from `_BLOCK_ROWS` rows drawn for class k with
probability ∝ w_i p_ik (1 − p_ik) ‖x̂_i‖² (systematic sampling, importance weights:
the rows that carry that class's curvature; as good as ~8x more rows drawn
uniformly). (G_k + 2·l2)⁻¹, applied through inverse Cholesky factors, is L-BFGS's
initial inverse Hessian, scaled by sᵀy / yᵀM⁻¹y; the blocks are built at the start
from the current probabilities and rebuilt after 10, 20, 40, ... iterations.
Directions are kept centred over classes (Σ_k W_k = 0 and Σ_k b_k = 0 hold at the
optimum: the cross-entropy is flat along adding one vector to every class, the
penalty is not). A cold start on more than `_MIN_WARMUP_ROWS` rows first takes
`_WARMUP_ITERS` iterations on a random eighth of them, preconditioned by their Gram
matrix (the class blocks at W = 0), where the first, large moves are 8x cheaper. Where blocks would cost more than they
save (few examples for their features, or many classes: `_blocks_kind`) one block is
shared by all classes, or there is none.
On 60,000 × 512 Fashion-MNIST features (l2 = 1e-3) this stops (max |∇| <= 2e-5,
objective within ~1e-6 of the optimum) after ~17 full-data iterations and 2 block
builds, ~20x faster than scikit-learn's lbfgs at its default tolerance, whose
objective ends ~1e-4 higher (bench/linear_probe.py).

XLA:CPU details that matter (~2x): logits are computed as [K, N] from X stored
[D, N], the gradient as Rᵀ·X from X stored [N, D] (both copies are kept on CPU), and
reductions over the class axis are done as elementwise ops or products. The
objective's products ask for float32 precision (GPUs would otherwise use TF32).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_MAX_ITER = 300
DEFAULT_TOL = 2e-5  # On max |∇ objective|; scikit-learn's lbfgs default is 1e-4.

_MEMORY = 10           # L-BFGS curvature pairs.
_BLOCK_ROWS = 2048     # Rows sampled per class for its curvature block,
_SMALL_L2 = 1e-4       # twice as many below this l2.
_GRAM_ROWS = 2048      # Rows sampled for the warm-up's Gram matrix.
_REBUILD_EVERY = 10    # Blocks rebuilt after 10, 20, 40, ... iterations.
_WARMUP_ITERS = 20     # Cold start: iterations on a subsample first ...
_WARMUP_FRACTION = 8   # ... of N // 8 rows,
_MIN_WARMUP_ROWS = 2048  # (at least this many, or all).
_MAX_BLOCK_FLOATS = 2**25  # Per-class blocks only up to this K (D+1)².
# Float32 products for the objective and gradient (GPUs would otherwise use TF32,
# whose ~1e-3 relative error stalls convergence); the curvature blocks are only a
# preconditioner and use the default precision.
_EXACT = jax.lax.Precision.HIGHEST


def _reduce_classes(op, a):
  """`op`-reduction of [K, N] over K as elementwise ops (XLA:CPU reduces the
  leading axis of such arrays ~10x slower)."""
  while a.shape[0] > 1:
    h = a.shape[0] // 2
    head = op(a[:h], a[h:2 * h])
    if a.shape[0] % 2:
      head = jnp.concatenate([op(head[:1], a[2 * h:]), head[1:]], 0)
    a = head
  return a[0]


def _value_grad(theta, data, l2):
  """Objective, gradient [K, D+1] and probabilities [K, N] at theta = [W | b]."""
  xt, xn, y1, w = data
  weights = theta[:, :-1]
  z = jnp.einsum("kd,dn->kn", weights, xt, precision=_EXACT) + theta[:, -1:]
  m = _reduce_classes(jnp.maximum, z)
  e = jnp.exp(z - m)
  s = _reduce_classes(jnp.add, e)
  p = e / s
  value = jnp.sum(w * (m + jnp.log(s) - _reduce_classes(jnp.add, y1 * z)))
  value = value + l2 * jnp.sum(weights * weights)
  r = w * (p - y1)
  if xn is None:
    grad_w = jnp.einsum("kn,dn->kd", r, xt, precision=_EXACT)
  else:  # [N, K]ᵀ·[N, D] is XLA:CPU's fast form; the barrier keeps it.
    grad_w = jnp.einsum("nk,nd->kd", jax.lax.optimization_barrier(r.T), xn,
                        precision=_EXACT)
  grad = jnp.concatenate([grad_w + 2.0 * l2 * weights,
                          jnp.sum(r, axis=1, keepdims=True)], axis=1)
  return value, grad, p


def _rows(data, idx):
  """Rows `idx` (any shape) of X, as [..., D]."""
  xt, xn = data[0], data[1]
  return xn[idx] if xn is not None else jnp.moveaxis(xt[:, idx], 0, -1)


def _curvature_blocks(p, data, sqnorm, l2, key, *, rows: int, shared: bool):
  """Inverse Cholesky factors [B, D+1, D+1] of the Hessian's class blocks
  G_k + 2·l2 (B = K, or 1 when `shared`: the classes' mean block).

  G_k = Σ_i w_i p_ik (1 − p_ik) x̂_i x̂_iᵀ, x̂ = [x, 1]; estimated from `rows` rows
  drawn with probability ∝ w_i p_ik (1 − p_ik) ‖x̂_i‖² (exact when N <= rows).
  """
  w = data[3]
  c = w * p * (1.0 - p)
  if shared:
    c = _reduce_classes(jnp.add, c)[None] / c.shape[0]
  num_blocks, n = c.shape
  if n <= rows:
    x = _rows(data, jnp.arange(n))
    xa = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
    gram = jnp.einsum("kn,nd,ne->kde", c, xa, xa)
  else:
    cumulative = jnp.cumsum(c * sqnorm, axis=1)
    total = cumulative[:, -1:]
    u = (jnp.arange(rows) + jax.random.uniform(key, (num_blocks, 1))) * (total / rows)
    idx = jnp.minimum(jax.vmap(jnp.searchsorted)(cumulative, u), n - 1)
    x = _rows(data, idx)  # [B, rows, D]
    xa = jnp.concatenate([x, jnp.ones(idx.shape + (1,), x.dtype)], axis=-1)
    xa = xa * jnp.sqrt(total / (rows * sqnorm[idx]))[..., None]
    gram = jnp.einsum("ksd,kse->kde", xa, xa)
  return _inverse_cholesky(gram, l2)


def _inverse_cholesky(gram, l2):
  """L⁻¹ with L Lᵀ = gram + 2·l2 on the weights' diagonal (+ a tiny jitter)."""
  dim = gram.shape[-1]
  ridge = jnp.concatenate([jnp.full((dim - 1,), 2.0 * l2), jnp.zeros((1,))])
  jitter = 1e-6 * jnp.trace(gram, axis1=1, axis2=2) / dim + 1e-12
  gram = gram + (ridge + jitter[:, None])[:, None, :] * jnp.eye(dim)
  chol = jnp.linalg.cholesky(gram)
  eye = jnp.broadcast_to(jnp.eye(dim, dtype=gram.dtype), gram.shape)
  inv_chol = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)
  fallback = eye / jnp.sqrt(jnp.diagonal(gram, axis1=1, axis2=2))[:, :, None]
  return jnp.where(jnp.all(jnp.isfinite(inv_chol)), inv_chol, fallback)


def _precondition(inv_chol, v):
  """M⁻¹ v for v [..., K, D+1] (M⁻¹ = inv_cholᵀ inv_chol per class; identity
  without blocks), centred over classes."""
  if inv_chol is None:
    y = v
  elif inv_chol.shape[0] == 1:
    y = (v @ inv_chol[0].T) @ inv_chol[0]
  else:
    y = jnp.einsum("ked,...ke->...kd", inv_chol,
                   jnp.einsum("kde,...ke->...kd", inv_chol, v))
  # The class mean as a product: as a reduction, XLA:CPU lays out the products
  # above for it and runs them ~25x slower.
  k = y.shape[-2]
  mean = jnp.einsum("k,...kd->...d", jnp.full((k,), 1.0 / k, y.dtype), y)
  return y - mean[..., None, :]


def _two_loop(grad, hist_s, hist_y, rho, count, inv_chol):
  """L-BFGS inverse-Hessian approximation times grad, with H0 = γ M⁻¹,
  γ = sᵀy / yᵀM⁻¹y of the newest pair (1 without pairs)."""
  memory = rho.shape[0]

  def backward(i, carry):
    q, alpha = carry
    j = (count - 1 - i) % memory
    a = rho[j] * jnp.vdot(hist_s[j], q)
    return q - a * hist_y[j], alpha.at[j].set(a)

  q, alpha = jax.lax.fori_loop(0, memory, backward, (grad, jnp.zeros_like(rho)))
  newest = (count - 1) % memory
  y_new = hist_y[newest]
  r, m_y = _precondition(inv_chol, jnp.stack([q, y_new]))  # One pass over M⁻¹.
  gamma = jnp.where(count > 0, jnp.vdot(hist_s[newest], y_new) / jnp.vdot(y_new, m_y),
                    1.0)

  def forward(i, r):
    j = (count + i) % memory  # Oldest first; empty slots have rho = 0.
    return r + (alpha[j] - rho[j] * jnp.vdot(hist_y[j], r)) * hist_s[j]

  return jax.lax.fori_loop(0, memory, forward, gamma * r)


def _lbfgs(theta, data, l2, sqnorm, key, inv_chol, *, tol, max_iter: int, rows: int,
           blocks: str, rebuild_every: int):
  """Preconditioned L-BFGS from theta [K, D+1]: returns (theta, iterations).

  One objective evaluation per loop step (so XLA compiles one): the step either
  accepts the pending trial point (Armijo, with float32 rounding of the sum
  tolerated), builds the curvature blocks if due (`blocks` "class" or "shared" and
  no `inv_chol` given: at the first point, then after rebuild_every · 1, 2, 4, ...
  iterations) and takes the next L-BFGS direction with step 1, or backtracks
  (quadratic interpolation, at most 30 times).
  """
  eps = jnp.finfo(theta.dtype).eps
  dim = theta.shape[1]
  build_blocks = inv_chol is None and blocks != "none"
  if build_blocks:
    num_blocks = theta.shape[0] if blocks == "class" else 1
    inv_chol = jnp.zeros((num_blocks, dim, dim), theta.dtype)
  build = functools.partial(_curvature_blocks, data=data, sqnorm=sqnorm, l2=l2,
                            rows=rows, shared=blocks == "shared")

  def body(state):
    (theta, value, grad, p, direction, slope, step, hist_s, hist_y, rho, count,
     inv_chol, it, tries, _) = state
    new_value, new_grad, new_p = _value_grad(theta + step * direction, data, l2)
    accept = new_value <= value + 1e-4 * step * slope + 16 * eps * jnp.abs(value)
    # Accepted: store the curvature pair and move.
    s, y = step * direction, new_grad - grad
    sy = jnp.vdot(s, y)
    keep = accept & (sy > 1e-10 * jnp.sqrt(jnp.vdot(s, s) * jnp.vdot(y, y)))
    j = count % rho.shape[0]
    hist_s = jnp.where(keep, hist_s.at[j].set(s), hist_s)
    hist_y = jnp.where(keep, hist_y.at[j].set(y), hist_y)
    rho = jnp.where(keep, rho.at[j].set(1.0 / jnp.where(keep, sy, 1.0)), rho)
    count = count + keep.astype(count.dtype)
    pick = lambda new, old: jnp.where(accept, new, old)
    theta, value, grad, p = (pick(theta + s, theta), pick(new_value, value),
                             pick(new_grad, grad), pick(new_p, p))
    it = it + accept.astype(it.dtype)
    if build_blocks:
      due = it == 0
      if rebuild_every:  # Later rebuilds sparser: the curvature settles.
        period = it // rebuild_every
        due |= (it % rebuild_every == 0) & (period > 0) & (period & (period - 1) == 0)
      inv_chol = jax.lax.cond(accept & due,
                              lambda: build(p, key=jax.random.fold_in(key, it)),
                              lambda: inv_chol)
    new_direction = -_two_loop(grad, hist_s, hist_y, rho, count, inv_chol)
    new_slope = jnp.vdot(grad, new_direction)
    restart = ~(new_slope < 0)  # Not a descent direction: drop the memory.
    new_direction = jnp.where(restart, -_precondition(inv_chol, grad), new_direction)
    rho = jnp.where(accept & restart, 0.0, rho)
    count = jnp.where(accept & restart, 0, count)
    new_slope = jnp.vdot(grad, new_direction)
    # Rejected: backtrack along the same direction.
    curvature = new_value - value - slope * step
    shorter = -slope * step * step / (2.0 * curvature)
    shorter = jnp.where(jnp.isfinite(shorter) & (curvature > 0),
                        jnp.clip(shorter, 0.1 * step, 0.5 * step), 0.1 * step)
    direction = pick(new_direction, direction)
    slope = pick(new_slope, slope)
    step = pick(jnp.ones_like(step), shorter)
    tries = jnp.where(accept, 0, tries + 1)
    converged = jnp.max(jnp.abs(grad)) <= tol
    done = (accept & (converged | (it >= max_iter))) | (tries >= 30)
    return (theta, value, grad, p, direction, slope, step, hist_s, hist_y, rho, count,
            inv_chol, it, tries, done)

  zero = jnp.zeros((), theta.dtype)
  hist = jnp.zeros((_MEMORY,) + theta.shape, theta.dtype)
  # The first step evaluates theta itself (step 0, accepted against value = inf).
  init = (theta, jnp.asarray(jnp.inf, theta.dtype), jnp.zeros_like(theta),
          jnp.zeros(data[2].shape, theta.dtype), jnp.zeros_like(theta), zero, zero,
          hist, hist, jnp.zeros((_MEMORY,), theta.dtype), jnp.zeros((), jnp.int32),
          inv_chol, jnp.asarray(-1, jnp.int32),
          jnp.zeros((), jnp.int32), jnp.asarray(False))
  state = jax.lax.while_loop(lambda state: ~state[-1], body, init)
  return state[0], state[-3]


def _prepare(w, theta, data):
  """Normalised weights, centred theta, ‖x̂_i‖² = ‖x_i‖² + 1."""
  xt, xn = data[0], data[1]
  x = xn if xn is not None else xt.T
  return w / jnp.sum(w), theta - jnp.mean(theta, axis=0), jnp.sum(x * x, axis=1) + 1.0


@functools.partial(jax.jit, static_argnames=("max_iter", "rows", "blocks"))
def _fit(xt, xn, y1, w, l2, theta, key, tol, *, max_iter: int, rows: int,
         blocks: str):
  """Fits theta = [W | b] ([K, D+1]) from theta; returns (theta, iterations)."""
  w, theta, sqnorm = _prepare(w, theta, (xt, xn))
  return _lbfgs(theta, (xt, xn, y1, w), l2, sqnorm, key, None, tol=tol,
                max_iter=max_iter, rows=rows, blocks=blocks,
                rebuild_every=_REBUILD_EVERY)


@jax.jit
def _warm_up(xt, xn, y1, w, l2, tol):
  """Cold start: `_WARMUP_ITERS` iterations from 0 on the rows given (a random
  subsample), preconditioned by the Hessian's class block at 0 (the same for all
  classes: (1/K)(1 − 1/K) times the weighted Gram matrix of [x, 1], from the
  first `_GRAM_ROWS` rows); `_fit` continues from there on all rows."""
  theta = jnp.zeros((y1.shape[0], xt.shape[0] + 1), xt.dtype)
  w, theta, sqnorm = _prepare(w, theta, (xt, xn))
  rows = min(_GRAM_ROWS, w.shape[0])
  x = (xn[:rows] if xn is not None else xt[:, :rows].T)
  xa = jnp.concatenate([x, jnp.ones((rows, 1), x.dtype)], axis=1)
  k = y1.shape[0]
  scale = (w.shape[0] / rows) * (1.0 / k) * (1.0 - 1.0 / k)
  gram = jnp.einsum("n,nd,ne->de", w[:rows] * scale, xa, xa)[None]
  return _lbfgs(theta, (xt, xn, y1, w), l2, sqnorm, None, _inverse_cholesky(gram, l2),
                tol=tol, max_iter=_WARMUP_ITERS, rows=0, blocks="shared",
                rebuild_every=0)[0]


@jax.jit
def _take(xn, y1, w, idx):
  x = xn[idx]
  return x.T, x, y1[:, idx], w[idx]


@jax.jit
def _transpose(x):
  return x.T


def device_data(x, y, num_classes: int):
  """(Xᵀ [D, N], X [N, D] or None, one-hot labels [K, N]) on the default device.
  XLA:CPU gets both layouts of X (see the module docstring); GPUs/TPUs one."""
  if isinstance(x, jax.Array):
    xn = x.astype(jnp.float32)
  else:
    xn = jax.device_put(np.asarray(x, np.float32))
  xt = _transpose(xn)
  y1 = jax.nn.one_hot(jnp.asarray(np.asarray(y)), num_classes, dtype=jnp.float32).T
  return xt, (xn if jax.default_backend() == "cpu" else None), y1


def _blocks_kind(n: int, d: int, k: int, rows: int) -> str:
  """"class" (a curvature block per class), "shared" (one for all) or "none".

  By cost in flops against a pass over the data (X·W and Rᵀ·X, 4·N·D·K): a build
  (sampled Gram matrices, inverse Cholesky factors) may cost up to 32 passes, a few
  times per fit (it saves far more iterations), and applying M⁻¹ at most one
  pass per iteration. With few examples for their features (N < ~2D) neither
  holds: plain L-BFGS then (the features are standardised).
  """
  d1 = d + 1
  one_pass = 4 * n * d * k
  if 8 * k * d1 * d1 > one_pass:
    return "none"
  build = 2 * min(n, rows) * d1 * d1 + 2 * d1 ** 3  # Flops for one block.
  if k * d1 * d1 <= _MAX_BLOCK_FLOATS and k * build <= 32 * one_pass:
    return "class"
  return "shared" if build <= 32 * one_pass else "none"


def solve(data, num_classes: int, l2: float, init, max_iter: int, weights, tol: float,
          seed: int = 0):
  """`fit_logistic_regression` on `device_data` (shared by a sweep's fits):
  ((w [D, K], b [K]), iterations)."""
  xt, xn, y1 = data
  d, n = xt.shape
  w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights,
                                                                      jnp.float32)
  if init is None:
    theta = jnp.zeros((num_classes, d + 1), jnp.float32)
  else:
    theta = jnp.concatenate([jnp.asarray(init[0], jnp.float32).T,
                             jnp.asarray(init[1], jnp.float32)[:, None]], axis=1)
  key = jax.random.PRNGKey(seed)
  # Weaker penalties leave more of the curvature to the data, where the sampled
  # blocks' error shows: twice the rows then (halves the iterations at 1e-6).
  rows = _BLOCK_ROWS if l2 >= _SMALL_L2 else 2 * _BLOCK_ROWS
  blocks = _blocks_kind(n, d, num_classes, rows)
  sub_rows = min(n, max(n // _WARMUP_FRACTION, _MIN_WARMUP_ROWS))
  # Cold start: warm up on a subsample. Not when it would be all the rows: `_fit`
  # then starts the same way (its first blocks, at W = 0, are that Gram matrix),
  # and one program less to compile (~3 s on CPU) matters for small probes.
  if init is None and blocks != "none" and sub_rows < n:
    # In random order: the warm-up's Gram matrix uses the first rows.
    idx = np.random.default_rng(seed).permutation(n)[:sub_rows]
    sub_xt, sub_xn, sub_y1, sub_w = _take(xn if xn is not None else xt.T, y1, w,
                                          jnp.asarray(idx, jnp.int32))
    theta = _warm_up(sub_xt, sub_xn if xn is not None else None, sub_y1, sub_w,
                     jnp.float32(l2), jnp.float32(tol))
  theta, iters = _fit(xt, xn, y1, w, jnp.float32(l2), theta, key, jnp.float32(tol),
                      max_iter=max_iter, rows=rows, blocks=blocks)
  return (theta[:, :-1].T, theta[:, -1]), int(iters)


def accuracy(params, x, y) -> float:
  """In NumPy: eager jnp ops would compile anew for every shape of x."""
  w, b = (np.asarray(p, np.float32) for p in params)
  return float(np.mean(np.argmax(np.asarray(x, np.float32) @ w + b, axis=-1) ==
                       np.asarray(y)))


def fit_logistic_regression(x, y, num_classes: int, l2: float, init=None,
                            max_iter: int = DEFAULT_MAX_ITER, weights=None,
                            tol: float = DEFAULT_TOL):
  """Returns ((w [D, K], b [K]), iterations) for features x [N, D], int labels y [N].

  Minimises mean cross-entropy + l2·‖w‖² (weighted mean with `weights` [N],
  default all 1; weight 0 drops an example). `init`: (w, b) to start from (no
  warm-up phase then). Stops when max |∇| <= `tol` or after `max_iter` full-data
  iterations (the count returned). The solution is centred over classes.
  """
  return solve(device_data(x, y, num_classes), num_classes, l2, init, max_iter,
               weights, tol)
