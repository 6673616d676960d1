"""Faults and bad inputs: each is refused or survived, with an error that says what
happened and how to fix it, and nothing already saved is lost."""
import json
import os
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
