"""CLIP and SigLIP models: initial scalars, the text tower on SentencePiece ids,
zero-shot and retrieval metrics against brute force, configs run, bad input is
refused clearly. The losses (NumPy references, sharded == single device) are in
test_clip_siglip_losses.py, more retrieval in test_retrieval.py."""
import importlib
import json

import jax
import numpy as np
import pytest

import tandem

from conftest import prepare_tiny_captioned_shapes
from tandem import models
from tandem.data import tokenizer as tokenizer_lib
from tandem.ssl import clip
from tandem.ssl import train
from tandem.transfer import retrieval
from tandem.transfer import zeroshot


def normalized(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


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


@pytest.mark.parametrize("name,field", [("clip", "temperature_init"),
                                        ("siglip", "temperature_init")])
@pytest.mark.parametrize("value", [0.0, -0.07])
def test_non_positive_temperature_is_a_config_error(name, field, value):
  config = load_config(name)
  config[name][field] = value
  module = importlib.import_module(f"tandem.ssl.{name}")
  with pytest.raises(ValueError, match=f"config.{name}.{field} must be > 0"):
    module.make_model(config)


def test_zero_batch_is_a_config_error(tiny_data_dir, tmp_path):
  config = load_config("clip")
  config.data_dir = tiny_data_dir
  config.input.batch_size = 0
  with pytest.raises(ValueError, match=r"config.input.batch_size=0 must be an integer >= 1"):
    train.train(config, str(tmp_path))


def test_long_captions_are_truncated_and_counted(tiny_data_dir, tmp_path):
  """Class-name captions ("a photo of a t-shirt.") do not fit in 8 byte tokens.

  The same run starts CLIP's logit scale at 200, above the bound of 100: training
  clamps the parameter itself (open_clip), so the saved t is log 100, not the
  initial log 200 that a clip in the forward pass would have left untouched."""
  config = load_config("clip")
  config.data_dir = tiny_data_dir
  config.input.text.max_len = 8
  config.clip.temperature_init = 1 / 200
  results = train.train(config, str(tmp_path))
  total = config.total_steps * config.input.batch_size
  assert results["final"]["data/captions_truncated"] == total
  last = json.loads(open(tmp_path / "metrics.jsonl").read().splitlines()[-2])
  assert last.get("data/captions_truncated", total) == total
  t = float(jax.device_get(tandem.load(str(tmp_path)).params["t"]))
  assert np.log(100.0) - 1e-3 < t <= np.log(100.0) + 1e-6


def test_sentencepiece_unk_is_attended_and_pooling_reads_the_real_eos(tmp_path):
  """A SentencePiece model with the trainer's defaults (no pad, `<unk>` = 0): a
  caption with out-of-vocabulary characters holds real `<unk>` tokens, which the
  text tower must attend to and count, pooling at the caption's own eos."""
  sentencepiece = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "captions.txt"
  corpus.write_text("\n".join(
      f"{n} {size} {colour} {shape}" for n in ("one", "two") for size in
      ("small", "large") for colour in ("red", "blue", "green") for shape in
      ("circle", "square", "triangle")))
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=40,
      hard_vocab_limit=False, minloglevel=2)
  config = load_config("clip")
  config.input.text.tokenizer = f"sentencepiece:{tmp_path / 'sp.model'}"
  config.input.text.max_len = 16
  tok = tokenizer_lib.get_tokenizer(config.input.text.tokenizer)
  ids, _ = tok.encode_batch(["☃ one small red circle", "two 猫 large blue square",
                             "one small red circle"], config.input.text.max_len)
  unk = tok._sp.unk_id()
  assert unk == 0 and (ids == unk).sum(axis=1).tolist() == [1, 1, 0]
  # The tower CLIP builds, with the tokenizer's vocab_size and pad_id.
  tower = models.get_model("text", **clip.make_model(config).text_kwargs)

  @jax.jit
  def run(ids):
    params = tower.init(jax.random.key(0), ids)["params"]
    table = params["embedding"]["embedding"]
    moved = dict(params, embedding={"embedding": table.at[unk].set(
        jax.random.normal(jax.random.key(1), table.shape[1:]))})
    return (tower.apply({"params": params}, ids),
            tower.apply({"params": moved}, ids)["pre_logits"])

  out, moved = jax.device_get(run(ids))
  eos = np.argmax(ids == tok.eos_id, axis=1)
  np.testing.assert_allclose(out["pre_logits"], out["tokens"][np.arange(3), eos],
                             rtol=1e-6)
  changed = np.abs(moved - out["pre_logits"]).max(axis=1)
  # Only texts with <unk> change (the other by round-off at most: the two applies
  # are fused differently).
  assert (changed[:2] > 0.1).all() and changed[2] < 1e-5, changed


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
  # The array form for notebooks: the same answer as a Result, with predictions.
  result = zeroshot.zeroshot_classify(images, emb, (labels + 1) % 4)
  assert result.accuracy == 0.0
  np.testing.assert_array_equal(result.predictions["zeroshot"], labels)
  assert result.confusion().sum() == 50 and np.trace(result.confusion()) == 0
  assert result.details["zeroshot"]["similarities"].shape == (50, 4)
  with pytest.raises(ValueError, match="do not fit"):
    zeroshot.zeroshot_classify(images, emb[:, :4], labels)


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
  # `ranked`: the same rankings, as indices for a notebook's grids.
  top_texts, top_images = retrieval.ranked(image_emb, text_emb, k=5)
  np.testing.assert_array_equal(top_texts, np.argsort(-sim, axis=1)[:, :5])
  np.testing.assert_array_equal(top_images, np.argsort(-sim.T, axis=1)[:, :5])
  assert np.mean((top_texts == np.arange(12)[:, None]).any(1)) == pytest.approx(
      got["i2t_recall@5"])


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
  assert 0.0 <= final["zeroshot/image_text_embedding/test_top1"] <= 1.0
  for k in (1, 5, 10):
    assert 0.0 <= final[f"retrieval/image_text_embedding/i2t_recall@{k}"] <= 1
  recall = lambda k: final[f"retrieval/image_text_embedding/t2i_recall@{k}"]
  assert recall(10) >= recall(1)
  assert final["data/captions_truncated"] == 0
