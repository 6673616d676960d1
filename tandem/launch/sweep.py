r"""Hyper-parameter sweeps: one training run per config override dict.

    python -m tandem.launch.sweep \
        --config configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn \
        --sweep configs/sweeps/bt_lambda_lr.py --workdir ROOT \
        [--config.total_steps=900 ...] [--launcher local|slurm|tpu] \
        [--parallel N] [--dry_run]

A sweep file (configs/sweeps/NAME.py, as in big_vision / XManager) defines
`get_sweep()`, a list of override dicts keyed by dotted config paths, built with
`tandem.hyper`'s `product`, `zipped` and `concat`:

    def get_sweep():
      return product(**{"barlow_twins.lambd": [0.0025, 0.01],
                        "optimizer.lr_per_256": [5e-4, 2e-3]})

Each run is `python -m tandem.ssl.train --config FILE:ARG [--config.k=v of the
command line] --config.k=v ... --workdir ROOT/NAME`, NAME built from its overrides
(`barlow_twins.lambd=0.0025,optimizer.lr_per_256=0.0005`), so train writes the
run's own config.json, metrics and results. ROOT/sweep.json lists the runs (name,
overrides, workdir, command).

Launchers, looked up by name in LAUNCHERS:
  local  subprocesses on this machine, `--parallel` at a time (default 1), each
         one's output in ROOT/NAME/train.log and its outcome in ROOT/NAME/status.json
         (exit status, wall time, and for a failed run the last lines of its log).
  slurm  one job array over the runs to launch: ROOT/sweep_args.txt holds one
         shell-quoted line of train arguments per array task, and
         `sbatch --array=0-(N-1)[%parallel] --export=ALL,TANDEM_SWEEP_ARGS=FILE
         launch/slurm.sbatch` runs task i with line i+1 of it (lines are
         shlex-quoted; the script evaluates its line as arguments).
  tpu    `launch/tpu_pod.sh TPU_ARGS -- TRAIN_ARGS` per run, TPU_ARGS from
         `--tpu_args="--name N --zone Z --accelerator v4-32 [--data_dir gs://..]"`:
         the runs one after another on that TPU VM (created by the first), or with
         `--parallel K` on K VMs named N-0 ... N-(K-1), each taking the next run
         when its previous one ends.
         Workdirs go to `--bucket gs://B/PATH` (BUCKET/NAME: every worker must see
         the checkpoints), the launcher's log and status.json stay in ROOT/NAME
         (the same files as the local launcher's; the run's output is what
         `gcloud ... ssh` streams back from worker 0). To summarise, copy the
         runs' files next to them: `gcloud storage rsync -r BUCKET ROOT`.

Running the same sweep again skips the finished runs (results.json at
total_steps: tandem/launch/run_dir.py; for workdirs on a bucket, the launcher's
status.json) and relaunches the others, which train
resumes from their checkpoints. The exit status is 1 when a run failed (the
other runs still run). `--dry_run` prints the commands instead of running them.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time

from tandem import config_arg
from tandem.launch import run_dir

TRAIN_MODULE = "tandem.ssl.train"
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SBATCH_SCRIPT = os.path.join(CHECKOUT, "launch", "slurm.sbatch")
TPU_SCRIPT = os.path.join(CHECKOUT, "launch", "tpu_pod.sh")
ARGS_FILE = "sweep_args.txt"
SWEEP_FILE = "sweep.json"
MAX_NAME_LEN = 160
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")  # In a name's keys and values.


def load_sweep(path: str) -> list[dict]:
  """`get_sweep()` of the sweep file at `path`, checked: a non-empty list of
  dicts with dotted-path string keys."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Sweep file {path} does not exist.")
  module = config_arg.load_file_module(path, "_tandem_sweep_")
  if not hasattr(module, "get_sweep"):
    raise AttributeError(f"Sweep file {path} defines no get_sweep().")
  sweep = module.get_sweep()
  if not isinstance(sweep, (list, tuple)) or not sweep:
    raise ValueError(f"get_sweep() of {path} returned an empty sweep or not a "
                     f"list: {sweep!r}.")
  for overrides in sweep:
    if not isinstance(overrides, dict):
      raise ValueError(f"get_sweep() of {path}: each run must be a dict of "
                       f"overrides, got {overrides!r}.")
    for key in overrides:
      if not isinstance(key, str) or not re.fullmatch(r"\w+(\.\w+)*", key):
        raise ValueError(f"get_sweep() of {path}: {key!r} is not a dotted config "
                         "path such as 'optimizer.lr_per_256'.")
  return list(sweep)


# --- Runs -------------------------------------------------------------------------

def format_value(value) -> str:
  """An override's value as `--config.k=` reads it (floats round-trip)."""
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1
                                                               else "") + ")"
  return str(value)


def run_name(overrides: dict) -> str:
  """A stable, filesystem-safe name: `k=v` pairs sorted by key, joined by ",";
  other characters of keys and values become "_", and a long name is cut and ends
  in a hash."""
  if not overrides:
    return "base"
  safe = lambda text: _UNSAFE.sub("_", text)
  name = ",".join(f"{safe(k)}={safe(format_value(overrides[k]))}"
                  for k in sorted(overrides))
  if len(name) > MAX_NAME_LEN:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = name[:MAX_NAME_LEN - 11] + "-" + digest
  return name


def is_remote(path: str) -> bool:
  """A bucket (gs://...), which this machine does not read."""
  return "://" in path


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict
  workdir: str  # Train's --workdir: ROOT/NAME, or BUCKET/NAME.
  train_args: tuple[str, ...]  # The arguments after `python -m tandem.ssl.train`.
  logdir: str = ""  # ROOT/NAME: the launcher's log and status.json.

  @property
  def command(self) -> list[str]:
    return [sys.executable, "-m", TRAIN_MODULE, *self.train_args]

  def is_finished(self) -> bool:
    """results.json at total_steps in the workdir; for a workdir on a bucket, the
    launcher's record of a run that ended well."""
    if is_remote(self.workdir):
      return (run_dir.read_status(self.logdir) or {}).get("status") == "finished"
    return run_dir.is_finished(self.workdir)


def absolute_config_spec(spec: str) -> str:
  """`FILE:ARG` with FILE made absolute, so commands work from any directory."""
  path, arg = config_arg.split_config_spec(spec)
  path = os.path.abspath(path)
  return path if arg is None else f"{path}:{arg}"


def checkout_config_spec(spec: str) -> str:
  """`FILE:ARG` with FILE relative to this checkout, which tpu_pod.sh copies to
  every TPU worker and runs from; a file outside it is an error."""
  path, arg = config_arg.split_config_spec(absolute_config_spec(spec))
  relative = os.path.relpath(path, CHECKOUT)
  if relative.startswith(os.pardir + os.sep):
    raise ValueError(f"Config file {path} is outside the checkout {CHECKOUT}, "
                     "which is what tpu_pod.sh copies to the TPU workers: move it "
                     "under configs/.")
  return relative if arg is None else f"{relative}:{arg}"


def make_runs(config_spec: str, sweep: list[dict], root: str,
              base_overrides: list[str] = (), bucket: str | None = None
              ) -> list[Run]:
  """One Run per override dict; `base_overrides` (`--config.k=v` strings) go to
  every run, before its own. Workdirs are ROOT/NAME; with a bucket (TPU runs),
  BUCKET/NAME and the config file relative to the checkout. Two runs with one
  name are an error."""
  spec = (checkout_config_spec if bucket else absolute_config_spec)(config_spec)
  root = os.path.abspath(root)
  runs, seen = [], {}
  for overrides in sweep:
    name = run_name(overrides)
    if name in seen:
      raise ValueError(f"Two runs of the sweep are both named {name!r}: "
                       f"{seen[name]} and {overrides}. Remove the duplicate.")
    seen[name] = overrides
    logdir = os.path.join(root, name)
    workdir = f"{bucket.rstrip('/')}/{name}" if bucket else logdir
    args = ("--config", spec, *base_overrides,
            *(f"--config.{k}={format_value(v)}" for k, v in overrides.items()),
            "--workdir", workdir)
    runs.append(Run(name, dict(overrides), workdir, args, logdir))
  return runs


def write_sweep_json(root: str, runs: list[Run], **info) -> str:
  """ROOT/sweep.json: the sweep's settings and its runs."""
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, SWEEP_FILE)
  record = dict(info, runs=[dict(name=r.name, overrides=r.overrides,
                                 workdir=r.workdir, logdir=r.logdir,
                                 command=shlex.join(r.command)) for r in runs])
  with open(path, "w") as f:
    json.dump(record, f, indent=2)
  return path


# --- Launchers --------------------------------------------------------------------

_print_lock = threading.Lock()


def _say(message: str) -> None:
  with _print_lock:
    print(message, flush=True)


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def run_local(run: Run, command: list[str] | None = None) -> dict:
  """Runs `command` (default: the run's training command) to its end, output
  appended to LOGDIR/train.log; writes and returns its status.json record."""
  command = command or run.command
  os.makedirs(run.logdir, exist_ok=True)
  log_path = os.path.join(run.logdir, run_dir.LOG_FILE)
  previous = run_dir.read_status(run.logdir) or {}
  started, t0 = _now(), time.time()
  with open(log_path, "ab") as log:
    offset = log.tell()
    log.write(f"=== {started}: {shlex.join(command)}\n".encode())
    log.flush()
    returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, check=False).returncode
  wall = time.time() - t0
  status = dict(started=started, wall_s=round(wall, 1),
                total_wall_s=round(previous.get("total_wall_s", 0.0) + wall, 1),
                attempts=previous.get("attempts", 0) + 1, returncode=returncode,
                command=shlex.join(command))
  if returncode == 0 and (is_remote(run.workdir) or
                          run_dir.is_finished(run.workdir)):
    status["status"] = "finished"
  else:
    tail = run_dir.log_tail(log_path, offset=offset)
    if returncode > 128:  # Train saved a checkpoint on SIGINT / SIGTERM.
      status["status"] = "interrupted"
      status["reason"] = (f"stopped by signal {returncode - 128} at step "
                          f"{run_dir.steps_reached(run.logdir)}; run the sweep "
                          "again to resume")
    else:
      status["status"] = "failed"
      status["reason"] = (run_dir.failure_reason(tail) if returncode else
                          "exited 0 without results.json at total_steps")
    status["log_tail"] = tail
  run_dir.write_status(run.logdir, status)
  return status


def _run_all(runs: list[Run], workers: int, command) -> int:
  """Runs `runs` with `workers` threads, each taking the next run when its
  previous one ends and running `command(run, worker_index)` (run_local);
  reports each outcome; 1 if any failed, 130 if interrupted, else 0."""
  todo, done, stop = queue.Queue(), queue.Queue(), threading.Event()
  for run in runs:
    todo.put(run)

  def work(index):
    while not stop.is_set():
      try:
        run = todo.get_nowait()
      except queue.Empty:
        return
      try:
        done.put((run, run_local(run, command(run, index))))
      except BaseException as e:  # Reported by the main thread.
        done.put((run, e))
        return

  threads = [threading.Thread(target=work, args=(i,), daemon=True)
             for i in range(workers)]
  for thread in threads:
    thread.start()
  _say(f"Running {len(runs)} runs, {workers} at a time (output: "
       f"ROOT/NAME/{run_dir.LOG_FILE}).")
  failed = 0
  try:
    for i in range(1, len(runs) + 1):
      run, status = done.get()
      if isinstance(status, BaseException):
        raise status
      note = (f"{status['status']} in {status['wall_s']:.0f}s" +
              (f" (exit {status['returncode']}): {status['reason']}"
               if status["status"] != "finished" else ""))
      _say(f"[{i}/{len(runs)}] {run.name}: {note}")
      failed += status["status"] != "finished"
  except KeyboardInterrupt:  # The runs got the signal too and save checkpoints.
    stop.set()
    for thread in threads:
      thread.join()
    _say("Sweep interrupted; run the same command to resume.")
    return 130
  return 1 if failed else 0


def launch_local(runs: list[Run], root: str, *, parallel: int | None,
                 dry_run: bool, **unused) -> int:
  """Runs `runs` here, `parallel` at a time; 1 if any failed, else 0."""
  del root, unused
  if dry_run:
    for run in runs:
      print(shlex.join(run.command))
    return 0
  return _run_all(runs, min(max(1, parallel or 1), len(runs)),
                  lambda run, _: run.command)


def sbatch_command(root: str, num_tasks: int, parallel: int | None) -> list[str]:
  """`sbatch --array=0-(N-1)` over launch/slurm.sbatch, which reads task i's train
  arguments from line i+1 of $TANDEM_SWEEP_ARGS."""
  array = f"0-{num_tasks - 1}" + (f"%{parallel}" if parallel else "")
  return ["sbatch", f"--array={array}",
          f"--job-name=sweep-{os.path.basename(os.path.normpath(root))}",
          f"--output={os.path.join(root, 'slurm-%A_%a.log')}",
          f"--export=ALL,TANDEM_SWEEP_ARGS={os.path.join(root, ARGS_FILE)}",
          SBATCH_SCRIPT]


def launch_slurm(runs: list[Run], root: str, *, parallel: int | None,
                 dry_run: bool, **unused) -> int:
  """Submits `runs` as one SLURM job array (ROOT/sweep_args.txt: one line of
  train arguments per task); returns sbatch's exit status."""
  if "," in root:
    raise ValueError(f"--workdir {root!r}: sbatch's --export cannot carry a path "
                     "with a comma.")
  with open(os.path.join(root, ARGS_FILE), "w") as f:
    f.writelines(shlex.join(run.train_args) + "\n" for run in runs)
  command = sbatch_command(root, len(runs), parallel)
  print(shlex.join(command))
  if dry_run:
    return 0
  for run in runs:
    os.makedirs(run.workdir, exist_ok=True)
  try:
    return subprocess.run(command, check=False).returncode
  except FileNotFoundError:
    raise RuntimeError("sbatch was not found: --launcher slurm runs on a SLURM "
                       "login node.") from None


def tpu_vm_args(tpu_args: str, index: int | None) -> list[str]:
  """`--tpu_args` split; with an index (--parallel), the VM's name gets "-INDEX".
  --name, --zone and --accelerator are required; --dry_run and `--` are the
  sweep's."""
  args = shlex.split(tpu_args or "")
  for needed in ("--name", "--zone", "--accelerator"):
    if needed not in args or args.index(needed) + 1 >= len(args):
      raise ValueError(f"--launcher tpu needs --tpu_args with {needed} VALUE "
                       "(tpu_pod.sh's options), e.g. --tpu_args='--name sweep "
                       "--zone us-central2-b --accelerator v4-32'.")
  if "--" in args or "--dry_run" in args:
    raise ValueError("--tpu_args holds tpu_pod.sh's options only; the sweep adds "
                     "--dry_run and the training arguments.")
  if index is not None:
    i = args.index("--name") + 1
    args[i] = f"{args[i]}-{index}"
  return args


def launch_tpu(runs: list[Run], root: str, *, parallel: int | None,
               dry_run: bool, tpu_args: str = "", **unused) -> int:
  """`launch/tpu_pod.sh` per run, on `parallel` VMs (one when None), each taking
  the next run when its previous one ends; 1 if any failed, else 0."""
  del root, unused
  count = min(max(1, parallel or 1), len(runs))
  vms = [tpu_vm_args(tpu_args, None if count == 1 else i) for i in range(count)]
  command = lambda run, vm: ["bash", TPU_SCRIPT, *vms[vm], "--", *run.train_args]
  if dry_run:  # Each VM's first run; later ones go to whichever VM is free.
    for i, run in enumerate(runs):
      print(shlex.join(command(run, i % count)))
    return 0
  return _run_all(runs, count, command)


LAUNCHERS = {"local": launch_local, "slurm": launch_slurm, "tpu": launch_tpu}


def run_sweep(config_spec: str, sweep_path: str, root: str, *,
              base_overrides: list[str] = (), launcher: str = "local",
              parallel: int | None = None, dry_run: bool = False,
              bucket: str | None = None, tpu_args: str = "") -> int:
  """Plans the sweep, writes ROOT/sweep.json, skips finished runs and launches
  the others; returns the exit status."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"Unknown launcher {launcher!r}; known: {sorted(LAUNCHERS)}.")
  if is_remote(root):
    raise ValueError(f"--workdir {root}: the sweep's own files are written here; "
                     "give a local directory, and the bucket as --bucket.")
  if bucket and launcher != "tpu":
    raise ValueError("--bucket is for --launcher tpu (SLURM and local runs write "
                     "to ROOT, on a shared file system).")
  if launcher == "tpu":
    tpu_vm_args(tpu_args, None)  # Fails early on missing options.
    if not bucket:
      raise ValueError("--launcher tpu needs --bucket gs://BUCKET/PATH: every "
                       "worker of a TPU VM reads and writes the run's workdir.")
  root = os.path.abspath(root)
  config = config_arg.load_config(config_spec)  # Fails early on a broken config.
  runs = make_runs(config_spec, load_sweep(sweep_path), root, base_overrides,
                   bucket)
  for run in runs:  # Such a run fails, and says why, in its status.json.
    for path, parent, _ in config_arg.unknown_override_keys(
        config, [f"--config.{k}=" for k in run.overrides]):
      print(f"warning: {run.name}: unknown config key {path!r} (no such field "
            f"under {parent}); this run will fail.")
  write_sweep_json(root, runs, config=absolute_config_spec(config_spec),
                   sweep=os.path.abspath(sweep_path),
                   base_overrides=list(base_overrides), launcher=launcher,
                   bucket=bucket)
  todo = [run for run in runs if not run.is_finished()]
  for run in runs:
    if run not in todo:
      print(f"skipped {run.name} (finished)")
  code = LAUNCHERS[launcher](todo, root, parallel=parallel, dry_run=dry_run,
                             tpu_args=tpu_args) if todo else 0
  print(f"Sweep {root}: {len(runs)} runs, {len(todo)} to run, "
        f"{len(runs) - len(todo)} skipped (finished)"
        + (" [dry run]" if dry_run else "") + ".")
  if not dry_run and bucket:
    print(f"Summary: gcloud storage rsync -r {bucket} {root} && "
          f"python -m tandem.launch.summary {root}")
  elif not dry_run and launcher != "slurm":
    print(f"Summary: python -m tandem.launch.summary {root}")
  return code


# --- Command line -------------------------------------------------------------------

def _define_flags(flags) -> None:
  flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().")
  flags.DEFINE_string("workdir", None, "Root directory of the sweep's runs.")
  flags.DEFINE_enum("launcher", "local", sorted(LAUNCHERS), "Where runs run.")
  flags.DEFINE_integer("parallel", None, "Runs at a time (local: default 1; "
                       "slurm: the array's %N throttle, default none; tpu: TPU "
                       "VMs, default 1).", lower_bound=1)
  flags.DEFINE_string("tpu_args", "", "--launcher tpu: launch/tpu_pod.sh's options "
                      "(--name N --zone Z --accelerator T [--project P] "
                      "[--data_dir gs://...]).")
  flags.DEFINE_string("bucket", None, "--launcher tpu: where the runs' workdirs "
                      "go (gs://BUCKET/PATH/NAME).")
  flags.DEFINE_bool("dry_run", False, "Print the commands instead of running them.")


def split_config_args(argv: list[str]) -> tuple[str | None, list[str]]:
  """(the `--config FILE[:ARG]` spec, the `--config.k=v` overrides) of argv;
  `--config X` and `--config.k v` are joined like `--config=X`, `--config.k=v`."""
  spec, overrides, i = None, [], 1
  while i < len(argv):
    arg = argv[i]
    if arg in ("--config", "--config.") or (arg.startswith("--config.")
                                            and "=" not in arg):
      if i + 1 < len(argv):
        arg, i = f"{arg}={argv[i + 1]}", i + 1
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg.startswith("--config."):
      overrides.append(arg)
    i += 1
  return spec, overrides


def main() -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  _define_flags(flags)
  given = {}

  def parse(argv):
    given["spec"], given["overrides"] = split_config_args(argv)
    return config_arg.parse_flags(flags.FLAGS, argv, help_text="Config file[:arg].")

  def run(argv):
    del argv
    FLAGS = flags.FLAGS  # pylint: disable=invalid-name
    if FLAGS.config is None or FLAGS.sweep is None or FLAGS.workdir is None:
      sys.exit("Usage: python -m tandem.launch.sweep --config FILE[:ARG] "
               "--sweep SWEEP.py --workdir ROOT [--launcher local|slurm|tpu] "
               "[--parallel N] [--dry_run] [--tpu_args='...' --bucket gs://...]")
    try:
      code = run_sweep(given["spec"], FLAGS.sweep, FLAGS.workdir,
                       base_overrides=given["overrides"],
                       launcher=FLAGS.launcher, parallel=FLAGS.parallel,
                       dry_run=FLAGS.dry_run, bucket=FLAGS.bucket,
                       tpu_args=FLAGS.tpu_args)
    except (FileNotFoundError, AttributeError, ValueError, RuntimeError) as e:
      sys.exit(f"Error: {e}")
    sys.exit(code)

  app.run(run, flags_parser=parse)


if __name__ == "__main__":
  main()
