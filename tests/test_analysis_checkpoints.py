"""tandem.analysis's loaders on a runlocal checkpoint: the steps a run kept
(`checkpoint.keep_every`), quiet loading onto one device or a mesh, the metrics
tables, a dataset by name, several layers and poolings in one pass, and the
feature cache."""
import dataclasses
import logging
import subprocess
import sys

import jax
import numpy as np
import pytest

import tandem
from tandem import analysis
from tandem.ssl import train
from conftest import ROOT, bt_config


@pytest.fixture(scope="module")
def workdir(tiny_data_dir, tmp_path_factory):
  """4 steps of Barlow Twins (CNN), a checkpoint each step, the last one and every
  2nd kept; the step-0 baselines on."""
  path = tmp_path_factory.mktemp("bt_analysis")
  config = bt_config(tiny_data_dir, "runlocal,model=cnn", total_steps=4)
  config.checkpoint.keep, config.checkpoint.keep_every = 1, 2
  config.evals.linear_probe.baselines = True
  train.train(config, str(path))
  return str(path)


def test_steps_and_quiet_loading_on_a_device_or_a_mesh(workdir, caplog):
  assert analysis.steps(workdir) == [2, 4]
  with caplog.at_level(logging.WARNING):
    model = tandem.load(workdir, step=2)
  assert model.step == 2 and not caplog.records, [r.message for r in caplog.records]
  assert [m.step for m in analysis.load_steps(workdir)] == [2, 4]
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  on_mesh = analysis.load(workdir, sharding=replicated)
  leaf = jax.tree.leaves(on_mesh.params)[0]
  assert leaf.sharding == replicated and len(leaf.devices()) == 8
  images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1), np.uint8)
  np.testing.assert_allclose(on_mesh.embed(images), analysis.load(workdir).embed(images),
                             rtol=1e-5, atol=1e-5)


def test_metrics_tables_label_the_baselines(workdir):
  log = analysis.read_metrics(workdir)
  assert list(log.train.step) == [1, 2, 3, 4] and log.train.loss.notna().all()
  baselines = log.evals[log.evals.baseline]
  assert set(baselines.layer) == {"pre_logits", "raw_pixels"}  # Random init, pixels.
  assert (baselines.step == 0).all() and not log.evals[~log.evals.baseline].step.eq(0).any()
  table = log.eval_table()
  assert list(table.index) == [4] and 0 <= table.loc[4, "linear_probe/pre_logits/test_top1"] <= 1
  assert 0 in log.eval_table(include_baselines=True).index
  with pytest.raises(FileNotFoundError, match="No metrics.jsonl"):
    analysis.read_metrics(ROOT)


def test_a_dataset_by_name(tiny_data_dir):
  data = analysis.load_dataset("fashion_mnist", "test", data_dir=tiny_data_dir)
  assert data.images.shape == (160, 28, 28, 1) and data.images.dtype == np.uint8
  assert data.labels.shape == (160,) and data.class_names[0] == "t-shirt"
  assert data.captions is None
  some = analysis.load_dataset("fashion_mnist", "test", data_dir=tiny_data_dir,
                               max_examples=50, seed=1)
  assert len(some) == 50 and set(map(bytes, some.images)) <= set(map(bytes, data.images))


def test_layers_poolings_and_float_images_in_one_pass(workdir, tiny_data_dir):
  model = tandem.load(workdir)
  assert {"stage1", "stage2", "pooled", "pre_logits"} <= set(model.layers)
  images = analysis.load_dataset("fashion_mnist", "test",
                                 data_dir=tiny_data_dir).images[:20]
  both = model.embed(images, layer=["stage1", "pre_logits"])
  np.testing.assert_allclose(both["pre_logits"], model.embed(images), rtol=1e-6)
  whole = model.embed(images, layer="stage1", pooling="none")
  assert whole.ndim == 4 and whole.shape[0] == 20
  np.testing.assert_allclose(both["stage1"], whole.mean(axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)
  flat = model.embed(images, layer="stage1", pooling="flatten")
  np.testing.assert_array_equal(flat, whole.reshape(20, -1))
  np.testing.assert_array_equal(model.embed(images / 255.0), model.embed(images))
  with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
    model.embed(images.astype(np.float32))
  with pytest.raises(ValueError, match="pooling"):
    model.embed(images, pooling="max")


def test_the_runs_two_views_of_any_images(workdir, tiny_data_dir):
  model = tandem.load(workdir)
  images = analysis.load_dataset("fashion_mnist", "test",
                                 data_dir=tiny_data_dir).images[:16]
  v1, v2 = analysis.views(model, images, seed=3)
  assert v1.shape == v2.shape == (16, 28, 28, 1) and v1.dtype == np.float32
  assert 0 <= v1.min() and v1.max() <= 1 and not np.allclose(v1, v2)
  again, _ = analysis.views(model, images, seed=3)
  np.testing.assert_array_equal(again, v1)
  assert not np.array_equal(analysis.views(model, images, seed=4)[0], v1)
  # Positive pairs sit closer than random pairs of the same views.
  z1, z2 = model.embed(v1), model.embed(v2)
  assert analysis.alignment(z1, z2) < analysis.alignment(z1, np.roll(z2, 1, axis=0))


def test_features_are_cached_per_checkpoint_images_and_layer(workdir, tmp_path,
                                                             monkeypatch):
  model = tandem.load(workdir)
  images = np.random.default_rng(1).integers(0, 256, (12, 28, 28, 1), np.uint8)
  calls = []
  embed = type(model).embed

  def counting(self, *args, **kwargs):
    calls.append(kwargs.get("layer"))
    return embed(self, *args, **kwargs)

  monkeypatch.setattr(type(model), "embed", counting)
  cache = str(tmp_path)
  first = analysis.features(model, images, ["stage2", "pre_logits"], cache_path=cache)
  again = analysis.features(model, images, ["stage2", "pre_logits"], cache_path=cache)
  assert calls == [["stage2", "pre_logits"]]  # The second call read the files.
  for layer in first:
    np.testing.assert_array_equal(first[layer], again[layer])
  analysis.features(model, images[:6], "pre_logits", cache_path=cache)
  changed = dataclasses.replace(model, params=jax.tree.map(lambda p: p * 0.5,
                                                           model.params))
  other = analysis.features(changed, images, "pre_logits", cache_path=cache)
  assert len(calls) == 3 and not np.allclose(other, first["pre_logits"])


def test_nearest_neighbours_match_brute_force():
  rng = np.random.default_rng(0)
  gallery, query = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  expected = np.argsort(-(unit(query) @ unit(gallery).T), axis=1)[:, :5]
  np.testing.assert_array_equal(analysis.nearest_neighbours(query, gallery, 5,
                                                            chunk_size=3), expected)
  own = analysis.nearest_neighbours(gallery, gallery, 3, exclude_self=True)
  assert not (own == np.arange(50)[:, None]).any()


def test_import_is_cheap_and_submodules_need_no_import():
  code = ("import sys, tandem; import tandem.analysis as a; a.rankme; a.cka_matrix; "
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow_datasets', 'grain', 'jax'}), 'absl.flags' in sys.modules); "
          "assert callable(tandem.transfer.knn)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["[]", "False"], out.stdout
