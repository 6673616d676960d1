"""Transfer evaluators and the suite runner: references, known answers, the test-split
fence, bad input, and one end-to-end run of `tandem.transfer.run`."""
import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tandem
from tandem import checkpoint
from tandem.data import dsprites_like
from tandem.data import prepare
from tandem.ssl import train
from tandem.transfer import features
from tandem.transfer import neighbors as knn
from tandem.transfer import probe
from tandem.transfer import protocol
from tandem.transfer import ridge as fewshot
from tandem.transfer import run

from conftest import ROOT, bt_config, load_config, toy_task_data


def _blobs(n, num_classes, dim, sep, seed):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_classes, dim)) * sep
  y = np.arange(n) % num_classes
  return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.mark.parametrize("n", [40, 300])  # Dual (N < D+1) and primal solutions.
def test_fewshot_ridge_equals_numpy_closed_form(n):
  x, y = _blobs(n, 5, 64, 1.0, 0)
  solver = fewshot.RidgeSolver(x, y, 5)
  x64 = x.astype(np.float64)
  xw = (x64 - x64.mean(0)) / (x64.std(0) + 1e-5)
  xw = np.concatenate([xw, np.full((n, 1), 100.0)], 1)  # big_vision's BIAS_CONSTANT
  targets = 2 * np.eye(5)[y] - 1
  for l2 in (0.5, 2.0 ** 10):
    ref = np.linalg.solve(xw.T @ xw + l2 * np.eye(65), xw.T @ targets)
    np.testing.assert_allclose(solver.weights(l2), ref, rtol=1e-6, atol=1e-8)


def test_fewshot_end_to_end_matches_reference_and_never_uses_test_for_l2():
  x, y = _blobs(900, 6, 32, 0.4, 1)
  x, y, tx, ty = x[:600], y[:600], x[600:], y[600:]
  returned = fewshot.fewshot(x, y, tx, ty, shots=(5,), seeds=(0, 1))
  result = returned.details["fewshot_5shot"]
  assert returned.predictions["fewshot_5shot"].shape == (2, len(ty))
  for seed, l2, top1 in zip((0, 1), result["l2"], result["top1"]):
    idx = fewshot.draw_shots(y, 5, 6, seed)
    assert sorted(np.bincount(y[idx])) == [5] * 6
    xs = x[idx]
    mean, std = xs.mean(0), xs.std(0) + 1e-5
    prep = lambda a: np.concatenate([(a - mean) / std, np.full((len(a), 1), 100.0)], 1)
    w = np.linalg.solve(prep(xs).T @ prep(xs) + l2 * np.eye(33),
                        prep(xs).T @ (2 * np.eye(6)[y[idx]] - 1))
    assert top1 == pytest.approx(np.mean(np.argmax(prep(tx) @ w, 1) == ty))
    np.testing.assert_array_equal(returned.predictions["fewshot_5shot"][seed],
                                  np.argmax(prep(tx) @ w, 1))
  assert result["mean"] == pytest.approx(np.mean(result["top1"]))
  assert returned.accuracy == result["mean"]
  assert result["std"] == pytest.approx(np.std(result["top1"]))
  shuffled = fewshot.fewshot(x, y, tx, np.random.default_rng(0).permutation(ty),
                             shots=(5,), seeds=(0, 1)).details["fewshot_5shot"]
  assert shuffled["l2"] == result["l2"]  # Chosen without test labels.


def test_knn_equals_brute_force():
  x, y = _blobs(800, 7, 16, 0.3, 3)
  x, y, tx = x[:500], y[:500], x[500:]
  preds = knn.knn_predict(x, y, tx, ks=(1, 20, 200), temperature=0.07, chunk_size=128)
  a = x / np.linalg.norm(x, axis=1, keepdims=True)
  b = tx / np.linalg.norm(tx, axis=1, keepdims=True)
  sim = b @ a.T
  for k in (1, 20, 200):
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(tx), 7))
    for i in range(len(tx)):
      np.add.at(votes[i], y[top[i]], np.exp(sim[i, top[i]] / 0.07))
    np.testing.assert_array_equal(preds[k], votes.argmax(1))
  # The array form returns the same predictions, and every test example's
  # neighbours, nearest first, with their similarities.
  result = knn.knn(x, y, tx, y[:len(tx)], ks=(1, 20, 200))
  np.testing.assert_array_equal(result.predictions["knn_k20_T0.07"], preds[20])
  np.testing.assert_array_equal(result.neighbours,
                                np.argsort(-sim, axis=1, kind="stable")[:, :200])
  np.testing.assert_allclose(result.similarities, -np.sort(-sim, axis=1)[:, :200],
                             atol=1e-5)


def test_separable_features_give_100_and_random_features_give_chance():
  x, y = _blobs(1500, 10, 32, 10.0, 5)
  x, y, tx, ty = x[:1000], y[:1000], x[1000:], y[1000:]
  assert probe.linear_probe(x, y, tx, ty, num_val=200).accuracy == 1.0
  assert fewshot.fewshot(x, y, tx, ty, shots=(1, 5))["fewshot_1shot"] == 1.0
  assert knn.knn(x, y, tx, ty).top1 == {"knn_k20_T0.07": 1.0, "knn_k200_T0.07": 1.0}
  rng = np.random.default_rng(7)
  rx, ry = rng.normal(size=(1000, 32)), rng.integers(0, 10, 1000)
  rtx, rty = rng.normal(size=(4000, 32)), rng.integers(0, 10, 4000)
  tolerance = 0.03  # ~4.5 standard errors of a 4000-example accuracy at p = 0.1
  assert abs(probe.linear_probe(rx, ry, rtx, rty, num_val=200).accuracy
             - 0.1) < tolerance
  assert abs(fewshot.fewshot(rx, ry, rtx, rty, shots=(10,)).accuracy - 0.1) < tolerance
  for top1 in knn.knn(rx, ry, rtx, rty).top1.values():
    assert abs(top1 - 0.1) < tolerance


def test_suite_evaluators_fence_off_test_during_selection():
  config = load_config(os.path.join(ROOT, "configs/transfer/vtab.py"), "runlocal")
  pretrain_config = load_config(os.path.join(ROOT, "configs/ssl/simclr.py"),
                                "runlocal")
  data = toy_task_data()
  records = run.evaluate_task(data, protocol.Model(pretrain_config, {}), config,
                              ["linear_probe", "fewshot", "knn"])
  scores = {r["evaluator"]: r["value"] for r in records if "value" in r}
  assert scores["linear_probe"] == 1.0 and scores["fewshot_5shot"] == 1.0
  assert scores["knn_k20_T0.07"] == 1.0
  assert any("skipped" in r and "200" in r["skipped"] for r in records)  # k > 100
  # trainval (train and val are its rows) and test: once for every evaluator.
  assert data.extraction_count == 2

  with pytest.raises(protocol.TestSplitAccessError, match="model selection"):
    with data.selection():
      data.features("test", "pre_logits")  # A cheating evaluator.
  with pytest.raises(protocol.TestSplitAccessError):
    with data.selection():
      _ = data.test.labels


def test_fewer_examples_than_shots_is_a_recorded_skip_and_nan_is_an_error():
  data = toy_task_data(n_train=12, n_val=4)  # 4 examples per class in train+val.
  records = fewshot.evaluate_task(data, {"shots": (1, 5), "seeds": (0,)})
  assert [r["evaluator"] for r in records] == ["fewshot_1shot", "fewshot_5shot"]
  assert "value" in records[0] and "have only [4]" in records[1]["skipped"]
  x, y = _blobs(30, 3, 4, 1.0, 0)
  with pytest.raises(fewshot.NotEnoughExamplesError, match="25-shot"):
    fewshot.fewshot(x, y, x, y, shots=(25,))
  with pytest.raises(protocol.NonFiniteFeaturesError, match="toy/train"):
    toy_task_data(nan=True).features("train", "pre_logits")


@pytest.fixture(scope="module")
def bt_checkpoint(tiny_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("bt")
  config = bt_config(tiny_data_dir, "runlocal,model=cnn")
  config.evals = {}
  train.train(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope="module")
def dsprites_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("vtab_data"))
  sizes = {"train": 800, "validation": 200, "test": 60}
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(prepare.BUILDERS, "dsprites_like",
                  functools.partial(dsprites_like.DspritesLike, split_sizes=sizes))
    prepare.prepare("dsprites_like", data_dir)
  return data_dir


def _transfer_config(arg, checkpoint_dir, data_dir, out):
  config = load_config(os.path.join(ROOT, "configs/transfer/vtab.py"), arg)
  config.checkpoint, config.data_dir, config.output_dir = checkpoint_dir, data_dir, out
  return config


def test_suite_runs_end_to_end_and_lists_unprepared_tasks(bt_checkpoint, dsprites_dir,
                                                          tmp_path, capsys):
  config = _transfer_config("dsprites_like_location,fashion_mnist,runlocal",
                            bt_checkpoint, dsprites_dir, str(tmp_path))
  results = run.run(config)
  out = capsys.readouterr().out
  records = json.load(open(tmp_path / "results.json"))["records"]
  done = {(r["task"], r["evaluator"]) for r in records if "value" in r}
  assert {("dsprites_like_location", e) for e in
          ("linear_probe", "fewshot_1shot", "fewshot_5shot", "knn_k20_T0.07",
           "knn_k200_T0.07")} <= done
  assert all(0 <= r["value"] <= 1 for r in records if "value" in r)
  assert sum(r["evaluator"] == "fewshot_5shot" for r in records) == 2  # one per seed
  # The table is computed from the records: a cell is the mean ± std over seeds.
  seeds = [r["value"] for r in records if r["evaluator"] == "fewshot_5shot"]
  np.testing.assert_allclose(
      results["summary"]["rows"]["dsprites_like_location"]["fewshot_5shot"],
      [np.mean(seeds), np.std(seeds), 2])
  probe = [r for r in records if r["evaluator"] == "linear_probe" and "value" in r]
  assert results["summary"]["overall"]["linear_probe"][0] == probe[0]["value"]
  # Each record names the preprocessing of its features beside the layer.
  assert probe[0]["layer"] == "pre_logits"
  assert probe[0]["preprocessing"]["image_size"] == 28
  skip = [r for r in records if r["task"] == "fashion_mnist"]
  assert len(skip) == 1 and "python -m tandem.data.prepare --dataset fashion_mnist" \
      in skip[0]["skipped"]
  assert "(2 feature extractions)" in out and "mean structured" in out  # trainval, test
  assert results["summary"]["overall"]["linear_probe"][1:] == [1, 2]  # 1 of 2 tasks
  assert (tmp_path / "results.png").stat().st_size > 1000


def test_bad_checkpoints_give_clear_errors(bt_checkpoint, dsprites_dir, tmp_path):
  config = lambda ckpt: _transfer_config("dsprites_like_location,runlocal", ckpt,
                                         dsprites_dir, str(tmp_path / "out"))
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoints"):
    run.run(config(str(tmp_path / "missing")))

  half = tmp_path / "half"
  shutil.copytree(bt_checkpoint, half)
  for step in os.listdir(half / "checkpoints"):  # Every save interrupted mid-write.
    os.rename(half / "checkpoints" / step,
              half / "checkpoints" / f"{step}.orbax-checkpoint-tmp-1")
  with pytest.raises(checkpoint.CheckpointError, match="No complete checkpoint"):
    run.run(config(str(half)))

  other = tmp_path / "other"
  shutil.copytree(bt_checkpoint, other)
  saved = json.load(open(other / "config.json"))
  saved["model"]["widths"] = [2 * w for w in saved["model"]["widths"]]
  json.dump(saved, open(other / "config.json", "w"))
  with pytest.raises(checkpoint.CheckpointError, match="does not match the model"):
    run.run(config(str(other)))


def test_command_line_reports_a_missing_checkpoint(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "tandem.transfer.run", "--config",
       "configs/transfer/vtab.py:suite=offline",
       f"--config.checkpoint={tmp_path / 'nothing'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "Error: No checkpoints" in proc.stderr, proc.stderr


def test_evaluators_are_callable_from_the_package():
  import tandem.transfer
  x, y = _blobs(300, 3, 8, 10.0, 0)
  assert tandem.transfer.fewshot(x, y, x, y, shots=(1,), seeds=(0,)).accuracy == 1.0
  assert tandem.transfer.knn(x, y, x, y, ks=(5,)).top1 == {"knn_k5_T0.07": 1.0}
  assert tandem.transfer.linear_probe(x, y, x, y, num_val=50).accuracy == 1.0


def test_one_result_format_predictions_confusion_and_classifier():
  """All three array evaluators return a `Result` whose predictions give its
  accuracies and confusion matrices; the probe's classifier reproduces them."""
  import tandem.transfer
  x, y = _blobs(600, 4, 8, 1.0, 2)
  x, y, tx, ty = x[:400], y[:400], x[400:], y[400:]
  results = [tandem.transfer.linear_probe(x, y, tx, ty, num_val=100),
             tandem.transfer.knn(x, y, tx, ty, ks=(5, 20)),
             tandem.transfer.fewshot(x, y, tx, ty, shots=(2, 5), seeds=(0, 1))]
  for result in results:
    assert isinstance(result, tandem.transfer.Result)
    np.testing.assert_array_equal(result.labels, ty)
    for setting, top1 in result.top1.items():
      preds = result.predictions[setting]
      assert top1 == pytest.approx(np.mean(preds == ty))
      counts = result.confusion(setting)
      assert counts.shape == (4, 4) and counts.sum() == preds.size
      assert np.trace(counts) / counts.sum() == pytest.approx(top1)
      np.testing.assert_array_equal(counts.sum(1), np.bincount(ty, minlength=4) *
                                    (preds.size // len(ty)))  # Rows: true class.
      assert 0.25 < top1 < 1.0  # Overlapping blobs: neither chance nor perfect.
  lp, nn, fs = results
  np.testing.assert_array_equal(lp.classifier.predict(tx), lp.predictions["linear_probe"])
  assert lp.accuracy == lp["linear_probe"] and set(lp.details["linear_probe"]) >= {
      "l2", "val_top1", "train_top1", "iterations"}
  assert nn.neighbours.shape == nn.similarities.shape == (len(tx), 20)
  assert np.all(np.diff(nn.similarities, axis=1) <= 1e-6)  # Nearest first.
  assert fs.predictions["fewshot_5shot"].shape == (2, len(tx))
  assert set(fs.top1) == {"fewshot_2shot", "fewshot_5shot"}
  with pytest.raises(ValueError, match="has 2 settings; name one of"):
    nn.accuracy  # pylint: disable=pointless-statement
  with pytest.raises(KeyError, match="knn_k5_T0.07"):
    nn["knn_k7"]  # pylint: disable=pointless-statement


def test_suite_scores_zeroshot_retrieval_and_finetune_end_to_end(image_text_setup,
                                                                 bt_checkpoint,
                                                                 tmp_path, capsys):
  clip_dir, data_dir = image_text_setup
  # The notebook API: joint embeddings of the same checkpoint, L2-normalised.
  clip = tandem.load(clip_dir)
  images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), np.uint8)
  image_emb, text_emb = clip.embed_images(images), clip.embed_texts(["a", "b c"])
  np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1.0, rtol=1e-5)
  assert text_emb.shape == (2, image_emb.shape[1])
  embedder = features.ImageTextEmbedder(clip.config)
  np.testing.assert_allclose(image_emb, embedder.images(clip.variables, images),
                             atol=1e-6)
  with pytest.raises(ValueError, match="no text tower"):
    tandem.load(bt_checkpoint).embed_texts(["a"])
  config = _transfer_config(
      "fashion_mnist,evaluators=linear_probe+zeroshot+retrieval+finetune,runlocal",
      clip_dir, data_dir, str(tmp_path / "clip"))
  run.run(config)
  records = json.load(open(tmp_path / "clip" / "results.json"))["records"]
  values = {(r["task"], r["evaluator"]): r for r in records if "value" in r}
  assert not [r for r in records if "skipped" in r], records
  zeroshot = values[("fashion_mnist", "zeroshot")]
  assert 0.0 <= zeroshot["value"] <= 1.0 and zeroshot["templates"] > 1
  recall = {key[1]: r["value"] for key, r in values.items()
            if key[0] == "captioned_shapes/validation"}
  for direction in ("i2t", "t2i"):
    at = [recall[f"retrieval_{direction}_recall@{k}"] for k in (1, 5, 10)]
    assert 0.0 <= at[0] <= at[1] <= at[2] <= 1.0, recall
  tuned = values[("fashion_mnist", "finetune_full")]
  assert 0.0 <= tuned["value"] <= 1.0 and tuned["steps"] == config.finetune.steps
  # The learning rate comes from the config's sweep (chosen on val200, not test).
  assert tuned["lr_per_512"] in (tuple(config.finetune.lr_per_512_grid)
                               or (config.finetune.lr_per_512,))
  assert 0.0 <= values[("fashion_mnist", "linear_probe")]["value"] <= 1.0
  out = capsys.readouterr().out
  assert "zeroshot" in out and "retrieval" in out

  # A checkpoint without a text tower: zero-shot and retrieval are recorded skips.
  config = _transfer_config("fashion_mnist,evaluators=zeroshot+retrieval,runlocal",
                            bt_checkpoint, data_dir, str(tmp_path / "bt"))
  run.run(config)
  records = json.load(open(tmp_path / "bt" / "results.json"))["records"]
  assert len(records) == 2 and all("skipped" in r for r in records), records


@pytest.mark.parametrize("evaluator", ["linear_probe", "fewshot", "knn"])
def test_python_api_refuses_non_finite_features(evaluator):
  import tandem.transfer  # pylint: disable=g-import-not-at-top
  x, y = _blobs(300, 3, 8, 10.0, 0)
  bad = x.copy()
  bad[7, 2] = np.nan
  fn = getattr(tandem.transfer, evaluator)
  with pytest.raises(protocol.NonFiniteFeaturesError, match="train features: 1 of 300"):
    fn(bad, y, x, y)
  bad[7, 2] = np.inf
  with pytest.raises(protocol.NonFiniteFeaturesError, match="test features"):
    fn(x, y, bad, y)
