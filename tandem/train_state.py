"""The train state of every training loop (pretraining, fine-tuning, benchmarks).

Params live apart from the rest of the state, so that checkpoints, shardings and
evaluators can treat them on their own. The state is a dict of arrays:

  opt_state       the optax state of `tx`
  model_state     mutable model collections (batch statistics), possibly {}, and
                  the objective's own state (an EMA teacher: `tandem.ssl.objectives`)
  step            int32, the number of updates done
  rng             uint32 key data; step `s` draws from `fold_in(rng, s)`, so a resumed
                  run draws what the uninterrupted one would have
  nonfinite_step  int32, the first step whose loss, gradient norm or updated
                  parameters held a NaN/Inf, or -1

`make_step` builds the update that every loop jits (with `accumulate` for exact
gradient accumulation over micro-batches); `check_finite` turns a non-finite loss
into an error that names the first bad step; `resource_report` says what a
compiled step needs per device.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tandem import parallel

# loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state)).
LossFn = Callable[..., tuple[jax.Array, tuple[dict, Any]]]


class NonFiniteLossError(FloatingPointError):
  """The training loss, the gradient or the parameters became NaN or Inf."""


def all_finite(tree) -> jax.Array:
  """Whether every floating-point array of `tree` is free of NaN/Inf (traceable:
  one reduction per array, on device)."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def create(params, tx: optax.GradientTransformation, model_state, seed: int) -> dict:
  """The state of a run that starts at step 0 with `params` (traceable)."""
  return dict(opt_state=tx.init(params), model_state=model_state,
              step=jnp.zeros((), jnp.int32),
              rng=jax.random.key_data(jax.random.key(seed)),
              nonfinite_step=jnp.full((), -1, jnp.int32))


def accumulate(stages, params, model_state, batch, rng, k: int):
  """(loss, metrics, grads, new model state) of the whole batch, computed in `k`
  micro-batches, exactly, for losses that couple the batch (GradCache, Gao et al.
  2021; open_clip's `--accum-freq`).

  `stages = (prepare, embed, head)`: `prepare(batch, rng)` makes the model inputs
  of the whole batch (augmentations, masks: parameter-free); `embed(params,
  model_state, inputs) -> (embeddings, model_state)` runs the model on a
  micro-batch; `head(params, embeddings, rng) -> (loss, metrics)` is the loss on
  the whole batch's embeddings. The micro-batches are embedded without keeping
  activations, the loss and its gradient with respect to the embeddings are taken
  on the whole batch, then each micro-batch's forward pass is recomputed and its
  slice of that gradient back-propagated; the parameter gradient is the sum, equal
  to the whole batch's. Micro-batch j is rows j, j+k, j+2k, ... so that it is spread
  over every device of a batch-sharded array. Batch-norm statistics are per
  micro-batch (and running averages are updated k times a step): with batch norm
  the result is that of k smaller batches, not the whole one.
  """
  prepare, embed, head = stages
  inputs = prepare(batch, rng)
  split = lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  merge = lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])
  micro = jax.tree.map(split, inputs)
  frozen = jax.lax.stop_gradient(params)

  def forward(state, mb):
    emb, state = embed(frozen, state, mb)
    return state, emb

  new_state, embs = jax.lax.scan(forward, model_state, micro)
  (loss, metrics), (grads, emb_grads) = jax.value_and_grad(
      head, argnums=(0, 1), has_aux=True)(params, jax.tree.map(merge, embs), rng)

  def backward(grads, xs):
    mb, emb_grad = xs
    _, vjp = jax.vjp(lambda p: embed(p, model_state, mb)[0], params)
    return jax.tree.map(jnp.add, grads, vjp(emb_grad)[0]), None

  grads, _ = jax.lax.scan(backward, grads,
                          (micro, jax.tree.map(split, emb_grads)))
  return loss, metrics, grads, new_state


def make_step(loss_fn: LossFn, tx, *, lr_schedule: optax.Schedule | None = None,
              trainable: Callable[[Any], Any] | None = None, stages=None,
              accum_steps: int = 1, after_update: Callable | None = None):
  """`step(params, state, batch) -> (params, state, metrics)`: one update.

  `tx`: an optax transformation, or a function of the batch returning one (for a
  rate that changes without recompiling, e.g. a learning-rate sweep that passes the
  rate in the batch). `trainable(params)`: a bool tree; frozen leaves get no
  gradient (so no backward pass is spent on them) and pass through the update
  bit-identical. Metrics: the loss function's, `grad_norm` and, given
  `lr_schedule`, `lr`. `accum_steps` > 1: the gradient of the whole batch from that
  many micro-batches (`accumulate`, with the objective's `stages`).
  `after_update(params, model_state, step) -> model_state`: run on the updated
  params (an objective's EMA teacher: `tandem.ssl.objectives`).
  """
  if accum_steps > 1 and (stages is None or trainable is not None):
    raise ValueError("Gradient accumulation needs the objective's stages "
                     "(make_stages) and no trainable mask.")

  def step(params, state, batch):
    count = state["step"]
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), count)
    mask = trainable(params) if trainable is not None else None

    def loss(params):
      if mask is not None:
        params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p),
                              params, mask)
      return loss_fn(params, state["model_state"], batch, rng)

    if accum_steps > 1:
      value, metrics, grads, model_state = accumulate(
          stages, params, state["model_state"], batch, rng, accum_steps)
    else:
      (value, (metrics, model_state)), grads = jax.value_and_grad(
          loss, has_aux=True)(params)
    transform = tx if hasattr(tx, "update") else tx(batch)
    updates, opt_state = transform.update(grads, state["opt_state"], params)
    if mask is None:
      params = optax.apply_updates(params, updates)
    else:
      params = jax.tree.map(lambda p, u, t: p + u if t else p, params, updates, mask)
    if after_update is not None:
      model_state = after_update(params, model_state, count)
    metrics = {"loss": value, **metrics, "grad_norm": optax.tree.norm(grads)}
    if lr_schedule is not None:
      metrics["lr"] = lr_schedule(count)
    # The loss can stay finite while the weights overflow (batch norm hides them):
    # the gradient norm and the updated parameters are checked too.
    finite = (jnp.isfinite(value) & jnp.isfinite(metrics["grad_norm"])
              & all_finite(params))
    nonfinite = jnp.where((state["nonfinite_step"] < 0) & ~finite,
                          count, state["nonfinite_step"])
    state = dict(opt_state=opt_state, model_state=model_state, step=count + 1,
                 rng=state["rng"], nonfinite_step=nonfinite)
    return params, state, metrics

  return step


def jit_step(step, mesh, params_sharding, state_sharding, batch_sharding=None):
  """`step` jitted with explicit shardings; params and state are donated.

  `batch_sharding` defaults to splitting every batch array over the mesh's batch
  axes. Metrics come back replicated.
  """
  if batch_sharding is None:
    batch_sharding = parallel.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(params_sharding, state_sharding, batch_sharding),
                 out_shardings=(params_sharding, state_sharding,
                                parallel.replicated(mesh)),
                 donate_argnums=(0, 1))


def first_nonfinite_step(state) -> int | None:
  """The first step whose loss, gradient or parameters held a NaN/Inf, or None
  (a host sync)."""
  step = int(state["nonfinite_step"])
  return step if step >= 0 else None


def check_finite(state, what: str) -> None:
  """Raises `NonFiniteLossError` naming the first bad step; `what` says what to do."""
  step = first_nonfinite_step(state)
  if step is not None:
    raise NonFiniteLossError(f"The loss, gradient or parameters became non-finite "
                             f"at step {step}. {what}")


def _per_device_bytes(tree) -> int:
  """Bytes of `tree`'s arrays on one device (the first addressable shard of each)."""
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree)
             if hasattr(x, "addressable_shards"))


def resource_report(lowered, compiled, params, state) -> dict[str, float]:
  """What a run needs per device, before it starts: parameters (count and MB on one
  device), optimizer state MB, XLA's memory analysis of the `compiled` step
  (arguments, outputs, the part of the outputs aliased to donated arguments,
  temporaries, peak where XLA reports it) and the FLOPs per step (over all devices)
  from the cost analysis of the `lowered`, not yet optimised, step: on GPUs the
  optimised module's analysis leaves out most matmuls and convolutions, which
  became library calls (cuBLAS, cuDNN), so it is not used (BENCHMARKS.md)."""
  mb = lambda n: float(n) / 2**20
  out = {"params": float(sum(np.size(x) for x in jax.tree.leaves(params))),
         "params_mb_per_device": mb(_per_device_bytes(params)),
         "opt_state_mb_per_device": mb(_per_device_bytes(state["opt_state"]))}
  memory = compiled.memory_analysis()
  if memory is not None:
    for key in ("argument", "output", "alias", "temp", "peak_memory"):
      value = getattr(memory, f"{key}_size_in_bytes" if key != "peak_memory"
                      else "peak_memory_in_bytes", None)
      if value:
        out[f"step_{key.replace('_memory', '')}_mb_per_device"] = mb(value)
  flops = step_flops(lowered)
  if flops is not None:
    out["step_flops"] = flops
  return out


def step_flops(lowered) -> float | None:
  """FLOPs of a lowered step from XLA's cost analysis of the not yet optimised
  module, or None where the backend gives none (the GPU backend in jax 0.11); the
  module is the same on every backend, so a CPU's count holds for a GPU's run."""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def format_report(report: dict[str, float]) -> str:
  """One line of `resource_report`."""
  parts = [f"{report['params']:,.0f} params"]
  parts += [f"{k.removesuffix('_mb_per_device').replace('_', ' ')} "
            f"{v:,.1f} MB" for k, v in report.items() if k.endswith("_mb_per_device")]
  if "step_flops" in report:
    parts.append(f"{report['step_flops'] / 1e9:,.2f} GFLOP/step")
  return "per device: " + ", ".join(parts)
