"""Mixed precision (`config.precision`): bfloat16 compute, float32 parameters,
statistics and losses, for every objective."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tandem import optimizers
from tandem import train_state

from configs import common
from conftest import ROOT, init_objective, load_config, random_batch

FIXED_VIEW = common.view(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0)

# Every objective, with the backbone its CPU recipe trains (MAE needs a ViT).
CASES = [("barlow_twins", "cnn"), ("simclr", "cnn"), ("mae", "vit_tiny"),
         ("clip", "cnn"), ("siglip", "vit_tiny")]
# Relative gap of the bf16 loss at init from the float32 one. Measured on these
# runlocal models: 0.03% (MAE) to 0.31% (CLIP); bf16 keeps 8 bits of mantissa.
LOSS_RTOL = 2e-2


def _setup(name, model, precision, **fields):
  config = load_config(os.path.join(ROOT, f"configs/ssl/{name}.py"),
                       f"model={model},runlocal")
  config.precision = precision
  for key, value in fields.items():
    config[key] = value
  objective, net, params, variables = init_objective(config)
  return config, net, params, variables, objective.make_loss_fn(net, config)


@pytest.mark.parametrize("name,model", CASES, ids=[c[0] for c in CASES])
def test_bf16_loss_at_init_is_close_to_float32_and_params_stay_float32(name, model):
  losses = {}
  for precision in ("float32", "bfloat16"):
    config, _, params, state, loss_fn = _setup(name, model, precision)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params)), precision
    loss, (_, new_state) = jax.jit(loss_fn)(params, state, random_batch(config),
                                            jax.random.key(1))
    assert loss.dtype == jnp.float32
    # Batch statistics stay float32 too.
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(new_state))
    losses[precision] = float(loss)
  assert losses["bfloat16"] != losses["float32"]  # bf16 really ran.
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=LOSS_RTOL)


def test_bf16_computes_in_bf16_and_hands_float32_to_the_losses():
  images = lambda config: jnp.zeros((4, config.input.image_size,
                                     config.input.image_size, config.input.channels))
  # Jitted: op-by-op, these forward passes take half a minute.
  config, net, params, state, _ = _setup("barlow_twins", "cnn", "bfloat16")
  out, _ = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(
      {"params": params, **state}, images(config))
  assert out["stage1"].dtype == jnp.bfloat16  # The backbone's activations.
  assert out["pre_logits"].dtype == jnp.float32  # Features for probes (models/).
  assert out["z"].dtype == jnp.float32  # What the cross-correlation is made of.
  config, net, params, state, _ = _setup("clip", "cnn", "bfloat16")
  tokens = jnp.full((4, config.input.text.max_len), 5, jnp.int32)
  out = jax.jit(net.apply)({"params": params, **state}, images(config), tokens)
  assert out["zimg"].dtype == out["ztxt"].dtype == jnp.float32  # Logits in f32.
  config, net, params, state, _ = _setup("mae", "vit_tiny", "bfloat16")
  out = jax.jit(lambda v, x: net.apply(v, x, mask_rng=jax.random.key(0)))(
      {"params": params, **state}, images(config))
  assert out["encoded"].dtype == jnp.bfloat16
  assert out["pred"].dtype == jnp.float32  # Target normalisation and loss in f32.


def _step_text(precision):
  config, _, params, state, loss_fn = _setup("barlow_twins", "cnn", precision)
  tx, lr = optimizers.make_optimizer(config)
  state = train_state.create(params, tx, state, 0)
  step = jax.jit(train_state.make_step(loss_fn, tx, lr_schedule=lr))
  return step.lower(params, state, random_batch(config)).as_text()


def test_compiled_step_has_bf16_dots_and_convs_only_when_asked():
  ops = lambda text: [l for l in text.splitlines()
                      if "stablehlo.convolution" in l or "stablehlo.dot_general" in l]
  bf16_ops = ops(_step_text("bfloat16"))
  assert bf16_ops and sum("bf16" in l for l in bf16_ops) >= len(bf16_ops) // 2
  assert any("convolution" in l and "bf16" in l for l in bf16_ops)
  assert any("dot_general" in l and "bf16" in l for l in bf16_ops)
  f32_text = _step_text("float32")
  assert ops(f32_text) and "bf16" not in f32_text


def test_short_bf16_training_reduces_the_loss_like_float32():
  finals = {}
  for precision in ("float32", "bfloat16"):
    # Fixed views of a fixed batch at a higher rate: the loss then falls steadily.
    config, _, params, state, loss_fn = _setup(
        "barlow_twins", "cnn", precision,
        aug=dict(view1=FIXED_VIEW, view2=FIXED_VIEW),
        optimizer=dict(name="adamw", lr_per_256=0.02, weight_decay=0.0),
        schedule=dict(warmup_steps=0, end_factor=1.0))
    tx, lr = optimizers.make_optimizer(config)
    state = train_state.create(params, tx, state, 0)
    step = jax.jit(train_state.make_step(loss_fn, tx, lr_schedule=lr))
    batch, losses = random_batch(config, 32), []
    for _ in range(8):
      params, state, metrics = step(params, state, batch)
      losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0], (precision, losses)
    finals[precision] = losses[-1]
  np.testing.assert_allclose(finals["bfloat16"], finals["float32"], rtol=0.1)
