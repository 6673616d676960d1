"""VICReg's loss against a NumPy transcription of the authors' main_vicreg.py."""
import jax
import jax.numpy as jnp
import numpy as np

from tandem.ssl import vicreg


def numpy_vicreg(x, y, sim=25.0, std=25.0, cov=1.0):
  n, d = x.shape
  repr_loss = np.mean((x - y) ** 2)
  x, y = x - x.mean(0), y - y.mean(0)
  std_x = np.sqrt(x.var(0, ddof=1) + 1e-4)
  std_y = np.sqrt(y.var(0, ddof=1) + 1e-4)
  std_loss = np.mean(np.maximum(1 - std_x, 0)) / 2 + np.mean(np.maximum(1 - std_y, 0)) / 2
  off = lambda c: c[~np.eye(d, dtype=bool)]
  cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)
  cov_loss = (off(cov_x) ** 2).sum() / d + (off(cov_y) ** 2).sum() / d
  return sim * repr_loss + std * std_loss + cov * cov_loss


def test_loss_and_gradient_match_numpy():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 8, 5)) * np.array([0.3, 2.0, 0.8, 1.0, 0.1])
  loss, metrics = vicreg.vicreg_loss(jnp.asarray(x), jnp.asarray(y))
  np.testing.assert_allclose(loss, numpy_vicreg(x, y), rtol=1e-5)
  assert metrics["variance"] > 0  # Some dimensions below unit std: the hinge is on.
  with jax.enable_x64():
    g = jax.grad(lambda a: vicreg.vicreg_loss(a, jnp.asarray(y))[0])(
        jnp.asarray(x, jnp.float64))
  h, num = 1e-6, np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[idx] += h
    minus[idx] -= h
    num[idx] = (numpy_vicreg(plus, y) - numpy_vicreg(minus, y)) / (2 * h)
  np.testing.assert_allclose(g, num, atol=1e-5)
