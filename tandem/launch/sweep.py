r"""Hyper-parameter sweeps: one training run per config override dict.

    python -m tandem.launch.sweep \
        --config configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn \
        --sweep configs/sweeps/bt_lambda_lr.py --workdir ROOT \
        [--config.total_steps=900 ...] [--launcher local|slurm] [--parallel N] \
        [--dry_run]

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

Running the same sweep again skips the finished runs (results.json at
total_steps: tandem/launch/run_dir.py) and relaunches the others, which train
resumes from their checkpoints. The exit status is 1 when a run failed (the
other runs still run). `--dry_run` prints the commands instead of running them.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import os
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


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict
  workdir: str
  train_args: tuple[str, ...]  # The arguments after `python -m tandem.ssl.train`.

  @property
  def command(self) -> list[str]:
    return [sys.executable, "-m", TRAIN_MODULE, *self.train_args]


def absolute_config_spec(spec: str) -> str:
  """`FILE:ARG` with FILE made absolute, so commands work from any directory."""
  path, arg = config_arg.split_config_spec(spec)
  path = os.path.abspath(path)
  return path if arg is None else f"{path}:{arg}"


def make_runs(config_spec: str, sweep: list[dict], root: str,
              base_overrides: list[str] = ()) -> list[Run]:
  """One Run per override dict; `base_overrides` (`--config.k=v` strings) go to
  every run, before its own. Two runs with one name are an error."""
  spec = absolute_config_spec(config_spec)
  root = os.path.abspath(root)
  runs, seen = [], {}
  for overrides in sweep:
    name = run_name(overrides)
    if name in seen:
      raise ValueError(f"Two runs of the sweep are both named {name!r}: "
                       f"{seen[name]} and {overrides}. Remove the duplicate.")
    seen[name] = overrides
    workdir = os.path.join(root, name)
    args = ("--config", spec, *base_overrides,
            *(f"--config.{k}={format_value(v)}" for k, v in overrides.items()),
            "--workdir", workdir)
    runs.append(Run(name, dict(overrides), workdir, args))
  return runs


def write_sweep_json(root: str, runs: list[Run], **info) -> str:
  """ROOT/sweep.json: the sweep's settings and its runs."""
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, SWEEP_FILE)
  record = dict(info, runs=[dict(name=r.name, overrides=r.overrides,
                                 workdir=r.workdir, command=shlex.join(r.command))
                            for r in runs])
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


def run_local(run: Run) -> dict:
  """Runs one training run to its end (output appended to RUNDIR/train.log);
  writes and returns its status.json record."""
  os.makedirs(run.workdir, exist_ok=True)
  log_path = os.path.join(run.workdir, run_dir.LOG_FILE)
  previous = run_dir.read_status(run.workdir) or {}
  started, t0 = _now(), time.time()
  with open(log_path, "ab") as log:
    offset = log.tell()
    log.write(f"=== {started}: {shlex.join(run.command)}\n".encode())
    log.flush()
    returncode = subprocess.run(run.command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, check=False).returncode
  wall = time.time() - t0
  status = dict(started=started, wall_s=round(wall, 1),
                total_wall_s=round(previous.get("total_wall_s", 0.0) + wall, 1),
                attempts=previous.get("attempts", 0) + 1, returncode=returncode,
                command=shlex.join(run.command))
  if returncode == 0 and run_dir.is_finished(run.workdir):
    status["status"] = "finished"
  else:
    tail = run_dir.log_tail(log_path, offset=offset)
    if returncode > 128:  # Train saved a checkpoint on SIGINT / SIGTERM.
      status["status"] = "interrupted"
      status["reason"] = (f"stopped by signal {returncode - 128} at step "
                          f"{run_dir.steps_reached(run.workdir)}; run the sweep "
                          "again to resume")
    else:
      status["status"] = "failed"
      status["reason"] = (run_dir.failure_reason(tail) if returncode else
                          "exited 0 without results.json at total_steps")
    status["log_tail"] = tail
  run_dir.write_status(run.workdir, status)
  return status


def launch_local(runs: list[Run], root: str, *, parallel: int | None,
                 dry_run: bool) -> int:
  """Runs `runs` here, `parallel` at a time; 1 if any failed, else 0."""
  del root
  if dry_run:
    for run in runs:
      print(shlex.join(run.command))
    return 0
  parallel = max(1, parallel or 1)
  failed = 0
  executor = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
  futures = {executor.submit(run_local, run): run for run in runs}
  _say(f"Running {len(runs)} runs, {parallel} at a time (output: RUNDIR/"
       f"{run_dir.LOG_FILE}).")
  try:
    for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
      run, status = futures[future], future.result()
      note = (f"{status['status']} in {status['wall_s']:.0f}s" +
              (f" (exit {status['returncode']}): {status['reason']}"
               if status["status"] != "finished" else ""))
      _say(f"[{i}/{len(runs)}] {run.name}: {note}")
      failed += status["status"] != "finished"
  except KeyboardInterrupt:  # The runs got the signal too and save checkpoints.
    executor.shutdown(wait=True, cancel_futures=True)
    _say("Sweep interrupted; run the same command to resume.")
    return 130
  executor.shutdown()
  return 1 if failed else 0


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
                 dry_run: bool) -> int:
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


LAUNCHERS = {"local": launch_local, "slurm": launch_slurm}


def run_sweep(config_spec: str, sweep_path: str, root: str, *,
              base_overrides: list[str] = (), launcher: str = "local",
              parallel: int | None = None, dry_run: bool = False) -> int:
  """Plans the sweep, writes ROOT/sweep.json, skips finished runs and launches
  the others; returns the exit status."""
  if launcher not in LAUNCHERS:
    raise ValueError(f"Unknown launcher {launcher!r}; known: {sorted(LAUNCHERS)}.")
  root = os.path.abspath(root)
  config = config_arg.load_config(config_spec)  # Fails early on a broken config.
  runs = make_runs(config_spec, load_sweep(sweep_path), root, base_overrides)
  for run in runs:  # Such a run fails, and says why, in its status.json.
    for path, parent, _ in config_arg.unknown_override_keys(
        config, [f"--config.{k}=" for k in run.overrides]):
      print(f"warning: {run.name}: unknown config key {path!r} (no such field "
            f"under {parent}); this run will fail.")
  write_sweep_json(root, runs, config=absolute_config_spec(config_spec),
                   sweep=os.path.abspath(sweep_path),
                   base_overrides=list(base_overrides), launcher=launcher)
  todo = [run for run in runs if not run_dir.is_finished(run.workdir)]
  for run in runs:
    if run not in todo:
      print(f"skipped {run.name} (finished)")
  code = LAUNCHERS[launcher](todo, root, parallel=parallel, dry_run=dry_run) \
      if todo else 0
  print(f"Sweep {root}: {len(runs)} runs, {len(todo)} to run, "
        f"{len(runs) - len(todo)} skipped (finished)"
        + (" [dry run]" if dry_run else "") + ".")
  if not dry_run and launcher == "local":
    print(f"Summary: python -m tandem.launch.summary {root}")
  return code


# --- Command line -------------------------------------------------------------------

def _define_flags(flags) -> None:
  flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().")
  flags.DEFINE_string("workdir", None, "Root directory of the sweep's runs.")
  flags.DEFINE_enum("launcher", "local", sorted(LAUNCHERS), "Where runs run.")
  flags.DEFINE_integer("parallel", None, "Runs at a time (local: default 1; "
                       "slurm: the array's %N throttle, default none).",
                       lower_bound=1)
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
               "--sweep SWEEP.py --workdir ROOT [--launcher local|slurm] "
               "[--parallel N] [--dry_run]")
    try:
      code = run_sweep(given["spec"], FLAGS.sweep, FLAGS.workdir,
                       base_overrides=given["overrides"],
                       launcher=FLAGS.launcher, parallel=FLAGS.parallel,
                       dry_run=FLAGS.dry_run)
    except (FileNotFoundError, AttributeError, ValueError, RuntimeError) as e:
      sys.exit(f"Error: {e}")
    sys.exit(code)

  app.run(run, flags_parser=parse)


if __name__ == "__main__":
  main()
