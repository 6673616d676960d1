"""An exponential-moving-average (EMA) teacher, shared by BYOL, MoCo v3 and DINO.

The teacher is a copy of (part of) the student's params and batch statistics,
kept in the model state at `objectives.OBJECTIVE_STATE/teacher` (so the loop
shards, checkpoints and resumes it with the model: `tandem/ssl/objectives.py`).
After each optimizer update the teacher's params move towards the student's new
params,

    teacher ← m · teacher + (1 − m) · student,

with the momentum m rising from `base` to `final` over training by a cosine,
m(k) = final − (final − base) · (cos(π k / K) + 1) / 2 at update k of K (BYOL,
Grill et al. 2020, §3.2 and Appendix J; DINO, Caron et al. 2021, §3.1 and Appendix
B use the same schedule from 0.996 to 1). The teacher's batch statistics are its
own: it runs in training mode on the batch, as the reference implementations'
target networks do, which updates its running averages (used only to evaluate
the teacher).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from tandem.ssl import objectives


def momentum(step, total_steps: int, base: float, final: float = 1.0):
  """The cosine momentum schedule at update `step` (0-based) of `total_steps`."""
  progress = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
  return final - (final - base) * (jnp.cos(math.pi * progress) + 1.0) / 2.0


def teacher_variables(params, model_state, exclude=()) -> dict:
  """The teacher at init: a copy of the student's params and batch statistics,
  without the top-level modules in `exclude` (the student's predictor)."""
  copy = lambda tree: jax.tree.map(jnp.array, {k: v for k, v in tree.items()
                                                if k not in exclude})
  teacher = {"params": copy(params)}
  if "batch_stats" in model_state:
    teacher["batch_stats"] = copy(model_state["batch_stats"])
  return teacher


def get_teacher(model_state) -> dict:
  return model_state[objectives.OBJECTIVE_STATE][objectives.TEACHER]


def with_teacher(model_state, teacher) -> dict:
  """`model_state` with its teacher replaced (other objective state kept)."""
  own = dict(model_state.get(objectives.OBJECTIVE_STATE, {}))
  own[objectives.TEACHER] = teacher
  return {**model_state, objectives.OBJECTIVE_STATE: own}


def init_state(params, model_state, exclude=()) -> dict:
  return with_teacher(dict(model_state), teacher_variables(params, model_state,
                                                           exclude))


def make_after_update(total_steps: int, base: float, final: float = 1.0):
  """`after_update(params, model_state, step)`: the teacher's params moved towards
  the student's updated `params` with the momentum of update `step`."""

  def after_update(params, model_state, step):
    teacher = get_teacher(model_state)
    m = momentum(step, total_steps, base, final)
    moved = jax.tree.map(lambda t, p: m * t + (1.0 - m) * p, teacher["params"],
                         {k: params[k] for k in teacher["params"]})
    return with_teacher(model_state, {**teacher, "params": moved})

  return after_update


def split_teacher(model_state):
  """(the model's own collections, the teacher) out of the model state."""
  own = {k: v for k, v in model_state.items() if k != objectives.OBJECTIVE_STATE}
  return own, get_teacher(model_state)


def teacher_hooks(section: str, exclude=("predictor",)):
  """An objective's `(init_state, make_after_update)` for a teacher of the
  student's params less the modules in `exclude`, its momentum from
  `config.<section>.base_momentum` to `final_momentum` (default 1) over
  `total_steps` (BYOL, MoCo v3)."""

  def init(params, model_state, config):
    del config
    return init_state(params, model_state, exclude)

  def after(config):
    block = config[section]
    return make_after_update(config.total_steps, block.base_momentum,
                             block.get("final_momentum", 1.0))

  return init, after
