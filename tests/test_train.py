"""The pretraining loop: every config runs, resume == uninterrupted, bad input is
refused clearly and loses nothing. Runs on the 8 fake CPU devices of conftest."""
import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import tandem
from tandem import checkpoint
from tandem.data import input_pipeline
from tandem.ssl import train

from conftest import (BT_NO_EVALS, NO_EVALS, ROOT, bt_config, check_runlocal_run,
                      load_config, run_in_fresh_python, sigterm_when_logged)

SSL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "ssl", "*.py")))
# The CPU recipes; the papers' (NAME_imagenet.py, NAME_reference.py) are built, not
# trained, by tests/test_recipes.py.
SSL_CONFIGS = [p for p in SSL_CONFIGS if not p.endswith(
    ("__init__.py", "_imagenet.py", "_reference.py"))]


# Every backbone trains under Barlow Twins; every other objective on one backbone
# (the backbones are the same modules under every objective): SimCLR, CLIP and
# SigLIP on the CNN (CLIP and SigLIP with class-name captions here; on
# captioned_shapes in tests/test_image_text.py), MAE on a ViT (the only backbone it
# takes) in tests/test_mae.py, whose runlocal test makes the same checks. The
# ResNet's sharded gradients and batch statistics are checked in
# tests/test_sharded_objectives.py.
MODELS_OF = {"barlow_twins.py": ("cnn", "resnet18", "vit_tiny"), "mae.py": (),
             "simclr.py": ("cnn",), "clip.py": ("cnn",), "siglip.py": ("cnn",),
             "byol.py": ("cnn",), "vicreg.py": ("cnn",), "moco_v3.py": ("vit_tiny",),
             "dino.py": ("cnn",)}
CONFIG_MODELS = [(path, model) for path in SSL_CONFIGS
                 for model in MODELS_OF.get(os.path.basename(path),
                                            ("cnn", "vit_tiny"))]


@pytest.mark.parametrize("path,model", CONFIG_MODELS,
                         ids=[f"{os.path.basename(p)}-{m}" for p, m in CONFIG_MODELS])
def test_every_config_runs_in_runlocal(path, model, tiny_data_dir, tmp_path):
  config = load_config(path, f"dataset=fashion_mnist,model={model},runlocal")
  config.data_dir = tiny_data_dir
  check_runlocal_run(config, train.train(config, str(tmp_path)), tmp_path)


def _params(workdir):
  return jax.device_get(tandem.load(workdir).params)


# With gradient accumulation (2 micro-batches of 8), the longer path through the
# step: its resume is exact too. Without accumulation, the SLURM test
# (tests/test_slurm.py) and the two-process test (tests/test_parallel.py) compare
# resumed runs with uninterrupted ones.
def test_resume_after_sigterm_equals_uninterrupted(tiny_data_dir, tmp_path,
                                                   monkeypatch):
  overrides = {"total_steps": 6, "checkpoint.every": 4, "grad_accum_steps": 2,
               **NO_EVALS}
  full = tmp_path / "full"
  train.train(bt_config(tiny_data_dir, **overrides), str(full))

  # Deliver a real SIGTERM to this process while step 3 is being logged.
  stop_signalling = sigterm_when_logged(monkeypatch, 3)
  split = tmp_path / "split"
  result = train.train(bt_config(tiny_data_dir, **overrides), str(split))
  assert result == {"interrupted_at": 3, "signal": signal.SIGTERM}
  assert tandem.load(str(split)).step == 3  # Saved on the signal, off-schedule.
  stop_signalling()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Handler restored.

  # What a crash after step 3's checkpoint leaves in the log: rows of steps the
  # resumed run logs again, and a line torn mid-write.
  with open(split / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "loss": -1.0}\n{"step": 5, "loss": -1.0}\n{"step": 6, "lo')

  result = train.train(bt_config(tiny_data_dir, **overrides), str(split))
  assert result["step"] == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               _params(split), _params(full))
  # The log holds each step once, all valid JSON, and no row of the lost steps.
  rows = [json.loads(line) for line in open(split / "metrics.jsonl")]
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, 7))
  assert all(r["loss"] != -1.0 for r in train_rows)
  # Batch-norm statistics resumed too (they are part of the saved model state).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(tandem.load(str(split)).model_state),
               jax.device_get(tandem.load(str(full)).model_state))


def test_load_embeds_any_images_on_one_device(tiny_data_dir, tmp_path):
  train.train(bt_config(tiny_data_dir, **NO_EVALS), str(tmp_path))
  model = tandem.load(str(tmp_path))
  assert model.step == 2 and model.config.objective == "barlow_twins"
  leaf = jax.tree.leaves(model.params)[0]
  assert len(leaf.sharding.device_set) == 1  # Trained on 8 devices, loaded on one.
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 256, (5, 28, 28, 1), np.uint8)
  feats = model.embed(gray, batch_size=4)
  assert feats.shape[0] == 5 and feats.dtype == np.float32
  assert np.isfinite(feats).all()
  # Any channel count: an RGB copy is converted back to the checkpoint's 1 channel.
  rgb = np.repeat(gray, 3, axis=-1)
  np.testing.assert_allclose(model.embed(rgb), feats, rtol=1e-4, atol=1e-4)
  # Any size: resized to the checkpoint's 28x28 first.
  big = rng.integers(0, 256, (3, 57, 41, 3), np.uint8)
  assert model.embed(big).shape == (3, feats.shape[1])
  assert model.embed(gray, layer="stage1").shape == (5, 8)
  with pytest.raises(ValueError, match="uint8"):
    model.embed(gray.astype(np.float32))
  # Misuse gets a sentence, not a silent wrong answer.
  with pytest.raises(ValueError, match=r"look like one image \[H, W, C\]; pass a "
                     r"batch \[N, H, W, C\] \(images\[None\] for one image\)"):
    model.embed(gray[0])
  assert model.embed(gray[:1]).shape == (1, feats.shape[1])
  for bad in (0, -1, 2.0):
    with pytest.raises(ValueError, match=f"batch_size={bad!r} must be a positive"):
      model.embed(gray, batch_size=bad)
  assert model.embed(gray[:0]).shape == (0, feats.shape[1])  # [0, D], not (0, 0).
  assert model.embed(gray[:0], layer="stage1").shape == (0, 8)


def test_unknown_config_key_is_named_and_nothing_is_written(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "tandem.ssl.train",
       "--config", "configs/ssl/barlow_twins.py:runlocal",
       "--config.optimizer.learning_rate=0.1", "--workdir", str(workdir)],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "optimizer.learning_rate" in proc.stderr
  assert not workdir.exists()


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  config = bt_config(str(tmp_path / "empty"))
  with pytest.raises(input_pipeline.DatasetNotPreparedError,
                     match="python -m tandem.data.prepare --dataset fashion_mnist"):
    train.train(config, str(tmp_path / "run"))


def test_nan_loss_stops_names_the_step_and_keeps_last_good_checkpoint(
    tiny_data_dir, tmp_path):
  # Good checkpoint at step 2.
  train.train(bt_config(tiny_data_dir, **NO_EVALS), str(tmp_path))
  good = _params(str(tmp_path))
  # A zero std makes the normalised inputs infinite from step 2 on.
  config = bt_config(tiny_data_dir, **{"total_steps": 5, "allow_config_change": True,
                                       "input.std": (0.0,), **NO_EVALS})
  with pytest.raises(train.NonFiniteLossError, match="non-finite at step 2"):
    train.train(config, str(tmp_path))
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 2
  jax.tree.map(np.testing.assert_array_equal, _params(str(tmp_path)), good)


def test_refuses_to_resume_a_different_config_unless_told(tiny_data_dir, tmp_path):
  train.train(bt_config(tiny_data_dir, **NO_EVALS), str(tmp_path))
  other = bt_config(tiny_data_dir, **{"optimizer.lr_per_256": 0.5, "total_steps": 3,
                                      **NO_EVALS})
  with pytest.raises(train.ConfigMismatchError, match="optimizer.lr_per_256"):
    train.train(other, str(tmp_path))
  assert json.load(open(tmp_path / "config.json"))["optimizer"]["lr_per_256"] != 0.5
  other.allow_config_change = True
  assert train.train(other, str(tmp_path))["step"] == 3


def test_half_written_checkpoint_is_ignored(tiny_data_dir, tmp_path):
  train.train(bt_config(tiny_data_dir, **NO_EVALS), str(tmp_path))
  # What a process killed in the middle of an orbax save leaves behind.
  partial = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1234567"
  (partial / "model").mkdir(parents=True)
  assert checkpoint.Checkpointer(str(tmp_path)).latest_step() == 2
  assert tandem.load(str(tmp_path)).step == 2


def test_on_the_command_line_sigusr1_prints_stacks_and_ctrl_c_saves_to_resume(
    tiny_data_dir, tmp_path):
  workdir = tmp_path / "run"
  # Checkpoints every 8 steps: Ctrl-C saves one where it stops.
  command = [sys.executable, "-m", "tandem.ssl.train", "--config", BT_NO_EVALS,
             f"--config.data_dir={tiny_data_dir}", "--config.total_steps=24",
             "--config.checkpoint.every=8", "--workdir", str(workdir)]
  proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step 1/24"):  # Where is it? Every thread's stack; goes on.
      proc.send_signal(signal.SIGUSR1)
    if line.startswith("step 2/24"):
      proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=120) == 128 + signal.SIGINT, "".join(lines)
  dump = "".join(lines).split("step 1/24", 1)[1]
  assert "(most recent call first)" in dump and "in train\n" in dump, dump
  stopped = tandem.load(str(workdir)).step
  assert 2 <= stopped < 24
  assert any("Run the same command to resume" in l for l in lines)

  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert f"Resumed from step {stopped}" in proc.stdout
  assert tandem.load(str(workdir)).step == 24
  steps = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl")]
  assert steps[:stopped] == list(range(1, stopped + 1))
  assert steps[stopped] == stopped + 1  # Continued where it stopped.


def test_the_metrics_writer_leaves_pytorch_unimported(tmp_path):
  """tensorboardX imports PyTorch (~3 s) when it is installed (the bench extra
  installs it); the writer keeps it out of training processes, and `import torch`
  still works afterwards."""
  if importlib.util.find_spec("torch") is None:
    pytest.skip("PyTorch is not installed here: there is no import to keep out.")
  code = ("import sys\nfrom tandem import metrics_writer\n"
          f"writer = metrics_writer.MetricsWriter({str(tmp_path)!r})\n"
          "writer.write(1, {'loss': 1.0})\n"
          "assert 'torch' not in sys.modules, 'tensorboardX imported torch'\n"
          "import torch\nassert float(torch.ones(2).sum()) == 2.0\n")
  run_in_fresh_python(code, timeout=120)
  assert list(tmp_path.glob("tensorboard/events.out.tfevents.*"))


def test_evals_run_every_m_steps_and_share_features(tiny_data_dir, tmp_path,
                                                   monkeypatch):
  from tandem.transfer import features
  calls = []
  extract = features.extract
  monkeypatch.setattr(features, "extract",
                      lambda *a, **k: calls.append(1) or extract(*a, **k))
  every = {f"evals.{name}.every": 1 for name in ("linear_probe", "fewshot", "knn")}
  train.train(bt_config(tiny_data_dir, **every), str(tmp_path))
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  for key in ("linear_probe/pre_logits/test_top1",
              "fewshot_5shot/pre_logits/test_top1_mean",
              "knn_k20_T0.07/pre_logits/test_top1"):
    assert [r["step"] for r in records if key in r] == [1, 2], key
  # Train and test features once per evaluation, shared by the three evaluators.
  assert len(calls) == 2 * 2


# Orbax leaves an asyncio loop behind after a failed restore; harmless here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_checkpoint_gives_a_clear_error(tiny_data_dir, tmp_path):
  train.train(bt_config(tiny_data_dir, **NO_EVALS), str(tmp_path))
  for path in (tmp_path / "checkpoints" / "2" / "model").rglob("*"):
    if path.is_file() and (path.parent.name == "d" or path.name == "manifest.ocdbt"):
      path.write_bytes(b"not a checkpoint")  # Bit rot in the array data.
  with pytest.raises(checkpoint.CheckpointError, match="step 2"):
    train.train(bt_config(tiny_data_dir, **NO_EVALS), str(tmp_path))
  with pytest.raises(checkpoint.CheckpointError, match="step 2"):
    tandem.load(str(tmp_path))
