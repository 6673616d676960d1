"""Barlow Twins loss and gradient against a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np

from numerics import numerical_grad
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


def numpy_mixup_regularizer(z1, z2, zm, perm, alpha, eps=1e-5):
  """Mixed Barlow Twins' term, written out element by element."""
  std = lambda z: (z - z.mean(0)) / np.sqrt(z.var(0) + eps)
  z1, z2, zm = std(z1), std(z2), std(zm)
  n, d = z1.shape
  total = 0.0
  for z in (z1, z2):
    for i in range(d):
      for j in range(d):
        c_mix = sum(zm[k, i] * z[k, j] for k in range(n)) / n
        target = sum(alpha * z1[k, i] * z[k, j] + (1 - alpha) * z2[perm[k], i]
                     * z[k, j] for k in range(n)) / n
        total += (c_mix - target) ** 2
  return total


def test_mixup_regularizer_and_gradient_match_numpy():
  rng = np.random.default_rng(2)
  z1, z2, zm = rng.normal(size=(3, 10, 4))
  perm, alpha = rng.permutation(10), 0.3
  value = barlow_twins.mixup_regularizer(jnp.asarray(z1), jnp.asarray(z2),
                                         jnp.asarray(zm), jnp.asarray(perm), alpha)
  np.testing.assert_allclose(value, numpy_mixup_regularizer(z1, z2, zm, perm, alpha),
                             rtol=1e-5)
  with jax.enable_x64():
    grad = jax.grad(lambda m: barlow_twins.mixup_regularizer(
        jnp.asarray(z1), jnp.asarray(z2), m, jnp.asarray(perm), alpha))(
            jnp.asarray(zm, jnp.float64))
  np.testing.assert_allclose(grad, numerical_grad(
      lambda m: numpy_mixup_regularizer(z1, z2, m, perm, alpha), zm), atol=1e-4)

