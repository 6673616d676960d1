"""Exact gradient accumulation (`config.grad_accum_steps`) for every objective."""
import os

import jax
import numpy as np
import pytest

from tandem import parallel
from tandem import train_state

from conftest import ROOT, init_objective, load_config, random_batch

# Batch-norm-free models (the CNN with norm="none", MAE's ViT; no BatchNorm in
# the projectors), where the accumulated gradient must equal the whole batch's.
CASES = ["barlow_twins", "simclr", "mae", "clip", "siglip"]
ON_8_DEVICES = ("barlow_twins", "clip")  # One two-view and one two-tower objective.


def _setup(name):
  model = "vit_tiny" if name == "mae" else "cnn"
  config = load_config(os.path.join(ROOT, f"configs/ssl/{name}.py"),
                       f"model={model},runlocal")
  if model == "cnn":
    config.model.norm = "none"
  if name in ("barlow_twins", "simclr"):
    config[name].projector_norm = "none"
  objective, net, params, variables = init_objective(config)
  return (objective.make_loss_fn(net, config), objective.make_stages(net, config),
          params, variables, random_batch(config))


@pytest.mark.parametrize("name", CASES)
def test_four_micro_batches_give_the_whole_batch_gradient(name):
  loss_fn, stages, params, state, batch = _setup(name)
  key = jax.random.key(3)

  @jax.jit
  def whole(params, batch):
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, state, batch, key)
    return loss, grads

  @jax.jit
  def accumulated(params, batch):
    loss, _, grads, _ = train_state.accumulate(stages, params, state, batch, key, 4)
    return loss, grads

  loss, grads = whole(params, batch)
  # Float32 sums in another order: 2e-4 relative, and 1e-5 of the largest gradient
  # entry for entries that nearly cancel (or are zero in exact arithmetic).
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  check = lambda got: jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5 * scale),
      got, jax.device_get(grads))
  loss4, grads4 = accumulated(params, batch)
  np.testing.assert_allclose(loss4, loss, rtol=1e-5)
  check(jax.device_get(grads4))
  assert scale > 0
  if name not in ON_8_DEVICES:
    return
  # On 8 fake devices, the batch split over them.
  mesh = parallel.make_mesh({"data": -1})
  sharded = parallel.global_batch(batch, mesh)
  loss8, grads8 = accumulated(jax.device_put(params, parallel.replicated(mesh)),
                              sharded)
  np.testing.assert_allclose(loss8, loss, rtol=1e-5)
  check(jax.device_get(grads8))


def test_naive_micro_batch_losses_would_differ():
  """The check above can fail: averaging four micro-batch Barlow Twins losses is
  another objective, with another gradient."""
  loss_fn, _, params, state, batch = _setup("barlow_twins")
  key = jax.random.key(3)
  grad = jax.jit(lambda b: jax.grad(lambda p: loss_fn(p, state, b, key)[0])(params))
  whole = grad(batch)
  parts = [grad(jax.tree.map(lambda x: x[i::4], batch)) for i in range(4)]
  naive = jax.tree.map(lambda *g: sum(g) / 4, *parts)
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12)),
      naive, whole))
  assert max(diffs) > 1e-2
