"""Optimizers and schedules built with optax from `config.optimizer` / `config.schedule`.

- `lars`: the Barlow Twins / SimCLR recipe. Weights get LARS (trust-ratio adaptation,
  weight decay, momentum 0.9); biases and normalisation parameters (every rank-1
  parameter, as in the reference code's `exclude_bias_and_norm`) get plain momentum
  SGD at their own learning rate, with neither weight decay nor adaptation. The
  weights' momentum accumulates lr-scaled updates (optax.lars, as SimCLR's LARS);
  the Barlow Twins reference applies the lr after the momentum: the two agree
  while the lr is constant and differ slightly during warm-up and decay.
- `adamw`: AdamW with weight decay masked off biases and norms (`eps` as the recipe
  says: CLIP uses 1e-6).
- `sgd`: momentum SGD (for tests).

Learning rates: every rate in `config.optimizer` names its convention, so that a
recipe cannot be misread (docs/PROTOCOLS.md, "Learning rates"):

- `lr_per_256`: scaled linearly by the global batch, peak = lr_per_256 × batch / 256
  (Barlow Twins, SimCLR, MAE give their rates this way);
- `lr_abs`: the peak rate itself, whatever the batch (CLIP and SigLIP give theirs
  this way, for batch 32,768).

Exactly one of the two is set; LARS's bias rate is `bias_lr_per_256` or
`bias_lr_abs` likewise. `peak_lr(config)` is the rate the run really uses. The
schedule is linear warm-up then cosine decay to `end_factor × peak`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

CONVENTIONS = ("lr_per_256", "lr_abs")


def is_weight(params):
  """True for parameters that get weight decay and LARS adaptation (rank > 1)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def schedule(peak: float, total_steps: int, warmup_steps: int,
             end_factor: float = 0.0) -> optax.Schedule:
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, 1), end_value=peak * end_factor)


def peak_lr(config, prefix: str = "") -> float:
  """The peak learning rate the run uses: `{prefix}lr_abs`, or
  `{prefix}lr_per_256` × global batch / 256. `prefix="bias_"` for LARS's biases."""
  opt = config.optimizer
  if prefix + "lr" in opt:
    raise ValueError(
        f"config.optimizer.{prefix}lr is ambiguous: set {prefix}lr_per_256 (scaled by "
        f"batch/256) or {prefix}lr_abs (the peak rate itself) instead.")
  given = [k for k in (prefix + c for c in CONVENTIONS) if opt.get(k) is not None]
  if len(given) != 1:
    raise ValueError(
        f"config.optimizer needs exactly one of {prefix}lr_per_256 and "
        f"{prefix}lr_abs; got {given or 'neither'}.")
  value = opt[given[0]]
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not math.isfinite(value) or value < 0):
    raise ValueError(
        f"config.optimizer.{given[0]}={value!r} must be a finite number >= 0 "
        "(a learning rate; 0 freezes the weights it applies to).")
  if given[0].endswith("lr_abs"):
    return float(value)
  return float(value) * config.input.batch_size / 256


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns the optimizer and the (weights) learning-rate schedule for logging."""
  opt = config.optimizer
  total, warmup = config.total_steps, config.schedule.warmup_steps
  end_factor = config.schedule.get("end_factor", 0.0)
  lr = schedule(peak_lr(config), total, warmup, end_factor)
  if opt.name == "lars":
    bias_lr = schedule(peak_lr(config, "bias_"), total, warmup, end_factor)
    tx = optax.multi_transform(
        {
            "weights": optax.lars(lr, weight_decay=opt.weight_decay,
                                  trust_coefficient=opt.get("trust_coefficient", 0.001),
                                  eps=0.0, momentum=opt.get("momentum", 0.9)),
            "biases_and_norms": optax.sgd(bias_lr, momentum=opt.get("momentum", 0.9)),
        },
        lambda params: jax.tree.map(
            lambda w: "weights" if w else "biases_and_norms", is_weight(params)))
  elif opt.name == "adamw":
    tx = optax.adamw(lr, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999),
                     eps=opt.get("eps", 1e-8), weight_decay=opt.weight_decay,
                     mask=is_weight)
  elif opt.name == "sgd":
    tx = optax.sgd(lr, momentum=opt.get("momentum", 0.9))
  else:
    raise ValueError(f"Unknown optimizer {opt.name!r}; choose lars, adamw or sgd.")
  if opt.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, lr


def clamp_params(bounds: dict[str, tuple[float, float]]) -> optax.GradientTransformation:
  """Keeps named top-level parameters inside [low, high] after each update.

  Chained after the optimizer, it shortens the update so that `params + updates`
  lands in the box: the parameter itself is clamped, as open_clip clamps CLIP's
  logit scale after each step, so its gradient stays alive (a clip in the forward
  pass would zero it for good once the parameter passed the bound).
  """

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("clamp_params needs the params: call update(g, s, params).")
    updates = dict(updates)
    for name, (low, high) in bounds.items():
      p = params[name]
      updates[name] = jnp.clip(p + updates[name], low, high) - p
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
