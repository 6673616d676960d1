"""Reference helpers shared by the loss tests."""
import numpy as np


def numerical_grad(f, x, h=1e-6):
  """Central finite differences of the scalar function `f` at `x` (float64)."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g
