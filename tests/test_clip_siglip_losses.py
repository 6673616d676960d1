"""CLIP and SigLIP losses: against NumPy transcriptions of the papers, gradients by
finite differences, the global batch on 8 devices == one device, and CLIP's logit
scale clamped as a parameter (not in the forward pass)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from numerics import numerical_grad
from tandem import optimizers
from tandem import parallel
from tandem.ssl import clip
from tandem.ssl import siglip


def normalized(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_clip(zimg, ztxt, t):
  """CLIP (Radford et al. 2021, Figure 3): symmetric cross-entropy, scale exp(t)."""
  logits = np.exp(t) * zimg @ ztxt.T
  n = len(logits)
  i2t = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(n)])
  t2i = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i]).sum())
                  for i in range(n)])
  return (i2t + t2i) / 2


def numpy_siglip_algorithm_1(img_emb, txt_emb, t_prime, b):
  """SigLIP (Zhai et al. 2023), Algorithm 1, line by line (embeddings already
  l2-normalised here)."""
  n = len(img_emb)
  t = np.exp(t_prime)
  logits = img_emb @ txt_emb.T * t + b
  labels = 2 * np.eye(n) - np.ones(n)
  log_sigmoid = -np.log1p(np.exp(-labels * logits))
  return -np.sum(log_sigmoid) / n


@pytest.mark.parametrize("t", [np.log(1 / 0.07), np.log(300.0)])
def test_clip_loss_and_gradients_match_numpy(t):
  """No clipping in the loss: beyond log 100 the scale still gets its gradient."""
  rng = np.random.default_rng(0)
  zimg, ztxt = normalized(rng, 6, 4), normalized(rng, 6, 4)
  loss, metrics = clip.clip_loss(jnp.asarray(zimg), jnp.asarray(ztxt), t)
  np.testing.assert_allclose(loss, numpy_clip(zimg, ztxt, t), rtol=1e-5)
  np.testing.assert_allclose(metrics["logit_scale"], np.exp(t), rtol=1e-5)
  with jax.enable_x64():
    grads = jax.grad(lambda a, b, s: clip.clip_loss(a, b, s)[0], argnums=(0, 1, 2))(
        jnp.asarray(zimg), jnp.asarray(ztxt), jnp.float64(t))
  refs = (numerical_grad(lambda a: numpy_clip(a, ztxt, t), zimg),
          numerical_grad(lambda b: numpy_clip(zimg, b, t), ztxt),
          numerical_grad(lambda s: numpy_clip(zimg, ztxt, s[0]), np.array([t]))[0])
  for g, ref in zip(grads, refs):
    np.testing.assert_allclose(g, ref, atol=1e-5)
  assert abs(refs[2]) > 1e-3  # The case where a forward-pass clip would give 0.


@pytest.mark.parametrize("t,b,n", [(np.log(10.0), -10.0, 5), (np.log(3.0), 0.5, 7)])
def test_siglip_loss_is_algorithm_1_normalised_by_batch(t, b, n):
  rng = np.random.default_rng(1)
  zimg, ztxt = normalized(rng, n, 3), normalized(rng, n, 3)
  loss, metrics = siglip.siglip_loss(jnp.asarray(zimg), jnp.asarray(ztxt), t, b)
  expected = numpy_siglip_algorithm_1(zimg, ztxt, t, b)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # Not the mean over the n² pairs (n times smaller).
  assert not np.isclose(float(loss), expected / n, rtol=1e-2)
  np.testing.assert_allclose(metrics["logit_bias"], b)
  with jax.enable_x64():
    grads = jax.grad(lambda *a: siglip.siglip_loss(*a)[0], argnums=(0, 1, 2, 3))(
        jnp.asarray(zimg), jnp.asarray(ztxt), jnp.float64(t), jnp.float64(b))
  f = numpy_siglip_algorithm_1
  refs = (numerical_grad(lambda a: f(a, ztxt, t, b), zimg),
          numerical_grad(lambda c: f(zimg, c, t, b), ztxt),
          numerical_grad(lambda s: f(zimg, ztxt, s[0], b), np.array([t])),
          numerical_grad(lambda s: f(zimg, ztxt, t, s[0]), np.array([b])))
  for g, ref in zip(grads, refs):
    np.testing.assert_allclose(np.reshape(g, ref.shape), ref, atol=1e-5)


def load_config(name, arg="dataset=fashion_mnist,runlocal"):
  return importlib.import_module(f"configs.ssl.{name}").get_config(arg)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_sharded_loss_and_grads_equal_single_device(name):
  """On 8 fake devices the loss uses every device's pairs as negatives: it equals
  the single-device loss over all 16 pairs, which differs from the mean of 8 losses
  over 2 pairs each (what device-local negatives would give)."""
  config = load_config(name)
  module = importlib.import_module(f"tandem.ssl.{name}")
  model = module.make_model(config)
  variables = dict(jax.jit(model.init)(jax.random.key(0), *module.init_inputs(config)))
  params = variables.pop("params")
  loss_fn = module.make_loss_fn(model, config)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (16, 28, 28, 1), np.uint8),
           "text": rng.integers(3, 259, (16, config.input.text.max_len), np.int32)}
  fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

  def run(mesh, batch):
    b = jax.device_put(batch, parallel.batch_sharding(mesh))
    p = jax.device_put(params, parallel.replicated(mesh))
    s = jax.device_put(variables, parallel.replicated(mesh))
    (loss, (metrics, _)), grads = fn(p, s, b, jax.random.key(1))
    return jax.device_get((loss, grads, metrics))

  mesh1 = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  loss8, grads8, metrics8 = run(parallel.make_mesh({"data": 8}), batch)
  loss1, grads1, metrics1 = run(mesh1, batch)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads8, grads1)
  np.testing.assert_allclose(metrics8["i2t_top1"], metrics1["i2t_top1"])
  local = [run(mesh1, jax.tree.map(lambda x: x[i:i + 2], batch))[0]
           for i in range(0, 16, 2)]
  assert not np.isclose(np.mean(local), loss1, rtol=1e-3)


def test_clip_logit_scale_parameter_is_clamped_after_each_update():
  """open_clip clamps the parameter to [0, log 100] after the optimizer step; t
  can come back from the bound when its gradient says so."""
  config = load_config("clip")
  bounds = clip.param_bounds(config)
  assert bounds == {"t": (0.0, pytest.approx(np.log(100.0)))}
  tx = optax.chain(optax.sgd(0.1), optimizers.clamp_params(bounds))
  params = {"t": jnp.asarray(np.log(100.0) - 0.01, jnp.float32)}
  state = tx.init(params)
  up, state = tx.update({"t": jnp.asarray(-1.0)}, state, params)  # Pushes t up.
  params = optax.apply_updates(params, up)
  np.testing.assert_allclose(params["t"], np.log(100.0), rtol=1e-6)
  up, state = tx.update({"t": jnp.asarray(1.0)}, state, params)  # And back down.
  np.testing.assert_allclose(optax.apply_updates(params, up)["t"],
                             np.log(100.0) - 0.1, rtol=1e-5)
