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

State an objective keeps besides the model's own collections (an EMA teacher, a
DINO centre) lives in the model state under `OBJECTIVE_STATE`: so it is sharded by
the parameters' rules (which match paths at their end), checkpointed with the
model, resumed exactly and restored by `tandem.load`, with nothing in the loop for
it. Two optional functions handle it:
- `init_state(params, model_state, config) -> model_state`: adds it at init (e.g.
  the teacher as a copy of the student: `tandem.ssl.ema`);
- `make_after_update(config) -> after_update | None`, with
  `after_update(params, model_state, step) -> model_state` run inside the jitted
  step after the optimizer update, on the new params (the teacher's EMA).
The loss function reads it from `model_state` and returns it, updated or not, in
the new model state (DINO's centre is updated from the loss's teacher outputs).
`weights(config, params, model_state, which)` gives the student's or the
teacher's (params, model state), which evaluations and `tandem.load` take.
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


OBJECTIVE_STATE = "objective_state"
TEACHER = "teacher"


def no_init_state(params, model_state, config):
  del params, config
  return model_state


def no_after_update(config):
  del config
  return None


def weights(config, params, model_state, which: str | None = None):
  """(params, model_state) of the student (the trained parameters) or of the EMA
  teacher; `which` defaults to the objective's `eval_weights` ("student" unless
  the config says otherwise: DINO evaluates its teacher)."""
  if which is None:
    which = config.get(config.objective, {}).get("eval_weights", "student")
  if which == "student":
    return params, model_state
  teacher = (model_state or {}).get(OBJECTIVE_STATE, {}).get(TEACHER)
  if which != TEACHER or teacher is None:
    raise ValueError(f"weights={which!r}: this {config.objective} checkpoint has "
                     + ("student and teacher weights." if teacher is not None else
                        "only student weights (no EMA teacher)."))
  return teacher["params"], {k: v for k, v in teacher.items() if k != "params"}


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  make_model: Callable[[Any], Any]
  make_loss_fn: Callable[[Any, Any], Callable]
  init_inputs: Callable[[Any], tuple]
  param_bounds: Callable[[Any], dict]
  make_stages: Callable[[Any, Any], tuple] | None = None
  init_state: Callable[[Any, Any, Any], Any] = no_init_state
  make_after_update: Callable[[Any], Callable | None] = no_after_update
  matryoshka: bool = False  # Takes config.matryoshka_dims (nested prefixes).


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
      make_stages=getattr(module, "make_stages", None),
      init_state=getattr(module, "init_state", no_init_state),
      make_after_update=getattr(module, "make_after_update", no_after_update),
      matryoshka=getattr(module, "MATRYOSHKA", False))
