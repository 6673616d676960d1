"""One lookup for the objectives in `tandem/ssl/`, with defaults for their optional parts.

An objective is a module `tandem.ssl.<name>` that defines `make_model(config)` and
`make_loss_fn(model, config)`, and optionally `init_inputs(config)` (the example
inputs `model.init` is called with; default: one image batch of the config's size)
and `param_bounds(config)` ({top-level param: (low, high)} boxes the parameters are
clamped into after each update; default: none), and `make_stages(model, config)`:
the loss as (prepare, embed, head) for exact gradient accumulation
(`train_state.accumulate`; None: the objective cannot accumulate). `get_objective(name)` returns them
all, so pretraining, `tandem.load`, feature extraction and the benchmarks look an
objective up the same way, and none of them needs the training program for it.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import jax.numpy as jnp


def default_init_inputs(config) -> tuple:
  """One float image batch [2, size, size, channels] of the config's input size."""
  size, channels = config.input.image_size, config.input.channels
  return (jnp.zeros((2, size, size, channels), jnp.float32),)


def no_param_bounds(config) -> dict:
  del config
  return {}


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  make_model: Callable[[Any], Any]
  make_loss_fn: Callable[[Any, Any], Callable]
  init_inputs: Callable[[Any], tuple]
  param_bounds: Callable[[Any], dict]
  make_stages: Callable[[Any, Any], tuple] | None = None


def get_objective(name: str) -> Objective:
  """The objective `tandem.ssl.<name>`; a clear error for an unknown name."""
  try:
    module = importlib.import_module(f"tandem.ssl.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"tandem.ssl.{name}":
      raise
    raise ValueError(f"Unknown objective {name!r} (config.objective): no module "
                     f"tandem.ssl.{name}.") from e
  missing = [f for f in ("make_model", "make_loss_fn") if not hasattr(module, f)]
  if missing:
    raise ValueError(f"tandem.ssl.{name} is not an objective: it lacks {missing}.")
  return Objective(
      name=name, make_model=module.make_model, make_loss_fn=module.make_loss_fn,
      init_inputs=getattr(module, "init_inputs", default_init_inputs),
      param_bounds=getattr(module, "param_bounds", no_param_bounds),
      make_stages=getattr(module, "make_stages", None))
