"""Image↔text retrieval: Recall@K with several distinct captions per image against
brute force, and the suite runner's retrieval on images of different sizes, with
the preprocessing of the features recorded beside their layer in results.json."""
import importlib
import json

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tandem import checkpoint
from tandem.transfer import features
from tandem.transfer import protocol
from tandem.transfer import retrieval
from tandem.transfer import run

from conftest import toy_task_data


def brute_force_recall(sim, owner, k):
  """i2t: an image is a hit if ANY of its captions is in its top K; t2i: a caption
  is a hit if its image is in its top K. `owner[j]`: the image of caption j."""
  i2t = np.mean([np.isin(owner[np.argsort(-sim[i])[:k]], i).any()
                 for i in range(sim.shape[0])])
  t2i = np.mean([owner[j] in np.argsort(-sim[:, j])[:k]
                 for j in range(sim.shape[1])])
  return i2t, t2i


def _unit(*rows):
  x = np.array(rows, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_with_several_distinct_captions_per_image_known_answer():
  """Each image's second caption decides: counting only first captions gives
  i2t@1 = 1 and t2i@1 = 2/3 here; with every caption, 2/3 and 3/5."""
  images = np.eye(3)
  captions = [["a red circle", "a circle, red"],
              ["a blue square"],
              ["a green triangle", "green, a triangle"]]
  texts = [c for caps in captions for c in caps]
  text_emb = _unit([1, 0, 0],      # image 0's: its own image first
                   [0.2, 1, 0],    # image 0's, but nearest image 1
                   [0, 1, 0.5],    # image 1's: second for image 1
                   [1, 0, 0.6],    # image 2's, nearest image 0
                   [0, 0, 1])      # image 2's: its own image first
  got = retrieval.recall_at_k(images, text_emb, captions, texts, ks=(1, 2))
  assert got["i2t_recall@1"] == pytest.approx(2 / 3)  # image 1 ranks 0's first
  assert got["t2i_recall@1"] == pytest.approx(3 / 5)
  assert got["i2t_recall@2"] == got["t2i_recall@2"] == 1.0
  firsts = [caps[:1] for caps in captions]
  first_emb = text_emb[[0, 2, 3]]
  one = retrieval.recall_at_k(images, first_emb, firsts, [c[0] for c in firsts],
                              ks=(1,))
  assert one["i2t_recall@1"] == 1.0 and one["t2i_recall@1"] == pytest.approx(2 / 3)


def test_recall_with_several_distinct_captions_per_image_matches_brute_force():
  rng = np.random.default_rng(0)
  counts = [1, 3, 2, 4, 2, 1, 3, 2, 5, 2]
  captions = [[f"image {i} caption {c}" for c in range(n)]
              for i, n in enumerate(counts)]
  texts = [c for caps in captions for c in caps]
  owner = np.repeat(np.arange(len(counts)), counts)
  image_emb = _unit(*rng.normal(size=(len(counts), 6)))
  # Captions near their image, with noise so that some rank other images first.
  text_emb = _unit(*(image_emb[owner] + 0.6 * rng.normal(size=(len(texts), 6))))
  ks = (1, 2, 5, 10)
  got = retrieval.recall_at_k(image_emb, text_emb, captions, texts, ks=ks)
  sim = image_emb @ text_emb.T
  for k in ks:
    i2t, t2i = brute_force_recall(sim, owner, k)
    assert got[f"i2t_recall@{k}"] == pytest.approx(i2t), k
    assert got[f"t2i_recall@{k}"] == pytest.approx(t2i), k
  assert 0 < got["i2t_recall@1"] < 1 and 0 < got["t2i_recall@1"] < 1


class _MixedSizeCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Stands in for coco_captions: JPEGs of different sizes, 2-3 captions each."""

  name = "tandem_test_mixed_size_captions"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
    }))

  def _split_generators(self, dl_manager):
    return {"val": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      image = np.full((12 + 3 * i, 30 - 2 * i, 3), 40 * i, np.uint8)
      yield i, {"image": Image.fromarray(image),
                "captions": [{"text": f"picture {i} take {c}"}
                             for c in range(2 + i % 2)]}


def _random_clip_checkpoint(workdir):
  """A CLIP runlocal workdir with random params: the runner only needs its shapes."""
  config = importlib.import_module("configs.ssl.clip").get_config("runlocal")
  module = importlib.import_module("tandem.ssl.clip")
  model = module.make_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             *module.init_inputs(config)))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: (0.1 * rng.normal(size=s.shape)).astype(s.dtype),
                           dict(shapes))
  params = variables.pop("params")
  variables = jax.tree.map(np.abs, variables)  # Batch-norm variances must be > 0.
  checkpoint.write_config(str(workdir), config)
  ckpt = checkpoint.Checkpointer(str(workdir), async_save=False)
  ckpt.save(0, params, {"model_state": variables, "step": np.int32(0)}, {})
  ckpt.close()
  return config


def test_suite_retrieval_on_images_of_different_sizes(tmp_path):
  data_dir = tmp_path / "data"
  _MixedSizeCaptions(data_dir=str(data_dir),
                     file_format="array_record").download_and_prepare()
  clip_config = _random_clip_checkpoint(tmp_path / "clip")
  config = importlib.import_module("configs.transfer.vtab").get_config(
      "fashion_mnist,evaluators=retrieval,runlocal")  # fashion_mnist: a skip here
  config.checkpoint, config.data_dir = str(tmp_path / "clip"), str(data_dir)
  config.output_dir = str(tmp_path / "out")
  config.retrieval.update(dataset=_MixedSizeCaptions.name, split="val",
                          text_feature="captions/text")
  run.run(config)
  results = json.load(open(tmp_path / "out" / "results.json"))
  recalls = [r for r in results["records"] if "value" in r]
  assert {r["metric"] for r in recalls} == {
      f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
  expected = {"image_size": 32, "resize": features.RESIZE, "channels": 3,
              "scale": "x / 255", "mean": list(clip_config.input.mean),
              "std": list(clip_config.input.std)}
  assert clip_config.input.image_size == 32
  assert results["preprocessing"] == expected
  for r in recalls:
    assert r["task"] == f"{_MixedSizeCaptions.name}/val" and 0 <= r["value"] <= 1
    assert (r["num_images"], r["num_captions"]) == (6, 15)
    assert r["layer"] == features.IMAGE_TEXT_LAYER and r["preprocessing"] == expected
  by_metric = {r["metric"]: r["value"] for r in recalls}
  assert by_metric["i2t_recall@10"] == by_metric["t2i_recall@10"] == 1.0  # 6 images


def test_feature_records_name_their_preprocessing_beside_the_layer():
  transfer_config = importlib.import_module("configs.transfer.vtab").get_config(
      "runlocal")
  pretrain_config = importlib.import_module("configs.ssl.simclr").get_config(
      "runlocal")
  records = run.evaluate_task(toy_task_data(), protocol.Model(pretrain_config, {}),
                              transfer_config, ["fewshot", "knn"])
  scored = [r for r in records if "value" in r]
  assert {r["evaluator"] for r in scored} >= {"fewshot_1shot", "knn_k20_T0.07"}
  expected = features.preprocessing(pretrain_config.input)
  assert expected["image_size"] == pretrain_config.input.image_size
  for r in scored:
    assert r["task"] == "toy" and r["layer"] == "pre_logits"
    assert r["preprocessing"] == expected
    keys = list(r)
    assert keys[keys.index("layer") + 1] == "preprocessing"
