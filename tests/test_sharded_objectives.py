"""Objectives on 8 fake CPU devices equal the single-device computation."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tandem import parallel
from tandem.ssl import objectives


@pytest.mark.parametrize("objective,model,overrides", [
    ("barlow_twins", "cnn", {}), ("barlow_twins", "resnet18", {}),
    ("barlow_twins", "cnn", {"mixup_loss_scale": 4.0}), ("simclr", "cnn", {}),
    ("byol", "cnn", {}), ("vicreg", "cnn", {}), ("moco_v3", "cnn", {}),
    ("dino", "cnn", {})],
    ids=["barlow_twins-cnn", "barlow_twins-resnet18", "mixed_barlow_twins-cnn",
         "simclr-cnn", "byol-cnn", "vicreg-cnn", "moco_v3-cnn", "dino-cnn"])
def test_sharded_loss_grads_and_batch_stats_equal_single_device(objective, model,
                                                                overrides):
  """On 8 fake devices the global-batch loss equals the single-device one: the
  cross-correlation (Barlow Twins), the mixing permutation (Mixed Barlow Twins) and
  the negatives (SimCLR) span all devices."""
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  config = importlib.import_module(f"configs.ssl.{objective}").get_config(
      f"model={model},runlocal")
  config[objective].update(overrides)
  module = importlib.import_module(f"tandem.ssl.{objective}")
  model_def = module.make_model(config)
  loss_fn = module.make_loss_fn(model_def, config)
  images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), np.uint8)
  variables = jax.jit(model_def.init)(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
  params = variables.pop("params")
  variables = objectives.get_objective(objective).init_state(  # An EMA teacher.
      params, dict(variables), config)
  rng = jax.random.key(3)

  def run(mesh):
    batch = jax.device_put({"image": images}, parallel.batch_sharding(mesh))
    p = jax.device_put(params, parallel.replicated(mesh))
    s = jax.device_put(dict(variables), parallel.replicated(mesh))
    fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, (metrics, state)), grads = fn(p, s, batch, rng)
    return jax.device_get((loss, grads, state, metrics))

  mesh8 = parallel.make_mesh({"data": 8})
  mesh1 = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  loss8, grads8, state8, metrics8 = run(mesh8)
  loss1, grads1, state1, metrics1 = run(mesh1)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  if overrides.get("mixup_loss_scale"):
    assert metrics1["mixup_loss"] > 0
    np.testing.assert_allclose(metrics8["mixup_loss"], metrics1["mixup_loss"],
                               rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads8, grads1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state8, state1)
  # The statistics moved: they were computed from the batch, not left at init.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state1,
                       jax.device_get(dict(variables)))
  assert max(jax.tree.leaves(moved)) > 0
