r"""The one pretraining loop, for every objective in `tandem/ssl/`.

    python -m tandem.ssl.train --config configs/ssl/barlow_twins.py:dataset=fashion_mnist \
        --workdir /tmp/bt [--config.total_steps=3000 ...]

Read top to bottom: config → mesh → data → model/optimizer → sharding → step →
checkpoint → evals → loop. The objective is looked up by name
(`tandem.ssl.objectives.get_objective(config.objective)`) and provides
`make_model(config)` and `make_loss_fn(model, config)` with
`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))`,
`init_inputs(config)`: the example inputs `model.init` is called with (images and
tokens for image-text models), and `param_bounds(config)`: {top-level param name:
(low, high)} boxes the parameters are clamped into after each update (CLIP's logit
scale). Batches are dicts of arrays sharded over the batch axes: "image"
(uint8) and "label", plus "text" tokens when `config.input.text` is set.

The train state (optimizer state, batch statistics, step, rng, first non-finite
step) and the update are `tandem.train_state`'s. Evaluators are the dict-valued
entries of `config.evals`, each run every `every` steps and at the end
(`tandem.transfer.periodic`: the same `evaluate_task` as the transfer suite);
metrics go to TensorBoard and WORKDIR/metrics.jsonl, images also as PNGs in
WORKDIR/images/. `python -m tandem.ssl.train` prints the closing summary
(`tandem.transfer.report`).

Interrupting (SIGTERM or Ctrl-C) finishes the current step, saves a checkpoint and
exits; the same command resumes from the workdir (params, batch stats, optimizer
state, step, rng and data-iterator position). A non-finite loss stops the run with
the step where it first happened; non-finite states are never saved, so the last
checkpoint stays the last good one. SIGUSR1 prints every thread's Python stack
(where a run that seems stuck is waiting) and training goes on.
"""
from __future__ import annotations

if __name__ == "__main__":  # First, before JAX is imported: may re-execute.
  from tandem import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.use_tcmalloc()

import faulthandler
import json
import math
import os
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from tandem import checkpoint
from tandem import config_arg as config_arg_lib
from tandem import metrics_writer
from tandem import optimizers
from tandem import parallel
from tandem import train_state
from tandem.data import input_pipeline
from tandem.ssl import objectives
from tandem.transfer import periodic
from tandem.transfer import report

# Keys that may differ between a run and its resumption without refusal.
# (Which checkpoints are kept does not change the run.)
RESUME_IGNORED_KEYS = ("allow_config_change", "checkpoint.keep",
                       "checkpoint.keep_every")


NonFiniteLossError = train_state.NonFiniteLossError


class ConfigMismatchError(ValueError):
  pass


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# (config field, lowest value, how to fix it): integers the loop divides by or
# counts with, checked before anything is written or compiled.
_COUNTS = (
    ("total_steps", 1, "the number of training steps"),
    ("log_every", 1, "in steps; use total_steps to log only at the end"),
    ("checkpoint.every", 1, "in steps; use total_steps to save only at the end"),
    ("checkpoint.keep", 1, "0 would delete every checkpoint and the run could never "
     "resume; keep the last N with keep=N, a trajectory with checkpoint.keep_every"),
    ("checkpoint.keep_every", 0, "0 keeps only the last `keep` checkpoints"),
    ("input.batch_size", 1, "images per step over all devices"),
)


def check_run_config(config) -> None:
  """Refuses values the loop cannot run with, naming the field and the fix, before
  the workdir is touched: step counts and checkpoint settings that must be positive
  integers, and a learning rate that is not a finite number >= 0."""
  for name, low, fix in _COUNTS:
    group, _, field = name.rpartition(".")
    value = (config[group] if group else config).get(field, low)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"config.{name}={value!r} must be an integer >= {low} ({fix}).")
  optimizers.peak_lr(config)  # Raises for a missing, NaN, infinite or negative rate.
  weight_decay = config.optimizer.get("weight_decay", 0.0)
  if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) \
      or weight_decay < 0:
    raise ValueError(f"config.optimizer.weight_decay={weight_decay!r} must be a "
                     "finite number >= 0.")


def check_config_matches_workdir(config, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints came from a different config.
  A workdir with a config.json but no checkpoint (a run that stopped before its
  first save) takes the new config."""
  saved = checkpoint.read_config_dict(workdir)
  if (saved is None or not os.path.isdir(checkpoint.checkpoint_dir(workdir))
      or not checkpoint.all_steps(workdir)):
    return
  if config.allow_config_change:
    return
  current = json.loads(config.to_json_best_effort())
  old, new = _flatten(saved), _flatten(current)
  diffs = sorted(k for k in set(old) | set(new)
                 if k not in RESUME_IGNORED_KEYS and old.get(k) != new.get(k))
  if diffs:
    lines = "\n".join(f"  {k}: workdir has {old.get(k)!r}, now {new.get(k)!r}"
                      for k in diffs[:20])
    raise ConfigMismatchError(
        f"Workdir {workdir} holds checkpoints from a different config:\n{lines}\n"
        "Use a new --workdir, or pass --config.allow_config_change=True to resume "
        "anyway.")


def make_init_fn(model, tx, config, init_inputs=None, init_state=None):
  """`init(rng) -> (params, state)`: fresh params and the train state around them
  (`tandem.train_state`). `init_inputs`: example inputs for `model.init` (default
  `objectives.default_init_inputs`); `init_state(params, model_state, config)`:
  the objective's own state added to the model state (an EMA teacher)."""
  if init_inputs is None:
    init_inputs = objectives.default_init_inputs(config)

  def init(rng):
    variables = dict(model.init(rng, *init_inputs, train=False))
    params = variables.pop("params")
    if init_state is not None:
      variables = init_state(params, variables, config)
    return params, train_state.create(params, tx, variables, config.seed + 1)

  return init


def _preemption_noticed(step: int) -> bool:
  """Whether every process has reached the step JAX's preemption service chose
  after a SIGTERM (it handles SIGTERM from jax.distributed.initialize until
  `_StopSignal` takes over); False where that service is off."""
  try:
    return multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:
    return False


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag checked between steps."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: signals stay with the caller.
        continue
      # System calls the signal lands in (any thread's: a collective's socket
      # reads, a checkpoint's writes) restart instead of failing with EINTR.
      signal.siginterrupt(sig, False)
    return self

  def requested(self, step: int, every: int) -> bool:
    """Whether to stop after `step`. With several processes they must stop at the
    same step, so the signal (each process gets its own, at slightly different
    times) is shared with a small all-gather every `every` steps."""
    if jax.process_count() == 1:
      return self.signum is not None
    if _preemption_noticed(step):  # A SIGTERM from before this handler existed.
      self.signum = self.signum or signal.SIGTERM
      return True
    if step % every:
      return False
    signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
    self.signum = self.signum or int(np.max(signums)) or None
    return self.signum is not None

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    # A second signal acts as usual (e.g. a second Ctrl-C kills).
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
    signal.siginterrupt(signum, False)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains per `config` in `workdir`; returns the final metrics.

  Refuses, before anything is written: bad run settings (`check_run_config`), a
  workdir it cannot write, and a workdir another run holds (`WorkdirLock`). A
  write the storage refuses later (a full disk, a volume turned read-only) stops
  the run with a `checkpoint.WorkdirError` naming the file or checkpoint step, the
  volume and the last complete checkpoint, which the same command resumes from.
  """
  objective = objectives.get_objective(config.objective)  # Unknown names first.
  check_run_config(config)
  if config.get("matryoshka_dims", ()) and not objective.matryoshka:
    raise ValueError(f"config.matryoshka_dims: {config.objective} does not support "
                     "Matryoshka prefixes (barlow_twins, simclr and vicreg do).")
  checkpoint.check_writable(workdir)
  with checkpoint.WorkdirLock(workdir, jax.process_index()):
    try:
      return _train(config, workdir, objective)
    except checkpoint.WorkdirError:
      raise
    except Exception as e:  # A log or results file the storage refused.
      reason = checkpoint.storage_error(e)
      if reason is None:
        raise
      path = getattr(e, "filename", None)
      raise checkpoint.WorkdirError(checkpoint.storage_message(
          workdir, reason, f"Could not write {path or 'to the workdir ' + workdir}",
          path=path or workdir)) from e


def _train(config: ml_collections.ConfigDict, workdir: str, objective) -> dict:
  # --- Config -----------------------------------------------------------------
  check_config_matches_workdir(config, workdir)
  if jax.process_index() == 0:
    checkpoint.write_config(workdir, config)
  data_dir = input_pipeline.resolve_data_dir(config.data_dir or None)

  # --- Mesh ---------------------------------------------------------------------
  preset = config.get("sharding", "")
  mesh = parallel.make_mesh(parallel.preset_mesh(preset, config.mesh) if preset
                            else config.mesh)
  batch_shards = parallel.batch_shards(mesh)
  if config.input.batch_size % batch_shards:
    raise ValueError(f"config.input.batch_size={config.input.batch_size} must be "
                     f"divisible by the {batch_shards} batch shards of the mesh.")

  # --- Data ---------------------------------------------------------------------
  train_iter = input_pipeline.make_train_iterator(
      config.dataset, config.train_split, data_dir=data_dir,
      image_size=config.input.image_size, channels=config.input.channels,
      global_batch_size=config.input.batch_size, seed=config.seed,
      **({"text": config.input.text.to_dict()} if "text" in config.input else {}))

  # --- Model and optimizer --------------------------------------------------------
  model = objective.make_model(config)
  loss_fn = objective.make_loss_fn(model, config)
  tx, lr_schedule = optimizers.make_optimizer(config)
  bounds = objective.param_bounds(config)
  if bounds:
    tx = optax.chain(tx, optimizers.clamp_params(bounds))
  init_inputs = objective.init_inputs(config)
  init = make_init_fn(model, tx, config, init_inputs, objective.init_state)

  # --- Sharding -----------------------------------------------------------------
  # Parameters are drawn with the "rbg" generator: with threefry, XLA:CPU needs
  # 15-30 s to compile the init of even a small ResNet; rbg takes ~3 s.
  init_rng = jax.random.key(config.seed, impl="rbg")
  abstract_params, abstract_state = jax.eval_shape(init, init_rng)
  rules = (parallel.preset_rules(preset, abstract_params, mesh,
                                 config.get("fsdp_min_size_mb", 4.0))
           if preset else config.partition_rules)
  params_sharding = parallel.tree_shardings(abstract_params, rules, mesh)
  state_sharding = parallel.tree_shardings(abstract_state, rules, mesh)
  batch_sharding = parallel.batch_sharding(mesh)
  params, state = jax.jit(init, out_shardings=(params_sharding, state_sharding))(
      init_rng)

  # --- Step -----------------------------------------------------------------------
  accum = int(config.get("grad_accum_steps", 1))
  if accum > 1:
    if objective.make_stages is None:
      raise ValueError(f"grad_accum_steps={accum}: objective {config.objective!r} "
                       "has no make_stages for gradient accumulation.")
    if config.input.batch_size % (accum * batch_shards):
      raise ValueError(f"config.input.batch_size={config.input.batch_size} must be "
                       f"divisible by grad_accum_steps={accum} times the "
                       f"{batch_shards} batch shards.")
  train_step = train_state.jit_step(
      train_state.make_step(
          loss_fn, tx, lr_schedule=lr_schedule, accum_steps=accum,
          stages=objective.make_stages(model, config) if accum > 1 else None,
          after_update=objective.make_after_update(config)),
      mesh, params_sharding, state_sharding, batch_sharding)

  # --- Checkpoint -----------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(
      workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
      keep_every=config.checkpoint.get("keep_every", 0))
  resumed_step = ckpt.latest_step()
  if resumed_step is not None:
    with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    params, state, data_state = ckpt.restore(
        resumed_step, jax.tree.map(with_sharding, abstract_params, params_sharding),
        jax.tree.map(with_sharding, abstract_state, state_sharding))
    train_iter.set_state(data_state)
  first_step = int(state["step"])

  # --- Evals --------------------------------------------------------------------
  # From a checkpoint or from scratch (a run killed before its first save), the
  # rows an earlier attempt logged after this step are logged again: dropped.
  writer = metrics_writer.MetricsWriter(workdir, resumed_step=first_step)
  progress = metrics_writer.Progress(config.total_steps, config.input.batch_size,
                                     first_step)
  evals = periodic.PeriodicEvals(config, data_dir=data_dir, mesh=mesh)
  results = {}
  progress.message(
      f"Mesh {', '.join(f'{k}={v}' for k, v in mesh.shape.items())} over "
      f"{mesh.size} devices in {jax.process_count()} process(es).")
  if resumed_step is not None:
    progress.message(f"Resumed from step {resumed_step} in {workdir}.")
  if accum > 1:
    progress.message(
        f"Gradient accumulation: {accum} micro-batches of "
        f"{config.input.batch_size // accum}; the loss and its gradient are those "
        "of the whole batch, but batch-norm statistics are per micro-batch.")

  def evaluated(params, state):  # The student's, or the EMA teacher's (DINO).
    params, model_state = objectives.weights(config, params, state["model_state"])
    return {"params": params, **model_state}

  def log_evals(step, metrics, images, seconds):
    writer.write(step, metrics)
    for name, image in images.items():
      writer.write_images(step, name, image)
    progress.message(f"eval @ step {step} ({seconds:.0f}s): " + ", ".join(
        f"{k} {v:.4f}" for k, v in metrics.items()))
    progress.exclude(seconds)

  def run_evals(step, params, state, log=None):
    t0 = time.time()
    metrics, images = evals.run(evals.due(step), step,
                                evaluated(params, state), log=log)
    log_evals(step, metrics, images, time.time() - t0)
    return metrics

  t0 = time.time()
  baselines, computed = evals.baselines(evaluated(params, state),
                                        workdir, compute=first_step == 0)
  if computed:
    log_evals(0, {k: v for m in baselines.values() for k, v in m.items()}, {},
              time.time() - t0)
  results.update(baselines)

  def save(step, params, state):
    nonfinite = int(state["nonfinite_step"])
    if nonfinite >= 0:
      ckpt.wait()
      raise NonFiniteLossError(
          f"The loss, gradient or parameters became non-finite at step {nonfinite}. "
          f"Stopped at step {step}; " + (
              f"the last good checkpoint is step {ckpt.latest_step()} in {workdir}. "
              "Lower the learning rate or check the inputs, then resume from it."
              if ckpt.latest_step() is not None else
              f"no checkpoint was saved before it in {workdir}. Lower the learning "
              "rate or check the inputs, and start again."))
    ckpt.save(step, params, state, data_state=train_iter.get_state())

  # --- Loop -----------------------------------------------------------------------
  step = first_step
  last_metrics = {}
  try:
    with _StopSignal() as stop:
      while step < config.total_steps:
        batch = parallel.global_batch(next(train_iter), mesh)
        if step == first_step:  # Compiled ahead, to report what it needs.
          lowered = train_step.lower(params, state, batch)
          train_step = lowered.compile()
          resources = train_state.resource_report(lowered, train_step, params, state)
          progress.message(train_state.format_report(resources))
          if jax.process_index() == 0:
            with open(os.path.join(workdir, "resources.json"), "w") as f:
              json.dump(resources, f, indent=2)
        params, state, metrics = train_step(params, state, batch)
        step += 1
        if step % config.log_every == 0 or step == config.total_steps:
          last_metrics = jax.device_get(metrics)
          last_metrics.update(train_iter.metrics())  # May be a collective.
          if int(state["nonfinite_step"]) >= 0:
            save(step, params, state)  # Raises NonFiniteLossError.
          last_metrics["images_per_sec"] = progress.update(
              step, float(last_metrics["loss"]))
          writer.write(step, last_metrics)
        if stop.requested(step, config.log_every):
          save(step, params, state)
          progress.message(f"Stopped by signal {stop.signum} at step {step}; "
                           f"checkpoint saved in {workdir}. Run the same command "
                           "to resume.")
          return {"interrupted_at": step, "signal": stop.signum}
        if step % config.checkpoint.every == 0 or step == config.total_steps:
          save(step, params, state)
        if step < config.total_steps and evals.due(step):
          results.update(run_evals(step, params, state))
      if ckpt.latest_step() != step:
        save(step, params, state)
      ckpt.wait()  # Complete before results.json says training is done.
      signalled = stop.signum  # While saving: stops before evaluating.

    # The training metrics first: a run stopped during its final evaluation keeps
    # them. (A run resumed at its last step, to evaluate again, reads its log.)
    training = {k: float(v) for k, v in (
        last_metrics or metrics_writer.read_row(workdir, step, "loss")).items()}
    results.update(step=step, final=dict(training))
    _write_results(workdir, results, "pending")
    progress.message(f"Final evaluation at step {step}:")
    try:
      with _RaiseOnSignal(signalled):
        results["final"] = run_evals(step, params, state, log=progress.message)
    except _Stopped as stopped:
      _write_results(workdir, results, "interrupted")
      progress.message(
          f"Stopped by signal {stopped.signum} during the final evaluation at step "
          f"{step}; the checkpoint of step {step} is saved and results.json holds "
          "the training metrics. Run the same command to evaluate it again.")
      return {"interrupted_at": step, "signal": stopped.signum}
  finally:
    ckpt.close()  # Waits for asynchronous saves to finish.
    writer.close()
  results["final"].update(training)
  _write_results(workdir, results, "done")
  return results


def _write_results(workdir: str, results: dict, final_evaluation: str) -> None:
  """WORKDIR/results.json, whole (a temporary file, then a rename): the final
  metrics and step, and whether the final evaluation is "done", "pending" (the
  process died during it) or "interrupted" (stopped by a signal)."""
  results["final_evaluation"] = final_evaluation
  if jax.process_index() == 0:
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)


class _Stopped(Exception):
  def __init__(self, signum):
    super().__init__(f"signal {signum}")
    self.signum = signum


class _RaiseOnSignal:
  """SIGTERM/SIGINT raise `_Stopped` at once (the final evaluation has nothing to
  save: its checkpoint is written; a preemption's grace period is short), as does
  entering with `signalled`, a signal that arrived before."""

  def __init__(self, signalled=None):
    self._signalled = signalled

  def __enter__(self):
    if self._signalled:
      raise _Stopped(self._signalled)
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._raise)
      except ValueError:  # Not the main thread.
        continue
    return self

  def _raise(self, signum, frame):
    del frame
    self.__exit__()
    raise _Stopped(signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


FLAGS = flags.FLAGS


def _define_flags():
  """Command-line flags, defined only when run as a program (so that importing
  this module next to another entry point, tandem.transfer.run, is harmless).
  `--config` is defined by `_parse_flags`, from the config file it names."""
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for multi-process runs started by "
                      "hand (launch/local_multiprocess.sh); TPU pods and SLURM need "
                      "none.")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() with the cluster's own "
                    "settings (TPU pods, SLURM).")
  flags.DEFINE_integer("heartbeat_timeout_s", 60,
                       "Multi-process: a process that sends no heartbeat for this "
                       "long is dead, and every other process stops with an error "
                       "that says so (JAX's coordination service aborts them) "
                       "instead of waiting for it forever in a collective.")
  flags.DEFINE_integer("init_timeout_s", 300,
                       "Multi-process: how long to wait for every process to join.")


def _parse_flags(argv):
  """`--config=FILE[:ARG]` through `config_arg.load_config`, `--config.a.b=v`
  overrides, then the other flags; every error is one line."""
  return config_arg_lib.parse_flags(FLAGS, argv,
                                    help_text="Experiment config file[:arg].")


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:  # Orbax and TFDS are chatty at INFO.
    logging.set_verbosity(logging.WARNING)
  timeouts = dict(heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_s,
                  initialization_timeout=FLAGS.init_timeout_s)
  # A run that seems stuck: `kill -USR1 PID` (on SLURM: `scancel --signal=USR1
  # JOB`) prints every thread's Python stack to its log and lets it go on.
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  if FLAGS.coordinator_address or FLAGS.distributed:
    # A peer's death aborts this process from C++ (no Python exception): print the
    # Python stack beside JAX's message, which names the dead process.
    faulthandler.enable()
  if FLAGS.coordinator_address or FLAGS.distributed:
    # Cross-process collectives for CPU devices (GPUs and TPUs bring their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id, **timeouts)
  elif FLAGS.distributed:
    # JAX detects SLURM, Cloud TPU and Kubernetes by itself. Elsewhere, the
    # environment may give JAX_COORDINATOR_ADDRESS (read by JAX) with
    # JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    env = lambda key: int(os.environ[key]) if key in os.environ else None
    jax.distributed.initialize(num_processes=env("JAX_NUM_PROCESSES"),
                               process_id=env("JAX_PROCESS_ID"), **timeouts)
  if FLAGS.config is None or FLAGS.workdir is None:
    sys.exit("Usage: python -m tandem.ssl.train --config FILE[:ARG] --workdir DIR")
  try:
    result = train(FLAGS.config, FLAGS.workdir)
    if "interrupted_at" in result:
      sys.exit(128 + result["signal"])  # The shell's convention: 130 for Ctrl-C.
    if jax.process_index() == 0:
      report.print_pretraining_summary(result, FLAGS.config)
  except (input_pipeline.DatasetNotPreparedError, input_pipeline.DataSourceError,
          ConfigMismatchError,
          NonFiniteLossError, input_pipeline.EmptyCaptionsError,
          checkpoint.CheckpointError, checkpoint.WorkdirError,
          ValueError) as e:
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["workdir"])  # No --config: main's usage line.
  app.run(main, flags_parser=_parse_flags)
