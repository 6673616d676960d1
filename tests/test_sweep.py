"""Sweeps (tandem/launch/sweep.py) and their summary (tandem/launch/summary.py):
a 2x2 runlocal Barlow Twins sweep runs, is summarised, and is skipped when run
again; a failing run is a failed row; the SLURM launcher's array command."""
import json
import os
import subprocess
import sys
import re
import shutil
import textwrap
import time

import numpy as np
import pytest

from tandem import config_arg
from tandem import hyper
from tandem.launch import summary
from tandem.launch import sweep

from conftest import ROOT, load_config

CONFIG = "configs/ssl/barlow_twins.py:runlocal"


def _sweep_file(tmp_path, body: str, name="sweep.py") -> str:
  path = tmp_path / name
  path.write_text("from tandem.hyper import product, zipped, concat\n\n"
                  "def get_sweep():\n" + textwrap.indent(body, "  ") + "\n")
  return str(path)


def _run_sweep(data_dir, sweep_path, root, *extra, env=None):
  return subprocess.run(
      [sys.executable, "-m", "tandem.launch.sweep", "--config", CONFIG,
       f"--config.data_dir={data_dir}", "--sweep", sweep_path, "--workdir", str(root),
       *extra], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


# --- Helpers ----------------------------------------------------------------------

def test_product_zipped_concat():
  grid = hyper.product(**{"a.b": [1, 2], "c": ["x", "y", "z"]})
  assert grid == [{"a.b": 1, "c": "x"}, {"a.b": 1, "c": "y"}, {"a.b": 1, "c": "z"},
                  {"a.b": 2, "c": "x"}, {"a.b": 2, "c": "y"}, {"a.b": 2, "c": "z"}]
  assert hyper.zipped(**{"a.b": [1, 2], "c": [3, 4]}) == [{"a.b": 1, "c": 3},
                                                          {"a.b": 2, "c": 4}]
  assert hyper.concat(hyper.zipped(a=[1]), hyper.product(b=[2, 3])) == [
      {"a": 1}, {"b": 2}, {"b": 3}]
  with pytest.raises(ValueError, match="equal length"):
    hyper.zipped(a=[1, 2], b=[3])
  with pytest.raises(ValueError, match="non-empty list"):
    hyper.product(a=[])
  with pytest.raises(ValueError, match="non-empty list"):
    hyper.product(a="abc")


def test_run_names_are_stable_safe_and_unique(tmp_path):
  assert sweep.run_name({"optimizer.lr_per_256": 0.1, "barlow_twins.lambd": 0.005}) \
      == "barlow_twins.lambd=0.005,optimizer.lr_per_256=0.1"
  assert sweep.run_name({"a": 1e-05, "b": "x/y z", "c": (64, 64)}) == \
      "a=1e-05,b=x_y_z,c=_64__64_"
  assert sweep.run_name({}) == "base"
  long = sweep.run_name({"a": "v" * 500})
  assert len(long) <= sweep.MAX_NAME_LEN and long != sweep.run_name({"a": "v" * 499})
  with pytest.raises(ValueError, match="both named"):
    sweep.make_runs(CONFIG, [{"a": 1}, {"a": 1}], str(tmp_path))


def test_bad_sweep_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sweep.load_sweep(str(tmp_path / "missing.py"))
  (tmp_path / "none.py").write_text("X = 1\n")
  with pytest.raises(AttributeError, match="no get_sweep"):
    sweep.load_sweep(str(tmp_path / "none.py"))
  with pytest.raises(ValueError, match="empty sweep"):
    sweep.load_sweep(_sweep_file(tmp_path, "return []", "empty.py"))
  with pytest.raises(ValueError, match="dotted config path"):
    sweep.load_sweep(_sweep_file(tmp_path, "return [{'a b': 1}]", "key.py"))
  proc = subprocess.run(
      [sys.executable, "-m", "tandem.launch.sweep", "--config", CONFIG, "--sweep",
       str(tmp_path / "missing.py"), "--workdir", str(tmp_path / "root")],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "missing.py does not exist" in proc.stderr


def test_example_sweep_overrides_real_config_keys():
  runs = sweep.load_sweep(os.path.join(ROOT, "configs/sweeps/bt_lambda_lr.py"))
  assert len(runs) == 4 and len({sweep.run_name(r) for r in runs}) == 4
  config = load_config(os.path.join(ROOT, "configs/ssl/barlow_twins.py"),
                       "dataset=fashion_mnist")
  assert not config_arg.unknown_override_keys(
      config, [f"--config.{k}=" for r in runs for k in r])


# --- Local sweep, summary, skipping ------------------------------------------------

@pytest.fixture(scope="module")
def finished_sweep(tiny_data_dir, tmp_path_factory):
  """(root, sweep file, first output) of a 2x2 runlocal sweep run 2 at a time:
  lambda x seed (a seed is an input of the compiled step, not a constant in it,
  so the 4 runs compile 2 steps)."""
  tmp = tmp_path_factory.mktemp("sweep")
  path = _sweep_file(tmp, 'return product(**{"barlow_twins.lambd": [0.005, 0.01],\n'
                          '                  "seed": [0, 1]})')
  root = tmp / "root"
  proc = _run_sweep(tiny_data_dir, path, root, "--parallel", "2")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return root, path, proc.stdout


def test_local_sweep_writes_runs_and_summary(finished_sweep):
  root, _, _ = finished_sweep
  record = json.loads((root / "sweep.json").read_text())
  names = sorted(r["name"] for r in record["runs"])
  assert names == sorted(f"barlow_twins.lambd={l},seed={seed}"
                         for l in (0.005, 0.01) for seed in (0, 1))
  for run in record["runs"]:
    assert os.path.isfile(os.path.join(run["workdir"], "config.json"))
    assert "--config.barlow_twins.lambd=" in run["command"]
    resolved = json.loads(open(os.path.join(run["workdir"], "config.json")).read())
    assert resolved["barlow_twins"]["lambd"] == run["overrides"]["barlow_twins.lambd"]

  frame = summary.summarise(str(root))
  assert len(frame) == 4
  assert {"barlow_twins.lambd", "seed"} <= set(frame.columns)
  assert (frame["status"] == "finished").all()
  probe = frame["linear_probe/pre_logits/test_top1"]
  assert probe.between(0, 1).all() and list(probe) == sorted(probe, reverse=True)
  assert (frame["steps"] == 2).all() and (frame["wall_s"] > 0).all()
  assert frame["loss"].notna().all()

  paths = summary.write_summary(str(root), frame, with_plot=True)
  assert (root / "summary.md").read_text().count("| finished |") == 4
  assert len(json.loads((root / "summary.json").read_text())) == 4
  assert (root / "summary.csv").read_text().count("\n") == 5
  assert paths[-1].endswith("summary_linear_probe_pre_logits_test_top1.png")
  assert os.path.getsize(paths[-1]) > 0


def test_rerunning_the_sweep_skips_finished_runs(finished_sweep, tiny_data_dir):
  root, path, _ = finished_sweep
  logs = sorted(root.glob("*/train.log"))
  assert len(logs) == 4
  before = {p: p.read_bytes() for p in logs}
  proc = _run_sweep(tiny_data_dir, path, root, "--parallel", "2")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "4 skipped (finished)" in proc.stdout
  assert proc.stdout.count("skipped barlow_twins") == 4
  assert {p: p.read_bytes() for p in logs} == before


def test_failed_runs_are_failed_rows_and_the_sweep_goes_on(tiny_data_dir, tmp_path):
  path = _sweep_file(tmp_path, 'return zipped(**{"optimizer.no_such_key": [1, 2]})')
  root = tmp_path / "root"
  proc = _run_sweep(tiny_data_dir, path, root)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert "will fail" in proc.stdout  # Warned before launching.
  for value in (1, 2):  # Both ran: the first failure did not stop the sweep.
    status = json.loads((root / f"optimizer.no_such_key={value}" /
                         "status.json").read_text())
    assert status["status"] == "failed" and status["returncode"] != 0
    assert "optimizer.no_such_key" in status["reason"] and status["log_tail"]
  frame = summary.summarise(str(root))
  assert len(frame) == 2 and (frame["status"] == "failed").all()
  assert frame["reason"].str.contains("unknown config key").all()
  summary.write_summary(str(root), frame)
  assert (root / "summary.md").read_text().count("| failed |") == 2


def test_runs_on_a_bucket_are_read_from_their_copies_in_root(finished_sweep,
                                                             tmp_path):
  """TPU sweeps' workdirs are on a bucket (gs://): finished means the launcher
  recorded it, and the summary reads the files `gcloud storage rsync` copied to
  ROOT/NAME."""
  local_root, path, _ = finished_sweep
  root = tmp_path / "root"
  runs = sweep.make_runs(CONFIG, sweep.load_sweep(path), str(root),
                         bucket="gs://bucket/sweep")
  assert runs[0].workdir == f"gs://bucket/sweep/{runs[0].name}"
  assert runs[0].train_args[1] == CONFIG  # Relative: the workers' checkout.
  with pytest.raises(ValueError, match="outside the checkout"):
    sweep.make_runs("/elsewhere/c.py", [{}], str(root), bucket="gs://b")
  sweep.write_sweep_json(str(root), runs)
  finished, failed = runs[0], runs[1]
  shutil.copytree(local_root / finished.name, finished.logdir)  # The "rsync".
  os.makedirs(failed.logdir)
  from tandem.launch import run_dir  # pylint: disable=g-import-not-at-top
  run_dir.write_status(failed.logdir, {"status": "failed", "reason": "Error: x"})
  assert finished.is_finished() and not failed.is_finished()
  rows = summary.summarise(str(root)).set_index("run")
  assert rows.loc[finished.name, "status"] == "finished"
  assert rows.loc[finished.name, "linear_probe/pre_logits/test_top1"] >= 0
  assert tuple(rows.loc[failed.name, ["status", "reason"]]) == ("failed", "Error: x")
  assert tuple(rows.loc[runs[2].name, ["status", "reason"]]) == (
      "incomplete", "not started")


# --- SLURM --------------------------------------------------------------------------

def test_slurm_dry_run_prints_array_command_and_writes_task_args(tmp_path):
  path = _sweep_file(tmp_path, 'return product(**{"barlow_twins.lambd": [0.005, 0.01],\n'
                               '                  "optimizer.lr_per_256": [1e-3, 2e-3]})')
  root = tmp_path / "root"
  proc = _run_sweep("/data", path, root, "--launcher", "slurm", "--dry_run")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  [command] = [l for l in proc.stdout.splitlines() if l.startswith("sbatch ")]
  assert "--array=0-3 " in command
  assert command.endswith(os.path.join("launch", "slurm.sbatch"))
  assert f"TANDEM_SWEEP_ARGS={root / 'sweep_args.txt'}" in command
  lines = (root / "sweep_args.txt").read_text().splitlines()
  assert len(lines) == 4
  for line, run in zip(lines, json.loads((root / "sweep.json").read_text())["runs"]):
    assert line.startswith("--config ") and "--config.data_dir=/data" in line
    assert line.endswith(f"--workdir {run['workdir']}")
  assert not any(p.is_dir() for p in root.iterdir())  # Nothing was run.


def test_the_same_sweep_as_a_slurm_array_gives_the_same_rows(
    finished_sweep, slurm, tiny_data_dir, tmp_path):
  """On the real test cluster (tests/slurm_cluster.py): one array job of 4 tasks,
  2 at a time, each a 1-task `launch/slurm.sbatch` run."""
  local_root, path, _ = finished_sweep
  root = tmp_path / "root"
  proc = _run_sweep(tiny_data_dir, path, root, "--launcher", "slurm", "--parallel",
                    "2", env=slurm.env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  job = re.search(r"Submitted batch job (\d+)", proc.stdout + proc.stderr).group(1)
  deadline = time.time() + 240
  while slurm.job_state(job):
    assert time.time() < deadline, slurm.logs()
    time.sleep(0.5)
  on_slurm, local = summary.summarise(str(root)), summary.summarise(str(local_root))
  assert len(on_slurm) == 4, on_slurm
  assert (on_slurm["status"] == "finished").all(), [
      p.read_text()[-2000:] for p in root.glob("slurm-*.log")]
  keys = ["barlow_twins.lambd", "seed"]
  on_slurm, local = (f.sort_values(keys).reset_index(drop=True)
                     for f in (on_slurm, local))
  assert on_slurm[keys].equals(local[keys])
  for column in ("loss", "linear_probe/pre_logits/test_top1", "steps"):
    np.testing.assert_allclose(on_slurm[column], local[column], rtol=1e-5)


def test_launch_modules_import_neither_jax_nor_the_training_program():
  """tandem.launch starts train as a subprocess and reads its workdirs."""
  proc = subprocess.run(
      [sys.executable, "-c",
       "import sys, tandem.launch.sweep, tandem.launch.summary; "
       "print(sorted(m for m in ('jax', 'tandem.ssl.train', 'tandem.ssl') "
       "if m in sys.modules))"],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "[]"
