"""Pretraining under a real SLURM (tests/slurm_cluster.py): 2 tasks started by
`srun` and by `sbatch launch/slurm.sbatch` (two jobs at once) train together through
`jax.distributed.initialize()` reading SLURM's environment, like one process does;
a job stopped by SIGTERM checkpoints, requeues itself and resumes to the same
parameters as an uninterrupted run, then runs the transfer suite on its checkpoint."""
import json
import subprocess
import threading
import time


import tandem
from tandem.ssl import train
from conftest import (BT_NO_EVALS, NO_EVALS, ROOT, assert_same_params,
                      bt_config, prepare_fake_fashion_mnist, xla_flags)

STEPS = 24  # Long enough (a few seconds) for the SIGTERM to land mid-run.
# Each task: 2 fake CPU devices, so 2 tasks give a 4-device mesh over 2 processes.
TASK_ENV = {"XLA_FLAGS": xla_flags(2),
            "JAX_PLATFORMS": "cpu"}


def _train_args(data_dir, workdir):
  # Checkpoints every 8 steps: a stopped run saves on the signal anyway.
  return ["--config", BT_NO_EVALS,
          f"--config.data_dir={data_dir}", f"--config.total_steps={STEPS}",
          "--config.log_every=1", "--config.checkpoint.every=8",
          "--workdir", str(workdir)]


def _stuck_report(cluster, job, workdir) -> str:
  """What a job that ran out of time was doing: every task's Python stacks
  (SIGUSR1, see tandem/ssl/train.py), its logs, its state and the daemons' logs."""
  cluster.run("scancel", "--signal=USR1", job, check=False)
  time.sleep(3)
  logs = [f"--- {path.name}\n{path.read_text()[-6000:]}"
          for path in sorted((workdir / "slurm").glob("*.log"))]
  return "\n".join([f"job {job}: {cluster.job_state(job) or 'gone'}",
                    (workdir.parent / "sbatch.out").read_text(), *logs,
                    cluster.logs()])


def _preempt_and_wait(cluster, job, workdir, done, deadline, errors):
  """SIGTERM to the job's tasks once they step (what preemption and the time
  limit's --signal send); then wait until the requeued job has written `done` and
  left the queue. Runs in a thread; what fails goes to `errors`."""
  try:
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and metrics.stat().st_size):  # Stepping by now.
      assert time.time() < deadline and cluster.job_state(job), _stuck_report(
          cluster, job, workdir)
      time.sleep(0.2)
    cluster.run("scancel", "--signal=TERM", job)
    # Until the resumed run has written its results and the job has left the
    # queue (squeue prints nothing between some of a requeue's states too).
    pending_since = None
    while not done.exists() or cluster.job_state(job):
      assert time.time() < deadline, _stuck_report(cluster, job, workdir)
      if cluster.job_state(job) != "PENDING":
        pending_since = None
      else:
        # A requeued job waits ~2 min (its begin time); let it start sooner, but
        # only once the old run's step daemons are gone: a job started while
        # they finish is killed ("Job credential revoked") and never runs again.
        pending_since = pending_since or time.time()
        old_steps = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job}\."],
                                   capture_output=True).returncode == 0
        if not old_steps and time.time() - pending_since > 2:
          cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now",
                      check=False)
      time.sleep(0.5)
  except BaseException as e:  # pylint: disable=broad-except
    errors.append(e)


def test_srun_and_a_preempted_sbatch_job_train_like_one_process(
    slurm, tiny_data_dir, tmp_path):
  """The srun job, the one-process reference (here) and, once srun's tasks step
  (their compiled step cached), the sbatch job run at the same time."""
  cluster = slurm
  env = {**cluster.env, **TASK_ENV}
  deadline = time.time() + 420  # A bound for a loaded machine, not the usual time.
  # srun: 2 tasks, the coordinator and process ids from SLURM's environment.
  with_srun = tmp_path / "srun"
  srun = subprocess.Popen(
      ["srun", "-n", "2", "-K", "--time=5", "python", "-m", "tandem.ssl.train",
       *_train_args(tiny_data_dir, with_srun), "--distributed"],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    reference = tmp_path / "one_process"
    train.train(bt_config(tiny_data_dir, total_steps=STEPS, log_every=1,
                          **{"checkpoint.every": 8}, **NO_EVALS), str(reference))
    # The transfer suite's data: k-NN on a Fashion-MNIST with VTAB's 800 + 200
    # training examples.
    (tmp_path / "idx_1000").mkdir()
    transfer_data = prepare_fake_fashion_mnist(
        tmp_path / "idx_1000", tmp_path / "tfds", num_train=1000, num_test=100)
    while not (with_srun / "metrics.jsonl").exists() and srun.poll() is None:
      assert time.time() < deadline, cluster.logs()
      time.sleep(0.2)

    # sbatch, then SIGTERM to the tasks mid-run: checkpoint, requeue, resume; then
    # the transfer suite on the final checkpoint.
    with_sbatch = tmp_path / "sbatch"
    job = cluster.run(
        "sbatch", "--parsable", "-n", "2", "--time=10",
        f"--output={tmp_path}/sbatch.out", "launch/slurm.sbatch",
        *_train_args(tiny_data_dir, with_sbatch),
        "--transfer=configs/transfer/vtab.py:fashion_mnist,evaluators=knn,runlocal",
        f"--transfer.data_dir={transfer_data}", env=env, cwd=ROOT,
        timeout=60).stdout.strip()
    transfer = (with_sbatch / "transfer" / f"fashion_mnist_step{STEPS}" /
                "results.json")
    errors = []
    preemption = threading.Thread(target=_preempt_and_wait, args=(
        cluster, job, with_sbatch, transfer, deadline, errors), daemon=True)
    preemption.start()

    out, err = srun.communicate(timeout=max(1, deadline - time.time()))
    assert srun.returncode == 0, out + err + cluster.logs()
    assert "over 4 devices in 2 process(es)" in out, out
    assert_same_params(with_srun, reference)
    preemption.join(timeout=max(1, deadline - time.time()) + 30)  # + its report.
    assert not preemption.is_alive(), "the sbatch job did not finish in time"
    if errors:
      raise errors[0]
  finally:
    if srun.poll() is None:
      srun.kill()
      srun.communicate()
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
