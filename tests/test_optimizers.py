"""LARS as in the Barlow Twins recipe (with and without momentum), AdamW masks,
warm-up + cosine schedule, parameter clamping."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tandem import optimizers


def _config(name, **opt):
  return ml_collections.ConfigDict(dict(
      input=dict(batch_size=512), total_steps=100,
      schedule=dict(warmup_steps=10, end_factor=0.0),
      optimizer=dict(name=name, weight_decay=0.1, **opt)))


PARAMS = {"dense": {"kernel": jnp.full((4, 3), 2.0), "bias": jnp.full((3,), 2.0)},
          "bn": {"scale": jnp.ones((3,)), "bias": jnp.zeros((3,))}}


def _first_update(config, grads):
  tx, _ = optimizers.make_optimizer(config)
  state = tx.init(PARAMS)
  for _ in range(2):  # Step 0 has learning rate 0 (warm-up from 0).
    updates, state = tx.update(grads, state, PARAMS)
  return updates


def test_lars_excludes_biases_and_norms_from_decay_and_adaptation():
  config = _config("lars", lr_per_256=0.2, bias_lr_per_256=0.0048, momentum=0.0,
                   trust_coefficient=0.001)
  zero = {k: {n: jnp.zeros_like(p) for n, p in v.items()} for k, v in PARAMS.items()}
  updates = _first_update(config, zero)
  # With zero gradients only weight decay moves the kernel; biases and norms stay.
  assert np.all(np.asarray(updates["dense"]["kernel"]) < 0)
  for leaf in (updates["dense"]["bias"], updates["bn"]["scale"], updates["bn"]["bias"]):
    np.testing.assert_array_equal(leaf, 0.0)

  ones = {k: {n: jnp.ones_like(p) for n, p in v.items()} for k, v in PARAMS.items()}
  updates = _first_update(config, ones)
  lr_at_1 = 0.0048 * 512 / 256 * 1 / 10  # Linear scaling, warm-up step 1 of 10.
  # Biases: plain SGD at their own learning rate, no trust ratio.
  np.testing.assert_allclose(updates["dense"]["bias"], -lr_at_1, rtol=1e-5)
  # Kernel: trust ratio = coef * |w| / |g + wd w|, at the weights' learning rate.
  w, g = 2.0 * np.ones((4, 3)), np.ones((4, 3))
  trust = 0.001 * np.linalg.norm(w) / np.linalg.norm(g + 0.1 * w)
  expected = -(0.2 * 512 / 256 / 10) * trust * (g + 0.1 * w)
  np.testing.assert_allclose(updates["dense"]["kernel"], expected, rtol=1e-5)


def test_adamw_decays_only_weights():
  config = _config("adamw", lr_per_256=1e-3)
  zero = {k: {n: jnp.zeros_like(p) for n, p in v.items()} for k, v in PARAMS.items()}
  updates = _first_update(config, zero)
  assert np.all(np.asarray(updates["dense"]["kernel"]) < 0)
  np.testing.assert_array_equal(updates["bn"]["scale"], 0.0)
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)


def test_schedule_warms_up_then_decays_to_end():
  sched = optimizers.schedule(1.0, total_steps=100, warmup_steps=10, end_factor=0.01)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(10)), 1.0)
  np.testing.assert_allclose(float(sched(100)), 0.01, rtol=1e-5)
  assert float(sched(50)) < float(sched(20))
  assert isinstance(optimizers.make_optimizer(_config("sgd", lr_per_256=0.1))[0],
                    optax.GradientTransformation)


def test_lars_momentum_accumulates_the_trust_scaled_updates():
  """Momentum 0.9 (the recipe's), against NumPy over three steps of warm-up. Weights
  (optax.lars, as SimCLR's LARS): v = 0.9 v + lr · trust · (g + wd w), w -= v.
  Biases (momentum SGD): v = 0.9 v + g, b -= bias_lr · v."""
  config = _config("lars", lr_per_256=0.2, bias_lr_per_256=0.0048, momentum=0.9,
                   trust_coefficient=0.001)
  tx, schedule = optimizers.make_optimizer(config)
  g = {k: {n: jnp.full_like(p, 0.5) for n, p in v.items()} for k, v in PARAMS.items()}
  params, state = PARAMS, tx.init(PARAMS)
  w = np.full((4, 3), 2.0)
  b = np.full((3,), 2.0)
  v_w, v_b = np.zeros_like(w), np.zeros_like(b)
  for step in range(3):
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    lr = float(schedule(step))
    bias_lr = 0.0048 * 512 / 256 * lr / (0.2 * 512 / 256)
    grad = 0.5 + 0.1 * w
    trust = 0.001 * np.linalg.norm(w) / np.linalg.norm(grad)
    v_w = 0.9 * v_w + lr * trust * grad
    v_b = 0.9 * v_b + 0.5
    np.testing.assert_allclose(updates["dense"]["kernel"], -v_w, rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["bias"], -bias_lr * v_b, rtol=1e-5)
    w, b = w - v_w, b - bias_lr * v_b
  # Momentum made a difference: without it the last update would be lr · trust · g.
  assert not np.allclose(v_w, lr * trust * grad, rtol=1e-3)


def test_clamp_params_keeps_the_parameter_in_its_box_and_its_gradient_alive():
  """CLIP's logit scale: the parameter is clamped after the update (open_clip), so
  a step that would cross the bound lands on it, and a gradient pointing back in
  moves it back in."""
  tx = optax.chain(optax.sgd(1.0), optimizers.clamp_params({"t": (0.0, 1.0)}))
  params = {"t": jnp.asarray(0.9), "w": jnp.asarray(5.0)}
  state = tx.init(params)
  updates, state = tx.update({"t": jnp.asarray(-0.5), "w": jnp.asarray(-10.0)},
                             state, params)
  params = optax.apply_updates(params, updates)
  assert float(params["t"]) == 1.0  # 0.9 + 0.5 clamped to 1.
  assert float(params["w"]) == 15.0  # Unbounded parameters are untouched.
  updates, state = tx.update({"t": jnp.asarray(0.25), "w": jnp.asarray(0.0)},
                             state, params)
  assert float(optax.apply_updates(params, updates)["t"]) == 0.75
