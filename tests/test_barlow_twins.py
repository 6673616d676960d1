"""Barlow Twins loss against a NumPy reference; sharded equals single-device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.ssl import barlow_twins as bt_config
from tandem import parallel
from tandem.ssl import barlow_twins


def numpy_barlow_twins(z1, z2, lambd, eps=1e-5):
  """Straight from the paper: standardise per dimension over the batch."""
  z1 = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + eps)
  z2 = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + eps)
  c = z1.T @ z2 / len(z1)
  loss = 0.0
  for i in range(c.shape[0]):
    for j in range(c.shape[1]):
      loss += (1 - c[i, j]) ** 2 if i == j else lambd * c[i, j] ** 2
  return loss


def numerical_grad(f, x, h=1e-5):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g


def test_loss_and_gradient_match_numpy():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 12, 5))
  z2 = z2 + 0.5 * z1  # Correlated views, so the diagonal is not trivial.
  lambd = 0.0051
  loss, metrics = barlow_twins.barlow_twins_loss(jnp.asarray(z1), jnp.asarray(z2),
                                                 lambd=lambd)
  np.testing.assert_allclose(loss, numpy_barlow_twins(z1, z2, lambd), rtol=1e-5)
  assert metrics["on_diag"] > 0 and metrics["off_diag"] > 0

  with jax.enable_x64():
    g1, g2 = jax.grad(lambda a, b: barlow_twins.barlow_twins_loss(a, b, lambd)[0],
                      argnums=(0, 1))(jnp.asarray(z1, jnp.float64), jnp.asarray(z2))
  np.testing.assert_allclose(
      g1, numerical_grad(lambda a: numpy_barlow_twins(a, z2, lambd), z1), atol=1e-4)
  np.testing.assert_allclose(
      g2, numerical_grad(lambda b: numpy_barlow_twins(z1, b, lambd), z2), atol=1e-4)


def test_identical_views_have_zero_invariance_term():
  z = np.random.default_rng(1).normal(size=(64, 4))
  _, metrics = barlow_twins.barlow_twins_loss(jnp.asarray(z), jnp.asarray(z))
  assert metrics["on_diag"] < 1e-3


@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_sharded_loss_grads_and_batch_stats_equal_single_device(model):
  """On 8 fake devices the global-batch loss equals the single-device one."""
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  config = bt_config.get_config(f"model={model},runlocal")
  model_def = barlow_twins.make_model(config)
  loss_fn = barlow_twins.make_loss_fn(model_def, config)
  images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), np.uint8)
  variables = model_def.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
  params = variables.pop("params")
  rng = jax.random.key(3)

  def run(mesh):
    batch = jax.device_put({"image": images}, parallel.batch_sharding(mesh))
    p = jax.device_put(params, parallel.replicated(mesh))
    s = jax.device_put(dict(variables), parallel.replicated(mesh))
    fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, (metrics, state)), grads = fn(p, s, batch, rng)
    return jax.device_get((loss, grads, state))

  mesh8 = parallel.make_mesh({"data": 8})
  mesh1 = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  loss8, grads8, state8 = run(mesh8)
  loss1, grads1, state1 = run(mesh1)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads8, grads1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state8, state1)
  # The statistics moved: they were computed from the batch, not left at init.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state1,
                       jax.device_get(dict(variables)))
  assert max(jax.tree.leaves(moved)) > 0
