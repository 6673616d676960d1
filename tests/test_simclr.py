"""NT-Xent against a NumPy reference, temperature handling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.ssl import simclr as simclr_config
from tandem.ssl import simclr


def numpy_nt_xent(z1, z2, tau):
  z = np.concatenate([z1, z2])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  total = 0.0
  for i in range(n2):
    pos = (i + n2 // 2) % n2
    sims = np.array([z[i] @ z[k] / tau for k in range(n2) if k != i])
    total += -(z[i] @ z[pos] / tau) + np.log(np.sum(np.exp(sims)))
  return total / n2


def numpy_positive_top1(z1, z2):
  """Fraction of the 2N views whose most similar other view is their positive."""
  z = np.concatenate([z1, z2])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  sims = z @ z.T
  np.fill_diagonal(sims, -np.inf)
  return np.mean(np.argmax(sims, axis=1) == (np.arange(n2) + n2 // 2) % n2)


def test_loss_and_gradient_match_numpy():
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(2, 6, 4))
  z2[:3] = z1[:3] + 0.1 * z2[:3]  # Half the pairs close: top-1 neither 0 nor 1.
  expected_top1 = numpy_positive_top1(z1, z2)
  assert 0 < expected_top1 < 1
  for tau in (0.1, 0.5):
    loss, metrics = simclr.nt_xent_loss(jnp.asarray(z1), jnp.asarray(z2), tau)
    np.testing.assert_allclose(loss, numpy_nt_xent(z1, z2, tau), rtol=1e-5)
    np.testing.assert_allclose(metrics["positive_top1"], expected_top1)
  with jax.enable_x64():
    g = jax.grad(lambda a: simclr.nt_xent_loss(a, jnp.asarray(z2), 0.2)[0])(
        jnp.asarray(z1, jnp.float64))
  h, num = 1e-6, np.zeros_like(z1)
  for idx in np.ndindex(z1.shape):
    zp, zm = z1.copy(), z1.copy()
    zp[idx] += h
    zm[idx] -= h
    num[idx] = (numpy_nt_xent(zp, z2, 0.2) - numpy_nt_xent(zm, z2, 0.2)) / (2 * h)
  np.testing.assert_allclose(g, num, atol=1e-5)


def test_aligned_views_give_low_loss():
  z = np.eye(8)[:, :8] * 3.0
  aligned, _ = simclr.nt_xent_loss(jnp.asarray(z), jnp.asarray(z), 0.1)
  shuffled, _ = simclr.nt_xent_loss(jnp.asarray(z), jnp.asarray(z[::-1]), 0.1)
  assert aligned < 0.01 < shuffled


def test_non_positive_temperature_is_a_config_error():
  config = simclr_config.get_config("runlocal")
  config.simclr.temperature = 0.0
  with pytest.raises(ValueError, match="temperature must be > 0"):
    simclr.make_loss_fn(simclr.make_model(config), config)
