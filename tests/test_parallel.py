"""Mesh construction, partition rules, FSDP-sharded training == data parallel, and
several processes training together over 127.0.0.1."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import tandem
from tandem import checkpoint
from tandem import parallel
from tandem.ssl import train
from conftest import (BT_NO_EVALS, NO_EVALS, assert_same_params, bt_config,
                      xla_flags)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mesh_from_config():
  mesh = parallel.make_mesh({"data": -1, "fsdp": 2})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="Unknown mesh axes"):
    parallel.make_mesh({"batch": 8})
  with pytest.raises(ValueError, match="needs 6 devices"):
    parallel.make_mesh({"data": 3, "fsdp": 2})


def test_partition_rules_first_match_and_clear_errors():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  tree = {"encoder": {"kernel": np.zeros((8, 6)), "bias": np.zeros((6,))},
          "count": np.zeros(())}
  rules = [(r"encoder/kernel", (None, "fsdp")), (r"bias", ("fsdp", None)),
           (".*", ())]
  shardings = parallel.tree_shardings(tree, rules, mesh)
  assert shardings["encoder"]["kernel"].spec == P(None, "fsdp")
  assert shardings["encoder"]["bias"].spec == P()  # Spec longer than rank.
  assert shardings["count"].spec == P()
  with pytest.raises(ValueError, match="does not divide 6"):
    parallel.tree_shardings({"w": np.zeros((6, 3))}, [("w", ("data", None))], mesh)


def test_fsdp_sharded_training_equals_data_parallel(tiny_data_dir, tmp_path):
  plain = bt_config(tiny_data_dir, **NO_EVALS)  # Data parallel over all 8 devices.
  train.train(plain, str(tmp_path / "data_parallel"))

  sharded = bt_config(tiny_data_dir, **NO_EVALS, **{
      "mesh.data": 4, "mesh.fsdp": 2,
      "partition_rules": [(r"projector/.*kernel", (None, "fsdp")), (".*", ())]})
  train.train(sharded, str(tmp_path / "fsdp"))

  a = jax.device_get(tandem.load(str(tmp_path / "data_parallel")).params)
  b = jax.device_get(tandem.load(str(tmp_path / "fsdp")).params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5),
               a, b)
  # The rule matched: the projector's kernels were the ones sharded over fsdp.
  specs = parallel.tree_shardings(b, sharded.partition_rules,
                                  parallel.make_mesh(sharded.mesh))
  assert P(None, "fsdp") in {s.spec for s in jax.tree.leaves(specs["projector"])}


def _losses(workdir):
  return {r["step"]: r["loss"] for r in map(json.loads, open(workdir / "metrics.jsonl"))
          if "loss" in r}


def test_two_processes_equal_one_and_restore_on_any_topology(tiny_data_dir, tmp_path):
  """2 processes x 4 devices (gloo over 127.0.0.1) train like 1 process x 8 devices;
  their checkpoint loads on one device and resumes on another mesh and process
  count (fsdp over 2 x 4 -> data parallel over 1 x 4), data stream included
  (docs/PROTOCOLS.md, "Data order")."""
  # Shard even tiny arrays.
  fsdp = {"sharding": "fsdp", "fsdp_min_size_mb": 0.0, **NO_EVALS}
  workdir, single = tmp_path / "two_processes", tmp_path / "one_process"
  proc = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "2",
       "--config", BT_NO_EVALS,
       f"--config.data_dir={tiny_data_dir}", "--config.total_steps=3",
       "--config.log_every=1", "--config.sharding=fsdp",
       "--config.fsdp_min_size_mb=0", "--workdir", str(workdir)],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "DEVICES_PER_PROCESS": "4"})
  assert proc.returncode == 0, proc.stdout + proc.stderr + (
      workdir / "process_1.log").read_text()
  assert "step 3/3" in proc.stdout
  train.train(bt_config(tiny_data_dir, total_steps=3, log_every=1, **fsdp),
              str(single))
  two, one = _losses(workdir), _losses(single)
  assert sorted(two) == [1, 2, 3] and len(set(two.values())) == 3
  np.testing.assert_allclose([two[s] for s in one], list(one.values()), rtol=1e-5)

  # Loads in this process on one device, whatever mesh wrote it.
  model = tandem.load(str(workdir))
  assert model.step == 3
  assert {d for x in jax.tree.leaves(model.params) for d in x.sharding.device_set} \
      == {jax.local_devices()[0]}
  assert_same_params(workdir, single)

  # One fresh process on 4 devices resumes the two processes' run with data
  # parallelism (another process count, device count and sharding): arrays, step
  # and data stream carry over; the one-process run goes on as it was.
  proc = subprocess.run(
      [sys.executable, "-m", "tandem.ssl.train",
       "--config", BT_NO_EVALS,
       f"--config.data_dir={tiny_data_dir}", "--config.total_steps=5",
       "--config.sharding=dp", "--config.allow_config_change=True",
       "--workdir", str(workdir)],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(4)})
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "over 4 devices in 1 process" in proc.stdout, proc.stdout + proc.stderr
  assert "Resumed from step 3" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
  train.train(bt_config(tiny_data_dir, total_steps=5, allow_config_change=True,
                        **fsdp), str(single))
  assert_same_params(workdir, single)


def test_the_launcher_passes_sigterm_on_and_a_dead_process_stops_the_others(
    tiny_data_dir, tmp_path):
  """1. SIGTERM to `launch/local_multiprocess.sh` alone reaches both trainers once:
  they save at the same step and exit, and none is left running. 2. The same
  command resumes there; SIGKILL one of the 2 processes: the survivor stops within
  the heartbeat timeout instead of waiting forever in a collective, and the
  launcher says which process died and how to resume."""
  workdir = tmp_path / "run"

  def launch():
    return subprocess.Popen(
        ["bash", "launch/local_multiprocess.sh", "2",
         "--config", "configs/ssl/barlow_twins.py:runlocal",
         f"--config.data_dir={tiny_data_dir}", "--config.total_steps=100000",
         "--config.log_every=1", "--heartbeat_timeout_s=10", "--workdir",
         str(workdir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "DEVICES_PER_PROCESS": "2"})

  def wait_for_step_after(launcher, step):  # Both processes are stepping.
    deadline = time.time() + 240
    metrics = workdir / "metrics.jsonl"
    while not metrics.exists() or not any(
        json.loads(line).get("step", 0) > step
        for line in metrics.read_text().splitlines()[-3:] if line.endswith("}")):
      if launcher.poll() is not None or time.time() > deadline:
        out, err = launcher.communicate(timeout=60)
        raise AssertionError(f"{out}\n{err}")
      time.sleep(0.5)

  def trainers(process_id=""):
    return subprocess.run(["pgrep", "-f", f"{workdir} .*--process_id={process_id}"],
                          capture_output=True, text=True).stdout.split()

  launcher = None
  try:
    launcher = launch()
    wait_for_step_after(launcher, 0)
    os.kill(launcher.pid, signal.SIGTERM)  # The script alone, not its group.
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 128 + signal.SIGTERM, out + err
    assert "SIGTERM: passing it to the 2 processes" in err, err
    stopped = re.search(r"Stopped by signal 15 at step (\d+); checkpoint saved", out)
    assert stopped, out + err
    assert "process 1 stopped by signal 15 (143)" in err, err  # Saved with 0.
    assert not trainers(), "a trainer outlived the launcher"
    assert checkpoint.all_steps(str(workdir))[-1] == int(stopped[1])

    launcher = launch()
    wait_for_step_after(launcher, int(stopped[1]))
    pid = trainers(1)
    assert len(pid) == 1, pid
    os.kill(int(pid[0]), signal.SIGKILL)
    killed = time.time()
    out, err = launcher.communicate(timeout=120)
    stopped_in = time.time() - killed
  finally:
    if launcher is not None and launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
    for pid in trainers():  # In sessions of their own.
      os.kill(int(pid), signal.SIGKILL)
  print(f"the survivor stopped {stopped_in:.1f} s after the SIGKILL")
  assert f"Resumed from step {stopped[1]}" in out, out
  assert launcher.returncode != 0
  assert stopped_in < 10 + 30, stopped_in  # The heartbeat timeout, plus reporting.
  assert "another task died" in err, err  # JAX's own message, from process 0.
  assert "process 0 aborted (134): JAX stopped it because another process died" \
      in err, err
  assert "process 1 killed (137" in err and "Run the same command again" in err, err
