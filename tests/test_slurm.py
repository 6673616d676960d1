"""Pretraining under a real SLURM (tests/slurm_cluster.py): 2 tasks started by
`srun` and by `sbatch launch/slurm.sbatch` train together through
`jax.distributed.initialize()` reading SLURM's environment, like one process does;
a job stopped by SIGTERM checkpoints, requeues itself and resumes to the same
parameters as an uninterrupted run, then runs the transfer suite on its checkpoint."""
import json
import subprocess
import time


import tandem
from tandem.ssl import train
from conftest import (NO_EVALS, ROOT, assert_same_params, bt_config,
                      prepare_fake_fashion_mnist, xla_flags)

STEPS = 24  # Long enough (a few seconds) for the SIGTERM to land mid-run.
# Each task: 2 fake CPU devices, so 2 tasks give a 4-device mesh over 2 processes.
TASK_ENV = {"XLA_FLAGS": xla_flags(2),
            "JAX_PLATFORMS": "cpu"}


def _train_args(data_dir, workdir, checkpoint_every=1):
  return ["--config", "configs/ssl/barlow_twins.py:runlocal",
          f"--config.data_dir={data_dir}", f"--config.total_steps={STEPS}",
          "--config.log_every=1", f"--config.checkpoint.every={checkpoint_every}",
          "--workdir", str(workdir)]


def test_srun_and_a_preempted_sbatch_job_train_like_one_process(
    slurm, tiny_data_dir, tmp_path):
  cluster = slurm
  env = {**cluster.env, **TASK_ENV}
  reference = tmp_path / "one_process"
  # Checkpoints only every 8 steps where no run is stopped (saving takes time).
  train.train(bt_config(tiny_data_dir, total_steps=STEPS, log_every=1,
                        **{"checkpoint.every": 8}, **NO_EVALS), str(reference))

  # srun: 2 tasks, the coordinator and process ids from SLURM's environment.
  with_srun = tmp_path / "srun"
  proc = cluster.run(
      "srun", "-n", "2", "-K", "--time=5", "python", "-m", "tandem.ssl.train",
      *_train_args(tiny_data_dir, with_srun, checkpoint_every=8), "--distributed",
      env=env, cwd=ROOT, check=False, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr + cluster.logs()
  assert "over 4 devices in 2 process(es)" in proc.stdout, proc.stdout
  assert_same_params(with_srun, reference)

  # sbatch, then SIGTERM to the tasks mid-run (what preemption and the time
  # limit's --signal send): checkpoint, requeue, resume; then the transfer suite
  # (k-NN on a Fashion-MNIST with VTAB's 800 + 200 training examples).
  (tmp_path / "idx_1000").mkdir()
  transfer_data = prepare_fake_fashion_mnist(tmp_path / "idx_1000", tmp_path / "tfds",
                                             num_train=1000, num_test=100)
  with_sbatch = tmp_path / "sbatch"
  job = cluster.run(
      "sbatch", "--parsable", "-n", "2", "--time=10",
      f"--output={tmp_path}/sbatch.out", "launch/slurm.sbatch",
      *_train_args(tiny_data_dir, with_sbatch),
      "--transfer=configs/transfer/vtab.py:fashion_mnist,evaluators=knn,runlocal",
      f"--transfer.data_dir={transfer_data}", env=env, cwd=ROOT,
      timeout=60).stdout.strip()
  deadline = time.time() + 420  # A bound for a loaded machine, not the usual time.
  metrics = with_sbatch / "metrics.jsonl"
  while not (metrics.exists() and metrics.stat().st_size):  # Stepping by now.
    assert time.time() < deadline and cluster.job_state(job), (
        open(f"{tmp_path}/sbatch.out").read() + cluster.logs())
    time.sleep(0.2)
  cluster.run("scancel", "--signal=TERM", job)
  # Until the resumed run has written its results and the job has left the queue
  # (squeue prints nothing between some of a requeue's states too).
  transfer = with_sbatch / "transfer" / f"fashion_mnist_step{STEPS}" / "results.json"
  pending_since = None
  while not transfer.exists() or cluster.job_state(job):
    assert time.time() < deadline, (open(f"{tmp_path}/sbatch.out").read() +
                                    cluster.logs())
    if cluster.job_state(job) != "PENDING":
      pending_since = None
    else:
      # A requeued job waits ~2 min (its begin time); let it start sooner, but
      # only once the old run's step daemons are gone: a job started while they
      # finish is killed ("Job credential revoked") and never runs again.
      pending_since = pending_since or time.time()
      old_steps = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\."],
                                 capture_output=True).returncode == 0
      if not old_steps and time.time() - pending_since > 2:
        cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now",
                    check=False)
    time.sleep(0.5)
  batch_log = open(f"{tmp_path}/sbatch.out").read()
  task_0 = open(with_sbatch / "slurm" / f"job_{job}.task_0.log").read()
  assert f"requeueing job {job}" in batch_log, batch_log
  assert "(restart 1)" in batch_log, batch_log
  assert "Stopped by signal 15" in task_0 and "Resumed from step" in task_0, task_0
  assert tandem.load(str(with_sbatch)).step == STEPS
  assert_same_params(with_sbatch, reference)
  assert "transfer suite" in batch_log, batch_log
  records = json.load(open(transfer))["records"]
  assert records and all(r["task"] == "fashion_mnist" and
                         r["evaluator"].startswith("knn_") and
                         0.0 <= r["value"] <= 1.0 for r in records), records
