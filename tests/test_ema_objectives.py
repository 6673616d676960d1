"""The EMA teacher (tandem/ssl/ema.py) and the objectives built on it: losses
against NumPy, the momentum schedule and update, resume == uninterrupted with the
teacher, and student or teacher weights from `tandem.load`."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tandem
from tandem.ssl import byol
from tandem.ssl import dino
from tandem.ssl import ema
from tandem.ssl import moco_v3
from tandem.ssl import objectives
from tandem.ssl import train

from conftest import NO_EVALS, ROOT, load_config, sigterm_when_logged


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_byol(p1, p2, t1, t2):
  """Grill et al. 2020, Eq. 2, symmetrised: ‖q̄ − z̄'‖² with the targets crossed."""
  term = lambda p, t: np.mean(np.sum((_unit(p) - _unit(t)) ** 2, axis=1))
  return term(p1, t2) + term(p2, t1)


def test_byol_loss_and_gradient_match_numpy():
  p1, p2, t1, t2 = np.random.default_rng(0).normal(size=(4, 6, 5))
  loss, metrics = byol.byol_loss(*map(jnp.asarray, (p1, p2, t1, t2)))
  np.testing.assert_allclose(loss, numpy_byol(p1, p2, t1, t2), rtol=1e-5)
  np.testing.assert_allclose(metrics["cosine"], 1 - numpy_byol(p1, p2, t1, t2) / 4,
                             rtol=1e-5)
  with jax.enable_x64():
    g = jax.grad(lambda a: byol.byol_loss(a, *map(jnp.asarray, (p2, t1, t2)))[0])(
        jnp.asarray(p1, jnp.float64))
  h, num = 1e-6, np.zeros_like(p1)
  for idx in np.ndindex(p1.shape):
    plus, minus = p1.copy(), p1.copy()
    plus[idx] += h
    minus[idx] -= h
    num[idx] = (numpy_byol(plus, p2, t1, t2) - numpy_byol(minus, p2, t1, t2)) / (2 * h)
  np.testing.assert_allclose(g, num, atol=1e-6)


def numpy_moco_v3(q1, q2, k1, k2, tau):
  """The authors' moco/builder.py contrastive_loss, symmetrised, on one device."""
  def ctr(q, k):
    logits = _unit(q) @ _unit(k).T / tau
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -np.mean(np.diag(log_probs)) * 2 * tau
  return ctr(q1, k2) + ctr(q2, k1)


def test_moco_v3_loss_and_gradient_match_numpy():
  q1, q2, k1, k2 = np.random.default_rng(1).normal(size=(4, 6, 5))
  for tau in (0.2, 1.0):
    loss, _ = moco_v3.moco_v3_loss(*map(jnp.asarray, (q1, q2, k1, k2)), tau)
    np.testing.assert_allclose(loss, numpy_moco_v3(q1, q2, k1, k2, tau), rtol=1e-5)
  with jax.enable_x64():
    g = jax.grad(lambda a: moco_v3.moco_v3_loss(
        a, *map(jnp.asarray, (q2, k1, k2)), 0.2)[0])(jnp.asarray(q1, jnp.float64))
  h, num = 1e-6, np.zeros_like(q1)
  for idx in np.ndindex(q1.shape):
    plus, minus = q1.copy(), q1.copy()
    plus[idx] += h
    minus[idx] -= h
    num[idx] = (numpy_moco_v3(plus, q2, k1, k2, 0.2)
                - numpy_moco_v3(minus, q2, k1, k2, 0.2)) / (2 * h)
  np.testing.assert_allclose(g, num, atol=1e-6)


def numpy_dino(student, teacher, center, tau_s, tau_t):
  """The authors' main_dino.py DINOLoss.forward, on one device (without the centre
  update): teacher softmax of centred outputs, cross-entropy against every other
  crop's student log-softmax, averaged over the pairs."""
  softmax = lambda x: np.exp(x - x.max(1, keepdims=True)) / np.exp(
      x - x.max(1, keepdims=True)).sum(1, keepdims=True)
  total, n = 0.0, 0
  for iq, t in enumerate(teacher):
    q = softmax((t - center) / tau_t)
    for v, s in enumerate(student):
      if v == iq:
        continue
      log_p = np.log(softmax(s / tau_s))
      total += np.mean(np.sum(-q * log_p, axis=-1))
      n += 1
  return total / n


def test_dino_loss_centre_and_temperature_match_numpy():
  rng = np.random.default_rng(2)
  student = list(rng.normal(size=(4, 6, 8)))  # 2 global crops, 2 local.
  teacher = list(rng.normal(size=(2, 6, 8)))
  center = rng.normal(size=8) * 0.1
  loss, _, batch_center = dino.dino_loss(
      [jnp.asarray(s) for s in student], [jnp.asarray(t) for t in teacher],
      jnp.asarray(center), 0.1, 0.04)
  np.testing.assert_allclose(loss, numpy_dino(student, teacher, center, 0.1, 0.04),
                             rtol=1e-5)
  np.testing.assert_allclose(batch_center, np.concatenate(teacher).mean(0),
                             rtol=1e-5, atol=1e-7)
  config = load_config(os.path.join(ROOT, "configs/ssl/dino.py"))
  temps = [float(dino.teacher_temperature(k, config)) for k in (0, 250, 500, 1000)]
  np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)


def test_momentum_schedule_and_update_are_the_papers():
  # BYOL §3.2: tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2.
  for k, expected in ((0, 0.996), (50, 0.998), (100, 1.0), (25, None)):
    m = float(ema.momentum(k, 100, 0.996))
    if expected is None:
      expected = 1 - 0.004 * (np.cos(np.pi * 0.25) + 1) / 2
    np.testing.assert_allclose(m, expected, rtol=1e-6)
  params = {"encoder": {"w": jnp.full((3,), 2.0)}, "predictor": {"w": jnp.ones(2)}}
  state = ema.init_state(params, {"batch_stats": {"encoder": {"m": jnp.ones(3)}}},
                         exclude=("predictor",))
  teacher = ema.get_teacher(state)
  assert sorted(teacher["params"]) == ["encoder"]  # No predictor in the teacher.
  new = {"encoder": {"w": jnp.full((3,), 4.0)}, "predictor": {"w": jnp.zeros(2)}}
  moved = ema.make_after_update(100, 0.9)(new, state, 0)
  np.testing.assert_allclose(ema.get_teacher(moved)["params"]["encoder"]["w"],
                             0.9 * 2.0 + 0.1 * 4.0, rtol=1e-6)
  assert ema.get_teacher(moved)["batch_stats"] is teacher["batch_stats"]


EMA_OBJECTIVES = ["byol", "moco_v3", "dino"]


@pytest.mark.parametrize("objective", EMA_OBJECTIVES)
def test_resume_with_the_teacher_equals_uninterrupted_and_both_weights_load(
    objective, tiny_data_dir, tmp_path, monkeypatch):
  def config():
    c = load_config(os.path.join(ROOT, f"configs/ssl/{objective}.py"), "runlocal")
    c.update(data_dir=tiny_data_dir, total_steps=6, **NO_EVALS)
    c.checkpoint.every = 4
    return c

  full, split = tmp_path / "full", tmp_path / "split"
  train.train(config(), str(full))
  stop = sigterm_when_logged(monkeypatch, 3)
  assert train.train(config(), str(split)) == {"interrupted_at": 3,
                                               "signal": signal.SIGTERM}
  stop()
  assert train.train(config(), str(split))["step"] == 6
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  for weights in ("student", "teacher"):
    a, b = (tandem.load(str(w), weights=weights) for w in (split, full))
    jax.tree.map(close, jax.device_get(a.params), jax.device_get(b.params))
    jax.tree.map(close, jax.device_get(a.model_state), jax.device_get(b.model_state))
  student = tandem.load(str(full), weights="student")
  teacher = tandem.load(str(full), weights="teacher")
  own = student.model_state[objectives.OBJECTIVE_STATE][objectives.TEACHER]
  jax.tree.map(close, jax.device_get(teacher.params), jax.device_get(own["params"]))
  # The teacher moved from its initial copy, and lags the student.
  gap = jax.tree.map(lambda t, s: float(jnp.abs(t - s).max()), teacher.params,
                     {k: student.params[k] for k in teacher.params})
  assert 0 < max(jax.tree.leaves(gap))
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), np.uint8)
  assert not np.allclose(student.embed(images), teacher.embed(images))
  if objective == "dino":  # The centre moved, and the step counter is the run's.
    own = student.model_state[objectives.OBJECTIVE_STATE]
    assert int(own["step"]) == 6 and float(jnp.abs(own["center"]).max()) > 0
    assert tandem.load(str(full)).params is not None  # Default: the teacher.
