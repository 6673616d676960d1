"""launch/tpu_pod.sh through a fake `gcloud` (tests/fake_gcloud/gcloud) that
records each call and runs `ssh --worker=all` commands as local processes: the
exact gcloud command lines, and a sweep of 2 runs on 2 VMs whose 2 workers
really train together."""
import json
import os
import shlex
import subprocess
import sys


from tandem.ssl import train
from conftest import NO_EVALS, ROOT, assert_same_params, bt_config

FAKE = os.path.join(ROOT, "tests", "fake_gcloud")


def _fake_env(tmp_path, install=None) -> dict:
  """The environment that puts the fake gcloud first, its log and VMs in tmp_path."""
  env = {**os.environ, "PATH": FAKE + os.pathsep + os.environ["PATH"],
         "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.jsonl"),
         "FAKE_TPU_ROOT": str(tmp_path / "tpus")}
  if install:
    env["TANDEM_TPU_INSTALL"] = install
  os.makedirs(tmp_path / "tpus", exist_ok=True)
  return env


def _launch(tmp_path, *args, name="pod"):
  env = _fake_env(tmp_path)
  return subprocess.run(["bash", "launch/tpu_pod.sh", "--name", name, "--zone",
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


def test_a_sweep_on_two_tpu_vms_whose_workers_train_together(tiny_data_dir,
                                                             tmp_path):
  """`tandem.launch.sweep --launcher tpu --parallel 2`: one tpu_pod.sh per run on
  2 VMs of 2 workers each, which train together like one process, from the
  checkout copied to their homes (the config file relative to it); a local
  folder stands in for the bucket. Run again, the sweep skips both runs, and a
  new launch on a VM reuses it."""
  sweep_file = tmp_path / "lambd.py"
  sweep_file.write_text("from tandem.hyper import zipped\n\ndef get_sweep():\n"
                        "  return zipped(**{'barlow_twins.lambd': [0.005, 0.01]})\n")
  # The workers' venv sees this machine's packages; it needs no pip of its own
  # (ensurepip alone takes ~7 s of CPU per worker).
  env = _fake_env(tmp_path, install="python3 -m venv --system-site-packages "
                  "--without-pip ~/tandem_venv")
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
    log = (root / name / "train.log").read_text()
    assert "over 4 devices in 2 process(es)" in log
    # The final evaluation says what it is doing.
    assert "Final evaluation at step 2:" in log and "evaluating linear_probe (" in log
  # The workers ran the copied code from their own home folders.
  assert (tmp_path / "tpus" / "sw-0" / "worker_1" / "tandem" / "tandem" / "ssl" /
          "train.py").exists()
  reference = tmp_path / "one_process"
  train.train(bt_config(tiny_data_dir, total_steps=2,
                        **{"barlow_twins.lambd": 0.005}, **NO_EVALS), str(reference))
  assert_same_params(bucket / names[0], reference)

  again = sweep("--parallel", "2")
  assert again.returncode == 0 and "2 skipped (finished)" in again.stdout
  # describe, create, scp, ssh (set-up), ssh (training) per VM; none again.
  assert len(_calls(tmp_path)) == len(created) * 5
  reuse = _launch(tmp_path, "--dry_run", "--", "--workdir", "w", name="sw-0")
  assert reuse.returncode == 0 and "Reusing TPU VM sw-0" in reuse.stdout
  assert "create" not in reuse.stdout
