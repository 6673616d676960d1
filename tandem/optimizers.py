"""Optimizers and schedules built with optax from `config.optimizer` / `config.schedule`.

- `lars`: the Barlow Twins recipe. Weights get LARS (trust-ratio adaptation, weight
  decay, momentum 0.9); biases and normalisation parameters (every rank-1 parameter,
  as in the reference code's `exclude_bias_and_norm`) get plain momentum SGD at their
  own learning rate, with neither weight decay nor adaptation.
- `adamw`: AdamW with weight decay masked off biases and norms.
- `sgd`: momentum SGD (for fine-tuning and tests).

Learning rates in the config are per 256 examples and scaled linearly by the global
batch size (`lr = base_lr * batch / 256`), as in the papers' recipes. The schedule is
linear warm-up then cosine decay to `end_factor * lr`.
"""
from __future__ import annotations

import jax
import optax


def is_weight(params):
  """True for parameters that get weight decay and LARS adaptation (rank > 1)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def schedule(peak: float, total_steps: int, warmup_steps: int,
             end_factor: float = 0.0) -> optax.Schedule:
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, 1), end_value=peak * end_factor)


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns the optimizer and the (weights) learning-rate schedule for logging."""
  opt = config.optimizer
  scale = config.input.batch_size / 256
  total, warmup = config.total_steps, config.schedule.warmup_steps
  end_factor = config.schedule.get("end_factor", 0.0)
  lr = schedule(opt.lr * scale, total, warmup, end_factor)
  if opt.name == "lars":
    bias_lr = schedule(opt.bias_lr * scale, total, warmup, end_factor)
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
                     weight_decay=opt.weight_decay, mask=is_weight)
  elif opt.name == "sgd":
    tx = optax.sgd(lr, momentum=opt.get("momentum", 0.9))
  else:
    raise ValueError(f"Unknown optimizer {opt.name!r}; choose lars, adamw or sgd.")
  if opt.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, lr
