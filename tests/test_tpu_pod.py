"""launch/tpu_pod.sh through a fake `gcloud` (tests/fake_gcloud/gcloud) that
records each call and runs `ssh --worker=all` commands as local processes: the
exact gcloud command lines, and 2 workers that really train together."""
import json
import os
import shlex
import subprocess
import sys


from tandem.ssl import train
from conftest import ROOT, assert_same_params, bt_config

FAKE = os.path.join(ROOT, "tests", "fake_gcloud")


def _launch(tmp_path, *args, install=None):
  env = {**os.environ, "PATH": FAKE + os.pathsep + os.environ["PATH"],
         "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.jsonl"),
         "FAKE_TPU_ROOT": str(tmp_path / "tpus")}
  if install:
    env["TANDEM_TPU_INSTALL"] = install
  os.makedirs(tmp_path / "tpus", exist_ok=True)
  return subprocess.run(["bash", "launch/tpu_pod.sh", "--name", "pod", "--zone",
                         "us-central2-b", "--accelerator", "v4-16", *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=400)


def _calls(tmp_path):
  path = tmp_path / "gcloud.jsonl"
  return [json.loads(l) for l in open(path)] if path.exists() else []


def test_dry_run_prints_every_command_and_runs_none(tmp_path):
  proc = _launch(tmp_path, "--data_dir", "gs://bucket/tfds", "--prepare",
                 "fashion_mnist", "--dry_run", "--", "--config",
                 "configs/ssl/mae_imagenet.py:model=vit_b", "--workdir",
                 "gs://bucket/runs/mae")
  assert proc.returncode == 0, proc.stderr
  assert [c[3] for c in _calls(tmp_path)] == ["describe"]  # Read-only.
  lines = [shlex.split(l) for l in proc.stdout.splitlines() if l.startswith("gcloud")]
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  assert lines[0] == tpu + ["create", "pod", "--zone", "us-central2-b",
                            "--accelerator-type", "v4-16",
                            "--version", "tpu-ubuntu2204-base"]
  assert lines[1][:5] == tpu + ["scp"] and lines[1][5].endswith("/tandem.tar.gz")
  assert lines[1][6:] == ["pod:tandem.tar.gz", "--zone", "us-central2-b",
                          "--worker=all"]
  setup, prepare, run = lines[2:]
  assert setup[4:9] == ["ssh", "pod", "--zone", "us-central2-b", "--worker=all"]
  assert "pip install -q -e ~/tandem 'jax[tpu]'" in setup[-1]
  assert prepare[8] == "--worker=0" and prepare[-1].endswith(
      "-m tandem.data.prepare --dataset fashion_mnist --data_dir gs://bucket/tfds")
  assert run[8] == "--worker=all" and run[-1] == (
      "cd ~/tandem && ~/tandem_venv/bin/python -m tandem.ssl.train --config "
      "configs/ssl/mae_imagenet.py:model=vit_b --workdir gs://bucket/runs/mae "
      "--config.data_dir=gs://bucket/tfds --distributed")
  bad = _launch(tmp_path, "--prepare", "x", "--", "--workdir", "w")
  assert bad.returncode == 2 and "--prepare needs --data_dir" in bad.stderr


def test_two_workers_train_together_like_one_process(tiny_data_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = _launch(tmp_path, "--data_dir", tiny_data_dir, "--",
                 "--config", "configs/ssl/barlow_twins.py:runlocal",
                 "--config.total_steps=3", "--workdir", str(workdir),
                 install="python3 -m venv --system-site-packages ~/tandem_venv")
  worker_1 = tmp_path / "tpus" / "pod" / "worker_1" / "ssh.log"
  assert proc.returncode == 0, proc.stdout + proc.stderr + (
      worker_1.read_text() if worker_1.exists() else "")
  verbs = [c[3] for c in _calls(tmp_path)]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh"]
  assert "over 4 devices in 2 process(es)" in proc.stdout, proc.stdout
  # The workers ran the copied code from their own home folders.
  assert (tmp_path / "tpus" / "pod" / "worker_1" / "tandem" / "tandem" /
          "ssl" / "train.py").exists()
  reference = tmp_path / "one_process"
  train.train(bt_config(tiny_data_dir, total_steps=3), str(reference))
  assert_same_params(workdir, reference)

  # A second launch reuses the VM: describe finds it, nothing is created.
  again = _launch(tmp_path, "--dry_run", "--", "--workdir", str(workdir))
  assert again.returncode == 0 and "Reusing TPU VM pod" in again.stdout
  assert "create" not in again.stdout
  assert [c[3] for c in _calls(tmp_path)][len(verbs):] == ["describe"]


def test_a_sweep_on_two_tpu_vms_trains_each_run_and_skips_them_when_rerun(
    tiny_data_dir, tmp_path):
  """`tandem.launch.sweep --launcher tpu --parallel 2`: one tpu_pod.sh per run on
  2 VMs (1 worker each here), the config file relative to the copied checkout; a
  local folder stands in for the bucket."""
  sweep_file = tmp_path / "lambd.py"
  sweep_file.write_text("from tandem.hyper import zipped\n\ndef get_sweep():\n"
                        "  return zipped(**{'barlow_twins.lambd': [0.005, 0.01]})\n")
  env = {**os.environ, "PATH": FAKE + os.pathsep + os.environ["PATH"],
         "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.jsonl"),
         "FAKE_TPU_ROOT": str(tmp_path / "tpus"), "FAKE_TPU_WORKERS": "1",
         "TANDEM_TPU_INSTALL": "python3 -m venv --system-site-packages ~/tandem_venv"}
  os.makedirs(tmp_path / "tpus")
  root, bucket = tmp_path / "root", tmp_path / "bucket"
  sweep = lambda *extra: subprocess.run(
      [sys.executable, "-m", "tandem.launch.sweep", "--config",
       "configs/ssl/barlow_twins.py:runlocal", "--config.total_steps=2",
       "--sweep", str(sweep_file), "--workdir", str(root), "--launcher", "tpu",
       "--tpu_args=--name sw --zone z --accelerator v4-8 --data_dir " +
       tiny_data_dir, "--bucket", str(bucket), *extra],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)

  dry = sweep("--parallel", "2", "--dry_run")
  assert dry.returncode == 0, dry.stdout + dry.stderr
  lines = [shlex.split(l) for l in dry.stdout.splitlines() if l.startswith("bash ")]
  assert [l[l.index("--name") + 1] for l in lines] == ["sw-0", "sw-1"]
  assert lines[0][lines[0].index("--") + 1:] == [
      "--config", "configs/ssl/barlow_twins.py:runlocal", "--config.total_steps=2",
      "--config.barlow_twins.lambd=0.005", "--workdir",
      str(bucket / "barlow_twins.lambd=0.005")]
  assert not _calls(tmp_path)

  proc = sweep("--parallel", "2")
  names = ["barlow_twins.lambd=0.005", "barlow_twins.lambd=0.01"]
  assert proc.returncode == 0, proc.stdout + proc.stderr + "".join(
      (root / n / "train.log").read_text()[-3000:] for n in names
      if (root / n / "train.log").exists())
  created = sorted(c[4] for c in _calls(tmp_path) if c[3] == "create")
  assert created == ["sw-0", "sw-1"]
  for name in names:  # Trained on a VM, into the bucket, logged here.
    assert json.loads((bucket / name / "results.json").read_text())["step"] == 2
    assert json.loads((root / name / "status.json").read_text())["status"] == \
        "finished"
    assert "over 2 devices in 1 process(es)" in (root / name / "train.log").read_text()
  again = sweep("--parallel", "2")
  assert again.returncode == 0 and "2 skipped (finished)" in again.stdout
  # describe, create, scp, ssh (set-up), ssh (training) per VM; none again.
  assert len(_calls(tmp_path)) == len(created) * 5
