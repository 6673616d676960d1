"""Faults and bad inputs: each is refused or survived, with an error that says what
happened and how to fix it, and nothing already saved is lost."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tandem
from tandem import checkpoint
from tandem import metrics_writer
from tandem import train_state
from tandem.ssl import train

from conftest import BT_NO_EVALS, NO_EVALS, ROOT, bt_config


@pytest.mark.parametrize("key, value, message", [
    ("checkpoint.keep", 0, r"checkpoint.keep=0 must be an integer >= 1 \(0 would "
     "delete every checkpoint"),
    ("checkpoint.every", 0, r"checkpoint.every=0 must be an integer >= 1 \(in steps; "
     "use total_steps to save only at the end"),
    ("log_every", 0, r"log_every=0 must be an integer >= 1"),
    ("total_steps", -3, r"total_steps=-3 must be an integer >= 1"),
    ("checkpoint.keep_every", -1, r"checkpoint.keep_every=-1 must be an integer >= 0"),
    ("input.batch_size", 0, r"input.batch_size=0 must be an integer >= 1"),
    ("optimizer.lr_per_256", float("nan"), r"lr_per_256=nan must be a finite number"),
    ("optimizer.lr_per_256", float("inf"), r"lr_per_256=inf must be a finite number"),
    ("optimizer.lr_per_256", -0.1, r"lr_per_256=-0.1 must be a finite number >= 0"),
    ("optimizer.weight_decay", float("nan"), r"weight_decay=nan must be a finite"),
])
def test_bad_run_settings_are_refused_before_the_workdir_is_touched(
    key, value, message, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message):
    train.train(bt_config(str(tmp_path / "no_data"), **{key: value}), str(workdir))
  assert not workdir.exists()  # No config.json: the corrected command starts clean.


def test_a_workdir_without_a_checkpoint_takes_the_corrected_config(tmp_path):
  # A run that stopped before its first save left config.json and an empty
  # checkpoint folder: the corrected command is not "a different config".
  first = bt_config(str(tmp_path), log_every=1)
  checkpoint.write_config(str(tmp_path), first)
  os.makedirs(checkpoint.checkpoint_dir(str(tmp_path)))
  train.check_config_matches_workdir(bt_config(str(tmp_path), log_every=2),
                                     str(tmp_path))


def test_truncate_jsonl_keeps_complete_rows_up_to_the_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "loss": float(s)} for s in (0, 1, 2, 3)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows)
                  + 'not json\n{"loss": 1}\n{"step": 2, "lo')
  assert metrics_writer.truncate_jsonl(str(path), 2) == 4  # 3, junk, no step, torn.
  assert [json.loads(l) for l in path.read_text().splitlines()] == rows[:3]
  assert metrics_writer.truncate_jsonl(str(path), 2) == 0  # Nothing more to drop.
  assert metrics_writer.truncate_jsonl(str(tmp_path / "missing.jsonl"), 2) == 0


@pytest.fixture
def read_only_dir(tmp_path):
  """An empty read-only tmpfs (root only: permissions do not stop root)."""
  mount = tmp_path / "ro"
  mount.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
      capture_output=True).returncode:
    pytest.skip("needs root to mount a read-only tmpfs")
  yield mount
  subprocess.run(["umount", str(mount)], check=True)



@pytest.fixture
def small_tmpfs(tmp_path):
  """`mount(path)` mounts an empty 8 MB tmpfs on a new directory `path` (root
  only); all unmounted at the end."""
  if os.geteuid() != 0:
    pytest.skip("needs root to mount a tmpfs")
  mounted = []

  def mount(path):
    os.makedirs(path)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
                      capture_output=True).returncode:
      pytest.skip("cannot mount a tmpfs here")
    mounted.append(path)
    return path

  yield mount
  for path in reversed(mounted):
    subprocess.run(["umount", "-l", str(path)], check=True)


def _fill(folder):
  """Fills the filesystem holding `folder` to the last byte."""
  fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT)
  for block in (65536, 1):  # Large blocks, then the last bytes one by one.
    try:
      while True:
        os.write(fd, b"\0" * block)
    except OSError:
      pass
  os.close(fd)


def _before_saving(monkeypatch, step, fault):
  """Runs `fault()` once the run's earlier saves are complete, just before it
  saves `step`."""
  original = checkpoint.Checkpointer.save

  def save(self, saved_step, *args, **kwargs):
    if saved_step == step:
      self.wait()
      fault()
    return original(self, saved_step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)


def test_a_read_only_workdir_is_refused_at_start_naming_it(read_only_dir, tmp_path):
  workdir = read_only_dir / "run"
  with pytest.raises(checkpoint.WorkdirError,
                     match=f"Cannot write to the workdir {workdir}: Read-only file "
                           "system .*pass another --workdir"):
    train.train(bt_config(str(tmp_path / "no_data")), str(workdir))


def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_owner(tmp_path):
  workdir = str(tmp_path)
  with checkpoint.WorkdirLock(workdir):
    with pytest.raises(checkpoint.WorkdirError, match=(
        rf"in use by another run \(host {socket.gethostname()} pid {os.getpid()} "
        r"since .*\). Wait for it to finish or stop it, or pass another --workdir")):
      train.train(bt_config(str(tmp_path / "no_data")), workdir)
    assert not (tmp_path / "config.json").exists()

  # A holder killed with SIGKILL leaves no stale lock: the kernel drops it.
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from tandem import checkpoint; "
       "checkpoint.WorkdirLock(sys.argv[1]).__enter__(); print('locked', flush=True); "
       "time.sleep(120)", workdir], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(checkpoint.WorkdirError, match=f"pid {holder.pid} since"):
      with checkpoint.WorkdirLock(workdir):
        pass
  finally:
    holder.kill()
    holder.wait()
  with checkpoint.WorkdirLock(workdir):
    pass


def test_parameters_that_overflow_under_a_finite_loss_are_caught():
  # The loss (taken before the update) is finite; the update overflows float32.
  loss_fn = lambda p, ms, batch, rng: (jnp.sum(p["w"] ** 2), ({}, ms))
  params = {"w": jnp.asarray([3.0, 0.5]), "b": jnp.ones(2)}
  for scale, expected in ((-0.1, -1), (-1e38, 0)):
    tx = optax.scale(scale)
    state = train_state.create(params, tx, {}, seed=0)
    step = jax.jit(train_state.make_step(loss_fn, tx))
    new_params, state, metrics = step(params, state, {})
    assert np.isfinite(float(metrics["loss"]))
    assert int(state["nonfinite_step"]) == expected, (scale, new_params)
  with pytest.raises(train_state.NonFiniteLossError,
                     match="loss, gradient or parameters became non-finite at step 0"):
    train_state.check_finite(state, "")


# `make test-slow` runs 10 trials (the figure in README's Reliability table).
KILL_TRIALS = int(os.environ.get("TANDEM_KILL_TRIALS", "3"))


def test_kill_9_at_random_moments_then_the_same_command_resumes_bitwise(
    tiny_data_dir, tmp_path):
  steps = 30  # Checkpoints every 3 steps, asynchronously: kills land mid-save too.
  overrides = {"total_steps": steps, "checkpoint.every": 3, **NO_EVALS}
  train.train(bt_config(tiny_data_dir, **overrides), str(tmp_path / "reference"))
  expected = jax.tree.leaves(jax.device_get(
      tandem.load(str(tmp_path / "reference")).params))
  kill_after = np.random.default_rng(0).integers(1, steps, size=KILL_TRIALS)
  outcomes = []
  for trial, after in enumerate(kill_after):
    workdir = tmp_path / f"trial{trial}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.ssl.train", "--config", BT_NO_EVALS,
         f"--config.data_dir={tiny_data_dir}", f"--config.total_steps={steps}",
         "--config.checkpoint.every=3", "--workdir", str(workdir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
      lines.append(line)
      if line.startswith(f"step {after}/{steps}"):
        proc.kill()  # SIGKILL: no handler runs, an async save may be half written.
        break
    proc.stdout.close()
    assert proc.wait(timeout=120) == -signal.SIGKILL, "".join(lines)
    saved = checkpoint.Checkpointer(str(workdir)).latest_step()

    result = train.train(bt_config(tiny_data_dir, **overrides), str(workdir))
    got = jax.tree.leaves(jax.device_get(tandem.load(str(workdir)).params))
    identical = all(np.array_equal(a, b) for a, b in zip(got, expected))
    logged = [row["step"] for row in map(json.loads, open(workdir / "metrics.jsonl"))
              if "loss" in row]  # Training rows (evaluation rows have no loss).
    outcomes.append(dict(killed_after_step=int(after), resumed_from=saved,
                         final_step=result["step"], bitwise=identical,
                         log_steps_once=logged == list(range(1, steps + 1))))
  print(f"kill -9 trials: {sum(o['bitwise'] for o in outcomes)} of {len(outcomes)} "
        f"bitwise identical: {outcomes}")
  assert all(o["bitwise"] and o["log_steps_once"] and o["final_step"] == steps
             for o in outcomes), outcomes


@pytest.fixture(scope="module")
def six_step_run(tiny_data_dir, tmp_path_factory):
  """A 6-step run with checkpoints at steps 3 and 6."""
  workdir = tmp_path_factory.mktemp("six_steps") / "run"
  train.train(bt_config(tiny_data_dir, total_steps=6, **{"checkpoint.every": 3},
                        **NO_EVALS), str(workdir))
  return workdir


def _damage(step_dir, how):
  """Damages the largest array file of the step's `model` item."""
  files = sorted((step_dir / "model").glob("ocdbt.process_0/d/*"),
                 key=lambda p: p.stat().st_size)
  if how == "flipped bit":  # Decompresses without error, to wrong numbers.
    data = bytearray(files[-1].read_bytes())
    data[len(data) // 2] ^= 0x40
    files[-1].write_bytes(bytes(data))
  elif how == "truncated file":
    os.truncate(files[-1], files[-1].stat().st_size // 2)
  elif how == "deleted file":
    files[-1].unlink()
  elif how == "garbage metadata":
    (step_dir / "model" / "_METADATA").write_text("garbage{")


@pytest.mark.parametrize("how, cause", [
    ("flipped bit", r"1 array\(s\) of 'model' read back with a checksum other than "
     r"the one saved: \['params'\]\['projector'\]\['out'\]\['kernel'\]"),
    ("truncated file", r"array params\.[\w.]+: ValueError: "
     r"OUT_OF_RANGE: Error reading"),
    ("deleted file", r"array params\.[\w.]+: ValueError: "),
    ("garbage metadata", r"JSONDecodeError: Expecting value"),
], ids=lambda v: v if " " in v and "\\" not in v else "")
def test_a_damaged_checkpoint_is_named_with_the_intact_step_before_it(
    six_step_run, tiny_data_dir, tmp_path, how, cause):
  workdir = tmp_path / "run"
  shutil.copytree(six_step_run, workdir)
  _damage(workdir / "checkpoints" / "6", how)
  ckpts = workdir / "checkpoints"
  with pytest.raises(checkpoint.CheckpointError, match=(
      rf"^Checkpoint step 6 in {ckpts} is damaged or unreadable: {cause}.*\. Step 3 "
      rf"is intact: load it with step=3, or move the damaged step aside \(mv "
      rf"{ckpts}/6 {workdir}/damaged_step_6\)\.$")):
    tandem.load(str(workdir))
  assert tandem.load(str(workdir), step=3).step == 3
  # Resume refuses too (it does not fall back by itself), saying what to do.
  config = bt_config(tiny_data_dir, total_steps=6,
                     **{"checkpoint.every": 3}, **NO_EVALS)
  with pytest.raises(checkpoint.CheckpointError, match=(
      rf"^Checkpoint step 6 .* damaged or unreadable: {cause}.*\. Step 3 is intact: "
      r"move the damaged step aside \(mv .*\) and run the same command to resume "
      r"from step 3\.$")):
    train.train(config, str(workdir))


def test_a_run_resumed_past_a_damaged_step_as_told_ends_as_if_undamaged(
    six_step_run, tiny_data_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(six_step_run, workdir)
  _damage(workdir / "checkpoints" / "6", "flipped bit")
  os.rename(workdir / "checkpoints" / "6", workdir / "damaged_step_6")  # As told.
  result = train.train(bt_config(tiny_data_dir, total_steps=6,
                                 **{"checkpoint.every": 3}, **NO_EVALS), str(workdir))
  assert result["step"] == 6
  expected = jax.tree.leaves(jax.device_get(tandem.load(str(six_step_run)).params))
  got = jax.tree.leaves(jax.device_get(tandem.load(str(workdir)).params))
  assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_checksums_change_with_any_word_and_not_with_the_sharding():
  x = np.arange(24, dtype=np.float32).reshape(4, 6)
  base = checkpoint.array_checksums({"x": x, "b": np.bool_(True), "h": x[:2].astype(
      jnp.bfloat16), "k": jax.random.key_data(jax.random.key(0))})
  for i in range(x.size):  # One flipped bit in any word.
    y = x.copy().view(np.uint32)
    y.flat[i] ^= 1 << (i % 32)
    assert checkpoint.array_checksums({"x": y.view(np.float32)})["['x']"] \
        != base["['x']"]
  swapped = x.copy()
  swapped.flat[[0, 1]] = swapped.flat[[1, 0]]  # Same words, other places.
  assert checkpoint.array_checksums({"x": swapped})["['x']"] != base["['x']"]
  mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:2])
  sharded = jax.device_put(x, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, "d")))
  assert checkpoint.array_checksums({"x": sharded})["['x']"] == base["['x']"]



def test_a_full_disk_during_a_save_stops_the_run_naming_it_and_the_same_command_resumes(
    six_step_run, tiny_data_dir, small_tmpfs, tmp_path, monkeypatch):
  disk = small_tmpfs(tmp_path / "disk")
  workdir = disk / "run"
  config = lambda: bt_config(tiny_data_dir, total_steps=6, **{"checkpoint.every": 3},
                             **NO_EVALS)
  _before_saving(monkeypatch, 6, lambda: _fill(disk))  # Its async writes fail.
  with pytest.raises(checkpoint.WorkdirError, match=(
      rf"^Could not write checkpoint step 6 in {workdir}/checkpoints: No space left "
      rf"on device \(the filesystem at {disk}: 0.0 MB free of 8.0 MB\)\. The last "
      r"complete checkpoint is step 3, intact; no partial checkpoint is ever resumed "
      r"from\. Free space \(or raise the quota\), or pass another --workdir with "
      r"this one's files, then run the same command to resume\.$")):
    train.train(config(), str(workdir))
  assert checkpoint.all_steps(str(workdir)) == [3]
  assert tandem.load(str(workdir)).step == 3  # Read back, checksums verified.

  monkeypatch.undo()
  os.remove(disk / "filler")
  assert train.train(config(), str(workdir))["step"] == 6
  expected = jax.tree.leaves(jax.device_get(tandem.load(str(six_step_run)).params))
  got = jax.tree.leaves(jax.device_get(tandem.load(str(workdir)).params))
  assert all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_a_metrics_row_that_does_not_fit_names_the_file(
    tiny_data_dir, small_tmpfs, tmp_path, monkeypatch):
  disk = small_tmpfs(tmp_path / "disk")
  writer = metrics_writer.MetricsWriter(str(disk))
  _fill(disk)  # Rows still fit in the file's last page for a while.
  with pytest.raises(OSError, match=rf"No space left on device: '{disk}/metrics.jsonl'"):
    for step in range(10000):
      writer.write(step, {"loss": 1.0})
  writer.close()
  os.remove(disk / "filler")

  # The run stops with a WorkdirError naming that file (the real OSError above).
  def write(self, step, metrics):
    raise OSError(28, "No space left on device", f"{self._path}")
  monkeypatch.setattr(metrics_writer.MetricsWriter, "write", write)
  workdir = tmp_path / "run"
  with pytest.raises(checkpoint.WorkdirError, match=(
      rf"^Could not write {workdir}/metrics.jsonl: No space left on device \(the "
      rf"filesystem at .*\)\. No checkpoint was completed\. Free space .* run the "
      r"same command to start again\.$")):
    train.train(bt_config(tiny_data_dir, total_steps=2, **NO_EVALS), str(workdir))


def test_a_checkpoint_volume_turned_read_only_mid_run_stops_it_naming_it(
    tiny_data_dir, small_tmpfs, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  volume = small_tmpfs(workdir / "checkpoints")  # Checkpoints on their own volume.
  _before_saving(monkeypatch, 6, lambda: subprocess.run(
      ["mount", "-o", "remount,ro", str(volume)], check=True))
  with pytest.raises(checkpoint.WorkdirError, match=(
      rf"^Could not write checkpoint step 6 in {volume}: Read-only file system "
      rf"\(the filesystem at {volume}: .* MB free of 8.0 MB\)\. The last complete "
      r"checkpoint is step 3, intact; .* Make the volume writable again, or pass "
      r"another --workdir")):
    train.train(bt_config(tiny_data_dir, total_steps=6, **{"checkpoint.every": 3},
                          **NO_EVALS), str(workdir))
  assert tandem.load(str(workdir)).step == 3


@pytest.mark.parametrize("fault", ["SIGTERM", "crash"])
def test_a_run_stopped_during_its_final_evaluation_keeps_its_training_metrics(
    six_step_run, tiny_data_dir, tmp_path, monkeypatch, fault):
  from tandem.launch import run_dir  # pylint: disable=g-import-not-at-top
  from tandem.transfer import periodic  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(six_step_run, workdir)
  os.remove(workdir / "results.json")  # As if the first attempt died evaluating.
  config = bt_config(tiny_data_dir, total_steps=6, **{"checkpoint.every": 3},
                     **NO_EVALS)
  original_run = periodic.PeriodicEvals.run

  def run_and_fail(self, names, version, variables, log=None):
    if fault == "SIGTERM":
      signal.raise_signal(signal.SIGTERM)  # A preemption, mid-evaluation.
    raise RuntimeError("the evaluation failed")

  monkeypatch.setattr(periodic.PeriodicEvals, "run", run_and_fail)
  if fault == "SIGTERM":
    assert train.train(config, str(workdir)) == {"interrupted_at": 6, "signal": 15}
  else:
    with pytest.raises(RuntimeError, match="the evaluation failed"):
      train.train(config, str(workdir))
  results = json.load(open(workdir / "results.json"))
  assert results["final_evaluation"] == \
      {"SIGTERM": "interrupted", "crash": "pending"}[fault]
  assert results["step"] == 6 and np.isfinite(results["final"]["loss"])
  assert not run_dir.is_finished(str(workdir))  # A sweep runs it again.

  monkeypatch.setattr(periodic.PeriodicEvals, "run", original_run)
  train.train(config, str(workdir))  # The same command: evaluates again.
  again = json.load(open(workdir / "results.json"))
  assert again["final_evaluation"] == "done" and again["final"] == results["final"]
  assert run_dir.is_finished(str(workdir))


def test_a_record_file_truncated_mid_run_is_named_and_the_checkpoint_kept(
    tiny_data_dir, tmp_path, monkeypatch):
  from tandem.data import input_pipeline  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "data"
  shutil.copytree(tiny_data_dir, data_dir)
  (records,) = data_dir.glob("fashion_mnist/*/fashion_mnist-train.array_record-*")
  original_write = metrics_writer.MetricsWriter.write

  def write(self, step, metrics):
    original_write(self, step, metrics)
    if step == 3:  # Mid-run, after the first checkpoint.
      os.truncate(records, records.stat().st_size // 3)

  monkeypatch.setattr(metrics_writer.MetricsWriter, "write", write)
  workdir = tmp_path / "run"
  with pytest.raises(input_pipeline.DataSourceError, match=(
      rf"^Could not read example \d+ of fashion_mnist train \(record \d+ of "
      rf"{records}\): \w+: .*\. The dataset's files changed or were damaged after "
      r"they were prepared \(truncated\? overwritten\?\)\. Prepare it again \(python "
      r"-m tandem.data.prepare --dataset fashion_mnist\), then run the same command "
      r"to resume from the last checkpoint\.")):  # (Grain adds a note after.)
    train.train(bt_config(str(data_dir), total_steps=30, log_every=1, **{
        "checkpoint.every": 3, "checkpoint.async_save": False}, **NO_EVALS),
        str(workdir))
  assert tandem.load(str(workdir)).step >= 3


def _command_line(*overrides):
  """The training program's flag parsing (in-process) on the runlocal config."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tandem import config_arg  # pylint: disable=g-import-not-at-top
  return lambda ctx: config_arg.parse_flags(flags.FlagValues(), [
      "train", "--config=configs/ssl/barlow_twins.py:runlocal", *overrides])


def _train_with(**overrides):
  return lambda ctx: train.train(bt_config(ctx["data_dir"], **overrides),
                                 str(ctx["tmp"] / "run"))


def _transfer_with(**overrides):
  def run(ctx):
    from tandem import config_arg  # pylint: disable=g-import-not-at-top
    from tandem.transfer import run as transfer  # pylint: disable=g-import-not-at-top
    config = config_arg.load_config(os.path.join(ROOT, "configs/transfer/vtab.py"))
    config.data_dir = ctx["data_dir"]
    config.checkpoint = str(ctx["workdir"])
    config.update(overrides)
    return transfer.run(config)
  return run


def _embed(images):
  return lambda ctx: tandem.load(str(ctx["workdir"])).embed(images)


def _cataloged():
  from tandem.data import input_pipeline  # pylint: disable=g-import-not-at-top
  cli_error = SystemExit  # The command line exits with one "Error: ..." line.
  return [
      ("unknown config key", _command_line("--config.opimizer.lr=0.1"), cli_error,
       r"^Error: unknown config key 'opimizer.lr' \(no such field under <top>; "
       r"fields there: .*optimizer"),
      ("mistyped nested key", _command_line("--config.optimizer.lrr=0.1"), cli_error,
       r"^Error: unknown config key 'optimizer.lrr' \(no such field under "
       r"optimizer; fields there: .*lr_per_256"),
      ("batch_size=abc", _command_line("--config.input.batch_size=abc"), cli_error,
       r"^Error: IllegalFlagValueError: flag --config.input.batch_size=abc: "
       r"invalid literal for int\(\)"),
      ("negative batch_size", _train_with(**{"input.batch_size": -4}), ValueError,
       r"^config.input.batch_size=-4 must be an integer >= 1 \(images per step"),
      ("batch not divisible by the devices", _train_with(**{"input.batch_size": 12}),
       ValueError, r"^config.input.batch_size=12 must be divisible by the 8 batch "
       r"shards of the mesh\.$"),
      ("unknown dataset", _train_with(dataset="fashoin_mnist"),
       input_pipeline.DatasetNotPreparedError,
       r"^Dataset 'fashoin_mnist' is not prepared in .* \(and TFDS has no builder "
       r"for it\)\. Prepare it with:\n  python -m tandem.data.prepare --dataset "
       r"fashoin_mnist --data_dir "),
      ("unknown model", _train_with(model_name="resnt"), ValueError,
       r"^Unknown model 'resnt'; available: cnn, resnet, text, vit\.$"),
      ("unknown objective", _train_with(objective="barlow"), ValueError,
       r"^Unknown objective 'barlow' \(config.objective\): no module "
       r"tandem.ssl.barlow\.$"),
      ("missing data dir", lambda ctx: train.train(
          bt_config(str(ctx["tmp"] / "no_such_dir")), str(ctx["tmp"] / "run")),
       input_pipeline.DatasetNotPreparedError,
       r"^Dataset 'fashion_mnist' is not prepared in .*/no_such_dir \(looked for "
       r".*\)\. Prepare it with:\n  python -m tandem.data.prepare"),
      ("tandem.load on a missing dir",
       lambda ctx: tandem.load(str(ctx["tmp"] / "nothing")), checkpoint.CheckpointError,
       r"^No checkpoints: the workdir '.*/nothing' does not exist\.$"),
      ("tandem.load on a non-tandem dir", lambda ctx: tandem.load(str(ctx["tmp"])),
       checkpoint.CheckpointError, r"^'.*' has no config.json: not a tandem workdir\.$"),
      ("tandem.load on a file",
       lambda ctx: tandem.load(str(ctx["workdir"] / "config.json")),
       checkpoint.CheckpointError, r"^'.*/config.json' is a file; pass the workdir "
       r"of a run \(the directory holding config.json and checkpoints/\)\.$"),
      ("embed float images in [0, 255]",
       _embed(np.full((2, 28, 28, 1), 255.0, np.float32)), ValueError,
       r"^Float images must lie in \[0, 1\]; these span \[255.0, 255.0\]\. Scale "
       r"them, or pass uint8 images in \[0, 255\]\.$"),
      ("embed one image [H, W, C]", _embed(np.zeros((28, 28, 1), np.uint8)),
       ValueError, r"look like one image \[H, W, C\]; pass a batch \[N, H, W, C\] "
       r"\(images\[None\] for one image\)"),
      ("embed rank 2", _embed(np.zeros((2, 28), np.uint8)), ValueError,
       r"^images must be uint8 in \[0, 255\] or float in \[0, 1\], shaped \[N, H, W, "
       r"C\] \(or \[N, H, W\]\); got uint8 \(2, 28\)\.$"),
      ("embed channels first", _embed(np.zeros((2, 3, 28, 28), np.uint8)),
       ValueError, r"C in 1..4 \(gray, gray\+alpha, RGB, RGBA\), got shape \(2, 3, 28, "
       r"28\)\. Channels go last: transpose \[N, C, H, W\] arrays with "
       r"images.transpose\(0, 2, 3, 1\)\.$"),
      ("embed batch_size 0", lambda ctx: tandem.load(str(ctx["workdir"])).embed(
          np.zeros((2, 28, 28, 1), np.uint8), batch_size=0), ValueError,
       r"batch_size"),
      ("transfer on a missing checkpoint",
       lambda ctx: _transfer_with(checkpoint=str(ctx["tmp"] / "gone"))(ctx),
       checkpoint.CheckpointError, r"^No checkpoints: the workdir '.*/gone' does "
       r"not exist\.$"),
      ("transfer without a checkpoint", _transfer_with(checkpoint=""), ValueError,
       r"^Set --config.checkpoint=WORKDIR \(a pretraining workdir\)\.$"),
      ("unknown task or suite", _transfer_with(tasks="vtab1"), ValueError,
       r"^Unknown task 'vtab1'\. Suites: \['offline', 'vtab1k'\]; tasks: "),
      ("unknown evaluator", _transfer_with(evaluators="linear_prob"), ValueError,
       r"^Unknown evaluators \['linear_prob'\]; available: \[.*'linear_probe'"),
  ]


@pytest.mark.parametrize("case", range(len(_cataloged())),
                         ids=[c[0] for c in _cataloged()])
def test_a_catalogue_of_bad_inputs_gets_errors_that_say_how_to_fix_them(
    six_step_run, tiny_data_dir, tmp_path, case):
  name, call, error, message = _cataloged()[case]
  with pytest.raises(error) as raised:
    call({"data_dir": tiny_data_dir, "workdir": six_step_run, "tmp": tmp_path})
  text = str(raised.value.code if error is SystemExit else raised.value)
  assert re.search(message, text), f"{name}: {text}"
