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

Evaluators are the dict-valued entries of `config.evals`: entry NAME is run by
`<module>.Evaluator(config, data_dir=, mesh=)` with `module` from the entry, default
`tandem.transfer.NAME`; `run(variables)` gets the whole model's variables and returns
scalars, and images (uint8 [H, W, C]) that are written to TensorBoard and as PNGs
in WORKDIR/images/.

Interrupting (SIGTERM or Ctrl-C) finishes the current step, saves a checkpoint and
exits; the same command resumes from the workdir (params, batch stats, optimizer
state, step, rng and data-iterator position). A non-finite loss stops the run with
the step where it first happened; non-finite states are never saved, so the last
checkpoint stays the last good one.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from tandem import checkpoint
from tandem import config_arg as config_arg_lib
from tandem import metrics_writer
from tandem import optimizers
from tandem import parallel
from tandem.data import input_pipeline
from tandem.ssl import objectives

# Keys that may differ between a run and its resumption without refusal.
RESUME_IGNORED_KEYS = ("allow_config_change",)


class NonFiniteLossError(FloatingPointError):
  pass


class ConfigMismatchError(ValueError):
  pass


class EmptyCaptionsError(ValueError):
  pass


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_config_matches_workdir(config, workdir: str) -> None:
  """Refuses to resume a workdir whose checkpoints came from a different config."""
  saved = checkpoint.read_config_dict(workdir)
  if saved is None or not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
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


def make_init_fn(model, tx, config, init_inputs=None):
  """`init(rng) -> (params, state)`: fresh params and the train state around them.

  `init_inputs`: example inputs for `model.init` (default
  `objectives.default_init_inputs`).
  """
  if init_inputs is None:
    init_inputs = objectives.default_init_inputs(config)

  def init(rng):
    variables = dict(model.init(rng, *init_inputs, train=False))
    params = variables.pop("params")
    state = dict(opt_state=tx.init(params), model_state=variables,
                 step=jnp.zeros((), jnp.int32),
                 rng=jax.random.key_data(jax.random.key(config.seed + 1)),
                 nonfinite_step=jnp.full((), -1, jnp.int32))
    return params, state

  return init


def make_evaluators(config, *, data_dir: str, mesh) -> dict:
  """{name: Evaluator} for the dict-valued entries of `config.evals`."""
  evaluators = {}
  for name, block in config.evals.items():
    if not isinstance(block, ml_collections.ConfigDict):
      continue
    module = importlib.import_module(block.get("module", f"tandem.transfer.{name}"))
    evaluators[name] = module.Evaluator(config, data_dir=data_dir, mesh=mesh)
  return evaluators


def _make_step(loss_fn, tx, lr_schedule):
  def train_step(params, state, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (metrics, model_state)), grads = grad_fn(
        params, state["model_state"], batch, rng)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    first_nonfinite = jnp.where(
        (state["nonfinite_step"] < 0) & ~jnp.isfinite(loss), step,
        state["nonfinite_step"])
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads),
               "lr": lr_schedule(step)}
    state = dict(opt_state=opt_state, model_state=model_state, step=step + 1,
                 rng=state["rng"], nonfinite_step=first_nonfinite)
    return params, state, metrics
  return train_step


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
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    # A second signal acts as usual (e.g. a second Ctrl-C kills).
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains per `config` in `workdir`; returns the final metrics."""
  # --- Config -----------------------------------------------------------------
  objective = objectives.get_objective(config.objective)
  check_config_matches_workdir(config, workdir)
  if jax.process_index() == 0:
    checkpoint.write_config(workdir, config)
  data_dir = input_pipeline.resolve_data_dir(config.data_dir or None)

  # --- Mesh ---------------------------------------------------------------------
  mesh = parallel.make_mesh(config.mesh)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.input.batch_size <= 0:
    raise ValueError(f"config.input.batch_size must be positive, got "
                     f"{config.input.batch_size}.")
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
  init = make_init_fn(model, tx, config, init_inputs)

  # --- Sharding -----------------------------------------------------------------
  # Parameters are drawn with the "rbg" generator: with threefry, XLA:CPU needs
  # 15-30 s to compile the init of even a small ResNet; rbg takes ~3 s.
  init_rng = jax.random.key(config.seed, impl="rbg")
  abstract_params, abstract_state = jax.eval_shape(init, init_rng)
  rules = config.partition_rules
  params_sharding = parallel.tree_shardings(abstract_params, rules, mesh)
  state_sharding = parallel.tree_shardings(abstract_state, rules, mesh)
  batch_sharding = parallel.batch_sharding(mesh)
  params, state = jax.jit(init, out_shardings=(params_sharding, state_sharding))(
      init_rng)

  # --- Step -----------------------------------------------------------------------
  train_step = jax.jit(
      _make_step(loss_fn, tx, lr_schedule),
      in_shardings=(params_sharding, state_sharding, batch_sharding),
      out_shardings=(params_sharding, state_sharding, parallel.replicated(mesh)),
      donate_argnums=(0, 1))

  # --- Checkpoint -----------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(workdir, keep=config.checkpoint.keep,
                                 async_save=config.checkpoint.async_save)
  resumed_step = ckpt.latest_step()
  captions_truncated = 0  # This process's captions cut to the text tower's length.
  if resumed_step is not None:
    with_sharding = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    params, state, data_state = ckpt.restore(
        resumed_step, jax.tree.map(with_sharding, abstract_params, params_sharding),
        jax.tree.map(with_sharding, abstract_state, state_sharding))
    # Saved as the total over processes: it restarts on process 0 alone.
    truncated_total = data_state.pop("captions_truncated", 0)
    captions_truncated = truncated_total if jax.process_index() == 0 else 0
    train_iter.set_state(data_state)
  first_step = int(state["step"])

  # --- Evals --------------------------------------------------------------------
  writer = metrics_writer.MetricsWriter(workdir)
  progress = metrics_writer.Progress(config.total_steps, config.input.batch_size,
                                     first_step)
  evaluators = make_evaluators(config, data_dir=data_dir, mesh=mesh)
  results = {}
  if resumed_step is not None:
    progress.message(f"Resumed from step {resumed_step} in {workdir}.")

  def run_evals(step, params, state):
    t0 = time.time()
    variables = {"params": params, **state["model_state"]}
    metrics = {}
    for evaluator in evaluators.values():
      for name, value in evaluator.run(variables).items():
        if np.ndim(value) >= 3:  # An image.
          writer.write_images(step, name, value)
        else:
          metrics[name] = float(value)
    writer.write(step, metrics)
    progress.message(f"eval @ step {step} ({time.time() - t0:.0f}s): " + ", ".join(
        f"{k} {v:.4f}" for k, v in metrics.items()))
    progress.exclude(time.time() - t0)
    return metrics

  baselines_path = os.path.join(workdir, "baselines.json")
  if config.evals.get("baselines", False) and "linear_probe" in evaluators:
    if os.path.exists(baselines_path):  # Computed before an interruption.
      with open(baselines_path) as f:
        results.update(json.load(f))
    elif first_step == 0:
      results["baseline/random_init"] = run_evals(0, params, state)
      t0 = time.time()
      results["baseline/raw_pixels"] = evaluators["linear_probe"].run_raw_pixels()
      progress.exclude(time.time() - t0)
      writer.write(0, results["baseline/raw_pixels"])
      progress.message("eval @ step 0: " + ", ".join(
          f"{k} {v:.4f}" for k, v in results["baseline/raw_pixels"].items()))
      if jax.process_index() == 0:
        with open(baselines_path, "w") as f:
          json.dump({k: results[k] for k in ("baseline/random_init",
                                             "baseline/raw_pixels")}, f, indent=2)

  def save(step, params, state):
    nonfinite = int(state["nonfinite_step"])
    if nonfinite >= 0:
      ckpt.wait()
      raise NonFiniteLossError(
          f"Loss became non-finite at step {nonfinite}. Stopped at step {step}; "
          f"the last good checkpoint is step {ckpt.latest_step()} in {workdir}. "
          "Lower the learning rate or check the inputs, then resume from it.")
    data_state = train_iter.get_state()
    if "text" in config.input:
      data_state = {**data_state,
                    "captions_truncated": _sum_over_processes(captions_truncated)}
    ckpt.save(step, params, state, data_state=data_state)

  # --- Loop -----------------------------------------------------------------------
  step = first_step
  last_metrics = {}
  try:
    with _StopSignal() as stop:
      while step < config.total_steps:
        local_batch = next(train_iter)
        if "text" in local_batch:
          _check_captions(local_batch["text"], step, config)
          captions_truncated += int(np.sum(local_batch.pop("text_truncated")))
        batch = parallel.global_batch(local_batch, mesh)
        params, state, metrics = train_step(params, state, batch)
        step += 1
        if step % config.log_every == 0 or step == config.total_steps:
          last_metrics = jax.device_get(metrics)
          if "text" in config.input:
            last_metrics["data/captions_truncated"] = _sum_over_processes(
                captions_truncated)
          if int(state["nonfinite_step"]) >= 0:
            save(step, params, state)  # Raises NonFiniteLossError.
          last_metrics["images_per_sec"] = progress.update(
              step, float(last_metrics["loss"]))
          writer.write(step, last_metrics)
        if stop.signum is not None:
          save(step, params, state)
          progress.message(f"Stopped by signal {stop.signum} at step {step}; "
                           f"checkpoint saved in {workdir}. Run the same command "
                           "to resume.")
          return {"interrupted_at": step, "signal": stop.signum}
        if step % config.checkpoint.every == 0 or step == config.total_steps:
          save(step, params, state)
        if config.evals.every and step % config.evals.every == 0 \
            and step < config.total_steps:
          results.update(run_evals(step, params, state))

    if ckpt.latest_step() != step:
      save(step, params, state)
    results["final"] = run_evals(step, params, state)
  finally:
    ckpt.close()  # Waits for asynchronous saves to finish.
    writer.close()
  results["final"].update({k: float(v) for k, v in last_metrics.items()})
  results["step"] = step
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    _print_summary(results, config)
  return results


@functools.lru_cache(maxsize=4)
def _special_token_ids(tokenizer_spec: str) -> tuple[int, ...]:
  """pad/bos/eos ids, read once per run (a SentencePiece model is a file load)."""
  from tandem.data import tokenizer as tokenizer_lib
  tok = tokenizer_lib.get_tokenizer(tokenizer_spec)
  return tuple(i for i in (tok.pad_id, tok.bos_id, tok.eos_id) if i is not None)


def _check_captions(tokens: np.ndarray, step: int, config) -> None:
  """Refuses a batch whose captions are all empty: a wrong text feature, not data."""
  special = _special_token_ids(config.input.text.tokenizer)
  if not np.isin(tokens, special, invert=True).any():
    raise EmptyCaptionsError(
        f"Every caption of the batch at step {step} is empty (dataset "
        f"{config.dataset!r}, text feature {config.input.text.feature!r}). Point "
        "--config.input.text.feature at the dataset's caption feature (e.g. "
        "'caption' or 'captions/text'), or set it to '' to caption a labelled "
        "dataset with its class names.")


def _sum_over_processes(count: int) -> int:
  if jax.process_count() == 1:
    return count
  from jax.experimental import multihost_utils
  return int(np.sum(multihost_utils.process_allgather(np.int64(count))))


def _print_summary(results: dict, config) -> None:
  """The final evaluation, with the linear probe next to its baselines."""
  final = dict(results["final"])
  if "linear_probe" in config.evals:
    probe = config.evals.linear_probe
    key = f"linear_probe/{probe.layer}/test_top1"
    rows = [("pretrained " + config.objective, final.pop(key, None))]
    if "baseline/random_init" in results:
      rows += [("same encoder, random weights",
                results["baseline/random_init"][key]),
               ("raw pixels", results["baseline/raw_pixels"]
                ["linear_probe/raw_pixels/test_top1"])]
    print(f"\nLinear probe ({probe.layer}, L2 chosen on a split of train) on "
          f"{probe.dataset} {probe.test_split}:")
    for name, value in rows:
      print(f"  {name:<34s} {100 * value:6.2f}%")
  names = [k for k in final
           if "/" in k and not k.startswith(("linear_probe/", "data/"))]
  if names:
    print("\nFinal evaluation:")
    for name in names:
      print(f"  {name:<48s} {final[name]:.4f}")


FLAGS = flags.FLAGS


def _define_flags():
  """Command-line flags, defined only when run as a program (so that importing
  this module next to another entry point, tandem.transfer.run, is harmless)."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                  lock_config=True)
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


def _parse_flags(argv):
  return config_arg_lib.parse_flags(FLAGS, argv)


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:  # Orbax and TFDS are chatty at INFO.
    logging.set_verbosity(logging.WARNING)
  if FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  if FLAGS.config is None or FLAGS.workdir is None:
    sys.exit("Usage: python -m tandem.ssl.train --config FILE[:ARG] --workdir DIR")
  try:
    result = train(FLAGS.config, FLAGS.workdir)
    if "interrupted_at" in result:
      sys.exit(128 + result["signal"])  # The shell's convention: 130 for Ctrl-C.
  except (input_pipeline.DatasetNotPreparedError, ConfigMismatchError,
          NonFiniteLossError, EmptyCaptionsError, checkpoint.CheckpointError,
          ValueError) as e:
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=_parse_flags)
