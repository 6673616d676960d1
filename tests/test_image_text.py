"""CLIP and SigLIP: losses against NumPy, sharded == single device, zero-shot and
retrieval metrics against brute force, configs run, bad input is refused clearly."""
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import prepare_tiny_captioned_shapes
from numerics import numerical_grad
from tandem import parallel
from tandem.ssl import clip
from tandem.ssl import siglip
from tandem.ssl import train
from tandem.transfer import retrieval
from tandem.transfer import zeroshot


def normalized(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_clip(zimg, ztxt, t, max_scale=100.0):
  scale = min(np.exp(t), max_scale)
  logits = scale * zimg @ ztxt.T
  n = len(logits)
  i2t = -np.mean([logits[i, i] - np.log(np.exp(logits[i]).sum()) for i in range(n)])
  t2i = -np.mean([logits[i, i] - np.log(np.exp(logits[:, i]).sum())
                  for i in range(n)])
  return (i2t + t2i) / 2


def numpy_siglip(zimg, ztxt, t, b):
  n = len(zimg)
  total = 0.0
  for i in range(n):
    for j in range(n):
      z = 1.0 if i == j else -1.0
      logit = np.exp(t) * zimg[i] @ ztxt[j] + b
      total += np.log(1.0 / (1.0 + np.exp(-z * logit)))
  return -total / n**2


@pytest.mark.parametrize("t", [np.log(1 / 0.07), np.log(50.0), np.log(300.0)])
def test_clip_loss_and_gradients_match_numpy(t):
  rng = np.random.default_rng(0)
  zimg, ztxt = normalized(rng, 6, 4), normalized(rng, 6, 4)
  loss, metrics = clip.clip_loss(jnp.asarray(zimg), jnp.asarray(ztxt), t)
  np.testing.assert_allclose(loss, numpy_clip(zimg, ztxt, t), rtol=1e-5)
  np.testing.assert_allclose(metrics["logit_scale"], min(np.exp(t), 100.0),
                             rtol=1e-5)
  with jax.enable_x64():
    gi, gt_, gs = jax.grad(lambda a, b, s: clip.clip_loss(a, b, s)[0],
                           argnums=(0, 1, 2))(jnp.asarray(zimg), jnp.asarray(ztxt),
                                              jnp.float64(t))
  np.testing.assert_allclose(gi, numerical_grad(
      lambda a: numpy_clip(a, ztxt, t), zimg), atol=1e-5)
  np.testing.assert_allclose(gt_, numerical_grad(
      lambda b: numpy_clip(zimg, b, t), ztxt), atol=1e-5)
  # The scale is clipped at 100: beyond it the temperature gets no gradient.
  expected = 0.0 if np.exp(t) > 100 else numerical_grad(
      lambda s: numpy_clip(zimg, ztxt, s[0]), np.array([t]))[0]
  np.testing.assert_allclose(gs, expected, atol=1e-5)


@pytest.mark.parametrize("t,b", [(np.log(10.0), -10.0), (np.log(3.0), 0.5)])
def test_siglip_loss_and_gradients_match_numpy(t, b):
  rng = np.random.default_rng(1)
  zimg, ztxt = normalized(rng, 5, 3), normalized(rng, 5, 3)
  loss, metrics = siglip.siglip_loss(jnp.asarray(zimg), jnp.asarray(ztxt), t, b)
  np.testing.assert_allclose(loss, numpy_siglip(zimg, ztxt, t, b), rtol=1e-5)
  np.testing.assert_allclose(metrics["logit_bias"], b)
  with jax.enable_x64():
    grads = jax.grad(lambda *a: siglip.siglip_loss(*a)[0], argnums=(0, 1, 2, 3))(
        jnp.asarray(zimg), jnp.asarray(ztxt), jnp.float64(t), jnp.float64(b))
  refs = (numerical_grad(lambda a: numpy_siglip(a, ztxt, t, b), zimg),
          numerical_grad(lambda c: numpy_siglip(zimg, c, t, b), ztxt),
          numerical_grad(lambda s: numpy_siglip(zimg, ztxt, s[0], b), np.array([t])),
          numerical_grad(lambda s: numpy_siglip(zimg, ztxt, t, s[0]), np.array([b])))
  for g, ref in zip(grads, refs):
    np.testing.assert_allclose(np.reshape(g, ref.shape), ref, atol=1e-5)


def load_config(name, arg="dataset=fashion_mnist,runlocal"):
  return importlib.import_module(f"configs.ssl.{name}").get_config(arg)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_initial_temperature_and_bias(name):
  config = load_config(name)
  module = importlib.import_module(f"tandem.ssl.{name}")
  model = module.make_model(config)
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), *module.init_inputs(config)))["params"]
  values = jax.jit(lambda: model.init(jax.random.key(0),
                                      *module.init_inputs(config)))()["params"]
  assert set(params) >= {"encoder", "text", "image_head", "text_head", "t"}
  if name == "clip":
    np.testing.assert_allclose(np.exp(values["t"]), 1 / 0.07, rtol=1e-6)
    assert "b" not in values
  else:
    np.testing.assert_allclose(np.exp(values["t"]), 10.0, rtol=1e-6)
    np.testing.assert_allclose(values["b"], -10.0)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_sharded_loss_and_grads_equal_single_device(name):
  """On 8 fake devices the loss uses every device's pairs as negatives."""
  config = load_config(name)
  module = importlib.import_module(f"tandem.ssl.{name}")
  model = module.make_model(config)
  variables = dict(model.init(jax.random.key(0), *module.init_inputs(config)))
  params = variables.pop("params")
  loss_fn = module.make_loss_fn(model, config)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (16, 28, 28, 1), np.uint8),
           "text": rng.integers(3, 259, (16, config.input.text.max_len), np.int32)}

  def run(mesh):
    b = jax.device_put(batch, parallel.batch_sharding(mesh))
    p = jax.device_put(params, parallel.replicated(mesh))
    s = jax.device_put(variables, parallel.replicated(mesh))
    fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, (metrics, _)), grads = fn(p, s, b, jax.random.key(1))
    return jax.device_get((loss, grads, metrics))

  loss8, grads8, metrics8 = run(parallel.make_mesh({"data": 8}))
  loss1, grads1, metrics1 = run(parallel.make_mesh({"data": 1},
                                                   devices=jax.devices()[:1]))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads8, grads1)
  # A loss over 16 pairs, not 8 independent losses over 2 pairs each.
  assert np.abs(grads1["t"]) > 0
  np.testing.assert_allclose(metrics8["i2t_top1"], metrics1["i2t_top1"])


@pytest.mark.parametrize("name,field", [("clip", "temperature_init"),
                                        ("siglip", "temperature_init")])
@pytest.mark.parametrize("value", [0.0, -0.07])
def test_non_positive_temperature_is_a_config_error(name, field, value):
  config = load_config(name)
  config[name][field] = value
  module = importlib.import_module(f"tandem.ssl.{name}")
  with pytest.raises(ValueError, match=f"config.{name}.{field} must be > 0"):
    module.make_model(config)


def test_all_empty_captions_are_refused():
  config = load_config("clip")
  tokens = np.zeros((4, 8), np.int32)
  tokens[:, 0], tokens[:, 1] = 1, 2  # bos, eos: empty strings.
  with pytest.raises(train.EmptyCaptionsError, match="input.text.feature"):
    train._check_captions(tokens, 7, config)
  tokens[2, 1:3] = (100, 2)  # One real caption is enough.
  train._check_captions(tokens, 7, config)


def test_zero_batch_is_a_config_error(tiny_data_dir, tmp_path):
  config = load_config("clip")
  config.data_dir = tiny_data_dir
  config.input.batch_size = 0
  with pytest.raises(ValueError, match="batch_size must be positive"):
    train.train(config, str(tmp_path))


def test_long_captions_are_truncated_and_counted(tiny_data_dir, tmp_path):
  """Class-name captions ("a photo of a t-shirt.") do not fit in 8 byte tokens."""
  config = load_config("clip")
  config.data_dir = tiny_data_dir
  config.input.text.max_len = 8
  results = train.train(config, str(tmp_path))
  total = config.total_steps * config.input.batch_size
  assert results["final"]["data/captions_truncated"] == total
  last = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-2])
  assert last.get("data/captions_truncated", total) == total


def test_zeroshot_top1_and_class_embeddings():
  rng = np.random.default_rng(0)
  classes = normalized(rng, 4, 8)
  table = {f"{t} {c}": classes[i] + 0.01 * rng.normal(size=8)
           for i, c in enumerate("abcd") for t in ("x", "y")}
  emb = zeroshot.class_embeddings(lambda texts: np.stack([table[t] for t in texts]),
                                  list("abcd"), ("x {}", "y {}"))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
  labels = rng.integers(0, 4, 50)
  images = classes[labels] + 0.05 * rng.normal(size=(50, 8))
  assert zeroshot.zeroshot_top1(images, emb, labels) == 1.0
  assert zeroshot.zeroshot_top1(images, emb, (labels + 1) % 4) == 0.0


def test_recall_at_k_matches_brute_force():
  rng = np.random.default_rng(0)
  image_emb, text_emb = normalized(rng, 12, 5), normalized(rng, 12, 5)
  captions = [[f"caption {i}"] for i in range(12)]
  texts = [c for caps in captions for c in caps]
  got = retrieval.recall_at_k(image_emb, text_emb, captions, texts)
  sim = image_emb @ text_emb.T
  for k in (1, 5, 10):
    i2t = np.mean([i in np.argsort(-sim[i])[:k] for i in range(12)])
    t2i = np.mean([j in np.argsort(-sim[:, j])[:k] for j in range(12)])
    assert got[f"i2t_recall@{k}"] == pytest.approx(i2t)
    assert got[f"t2i_recall@{k}"] == pytest.approx(t2i)
  perfect = retrieval.recall_at_k(image_emb, image_emb, captions, texts)
  assert perfect["i2t_recall@1"] == perfect["t2i_recall@1"] == 1.0


def test_recall_counts_identical_caption_text_as_correct():
  """Two images with the same caption: either caption record is a hit."""
  image_emb = np.eye(3)
  text_emb = np.array([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])  # swapped 0 and 1
  captions = [["red circle"], ["red circle"], ["blue square"]]
  got = retrieval.recall_at_k(image_emb, text_emb, captions,
                              ["red circle", "red circle", "blue square"])
  assert got["i2t_recall@1"] == got["t2i_recall@1"] == 1.0


@pytest.fixture(scope="module")
def shapes_data_dir(tmp_path_factory):
  return prepare_tiny_captioned_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_runlocal_on_captioned_shapes_reports_zeroshot_and_recall(name,
                                                                  shapes_data_dir,
                                                                  tmp_path):
  config = load_config(name, "runlocal")
  config.data_dir = shapes_data_dir
  results = train.train(config, str(tmp_path))
  final = results["final"]
  assert 0.0 <= final["zeroshot/captioned_shapes/test/top1"] <= 1.0
  for k in (1, 5, 10):
    assert 0.0 <= final[f"retrieval/captioned_shapes/validation/i2t_recall@{k}"] <= 1
  assert final["retrieval/captioned_shapes/validation/t2i_recall@10"] >= \
      final["retrieval/captioned_shapes/validation/t2i_recall@1"]
  assert final["data/captions_truncated"] == 0
