"""Score a pretraining checkpoint on a transfer suite.

  python -m tandem.transfer.run --config configs/transfer/vtab.py:suite=offline \
      --config.checkpoint=WORKDIR [--config.field=value ...]

For every task (`tandem.transfer.vtab`): load train800 / val200 / test (a task
whose data is not prepared is recorded as skipped, with the command that prepares
it), extract frozen features once per split × layer (`protocol.TaskData`), and run
each evaluator on them; hyper-parameters are selected inside
`TaskData.selection()`, where the test split cannot be read. Writes to the output
directory:
- `results.json`: one record per task × evaluator × seed, with the protocol's
  settings (layer and, beside it, the image preprocessing of its features: size,
  resize, channels, normalisation; chosen L2, k, T, shots, ...), and skips with
  their reasons;
- `summary.json` and the printed table: task × evaluator (mean over seeds), the
  group means (natural / specialized / structured) and the overall mean;
- `results.png`: a bar chart of the same table.
"""
from __future__ import annotations

if __name__ == "__main__":  # First, before JAX is imported: may re-execute.
  from tandem import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.use_tcmalloc()

import faulthandler
import json
import os
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from tandem import checkpoint
from tandem import config_arg
from tandem import pretrained
from tandem.data import input_pipeline
from tandem.transfer import features as features_lib
from tandem.transfer import protocol
from tandem.transfer import report
from tandem.transfer import vtab

def _settings(config, name: str, task=None) -> dict:
  """Evaluator `name`'s settings from the suite config: its block, the run's layer
  and seed; no crops or flips for fine-tuning on structured tasks (their labels are
  positions and orientations)."""
  settings = {**config[name].to_dict(), "layer": config.layer, "seed": config.seed}
  if name == "finetune" and getattr(task, "group", "") == "structured":
    settings.update(flip=False, crop=False)
  return settings


def _with_preprocessing(record: dict, preprocessing: dict) -> dict:
  """`record` with `preprocessing` right after its `layer` (records without a layer,
  skips and fine-tuning, as they are)."""
  if "layer" not in record:
    return record
  out = {}
  for key, value in record.items():
    out[key] = value
    if key == "layer":
      out["preprocessing"] = preprocessing
  return out


def evaluate_task(data, model: protocol.Model, config, evaluators: list[str]) -> list[dict]:
  """The records of `evaluators` (names in `protocol.EVALUATORS`) on one task,
  each tagged with the task and the image preprocessing of its features."""
  preprocessing = features_lib.preprocessing(model.config.input)
  records = []
  for name in evaluators:
    module = protocol.get_evaluator(name)
    for record in module.evaluate_task(data, _settings(config, name, data), model):
      records.append(_with_preprocessing(
          {"task": data.name, "group": getattr(data, "group", ""), **record},
          preprocessing))
  return records


def load_task(task: vtab.Task, config, model: protocol.Model, data_dir: str,
              cache: protocol.FeatureCache) -> protocol.TaskData:
  """The task's train800 / val200 / test at the checkpoint's image size; features
  in the run's one cache, keyed by (dataset, split), so tasks on the same data
  (dSprites location and orientation) share them."""
  cfg = model.config.input
  load = lambda split: vtab.load_split(task, split, data_dir=data_dir,
                                       image_size=cfg.image_size,
                                       channels=cfg.channels)
  test = input_pipeline.subsample(config.max_test, config.seed, *load("test"))
  splits = {"train": protocol.Split("train", *load("train800")),
            "val": protocol.Split("val", *load("val200")),
            "test": protocol.Split("test", *test)}
  return protocol.TaskData(
      task.name, task.num_classes, splits, features_lib.extractor(model),
      class_names=vtab.class_names(task, data_dir), group=task.group, cache=cache,
      keys={"trainval": (task.dataset, task.splits["train800val200"]),
            "test": (task.dataset, task.splits["test"], config.max_test)})


def run(config) -> dict:
  """Evaluates `config.checkpoint` on `config.tasks`; returns the results dict."""
  if not config.checkpoint:
    raise ValueError("Set --config.checkpoint=WORKDIR (a pretraining workdir).")
  tasks = vtab.get_tasks(config.tasks)
  evaluators = [e.strip() for e in config.evaluators.split(",") if e.strip()]
  unknown = [e for e in evaluators if e not in protocol.EVALUATORS]
  if unknown:
    raise ValueError(f"Unknown evaluators {unknown}; available: "
                     f"{sorted(protocol.EVALUATORS)}.")
  data_dir = input_pipeline.resolve_data_dir(config.data_dir or None)
  loaded = pretrained.load(config.checkpoint, None if config.step < 0 else config.step)
  model = protocol.Model(loaded.config, loaded.variables, seed=config.seed,
                         batch_size=config.batch_size)
  cache = protocol.FeatureCache()
  cache.set_version(loaded.step)
  output_dir = config.output_dir or os.path.join(
      config.checkpoint, "transfer",
      f"{config.tasks.replace(',', '+')}_step{loaded.step}")
  os.makedirs(output_dir, exist_ok=True)

  records, start = [], time.time()
  for task in tasks:
    base = {"task": task.name, "group": task.group}
    if not vtab.is_prepared(task, data_dir):
      records.append({**base, "evaluator": "*", "skipped": (
          f"data not prepared in {data_dir}; prepare it with: "
          f"{task.prepare_command(data_dir)}")})
      print(f"{task.name}: skipped (not prepared: {task.prepare_command(data_dir)})")
      continue
    task_start, extractions = time.time(), cache.extractions
    data = load_task(task, config, model, data_dir, cache)
    records += evaluate_task(data, model, config,
                             [e for e in evaluators if e != "retrieval"])
    print(f"{task.name}: {time.time() - task_start:.1f} s "
          f"({cache.extractions - extractions} feature extractions)")
  if "retrieval" in evaluators:  # Not a classification task: a row of its own.
    task = f"{config.retrieval.dataset}/{config.retrieval.split}"
    skip = protocol.needs_text_tower(model, "retrieval")
    if skip:  # Recorded without loading the data.
      records.append({"task": task, "group": "image-text", **skip})
    else:
      pairs = protocol.get_evaluator("retrieval").load_data(
          config.retrieval, loaded.config, data_dir, seed=config.seed)
      records += evaluate_task(pairs, model, config, ["retrieval"])

  summary = report.summarise(records, {t.name: t.group for t in tasks})
  results = {"checkpoint": os.path.abspath(config.checkpoint), "step": loaded.step,
             "objective": loaded.config.get("objective"),
             "model": loaded.config.get("model_name"), "layer": config.layer,
             "preprocessing": features_lib.preprocessing(loaded.config.input),
             "tasks": config.tasks, "seconds": round(time.time() - start, 1),
             "config": config.to_dict(), "records": records}
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=_json_default)
  with open(os.path.join(output_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  table = report.format_table(summary)
  print(table)
  with open(os.path.join(output_dir, "table.txt"), "w") as f:
    f.write(table + "\n")
  report.plot(summary, os.path.join(output_dir, "results.png"),
              title=f"{results['objective']} {results['model']} step {loaded.step}")
  print(f"Wrote {output_dir}/results.json, summary.json, table.txt, results.png "
        f"({results['seconds']:.0f} s)")
  results["output_dir"], results["summary"] = output_dir, summary
  return results


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # As in training: SIGUSR1 prints every thread's Python stack and the run goes on.
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  if FLAGS.config is None:
    sys.exit("Usage: python -m tandem.transfer.run --config "
             "configs/transfer/vtab.py[:ARG] --config.checkpoint=WORKDIR")
  try:
    run(FLAGS.config)
  except (checkpoint.CheckpointError, input_pipeline.DatasetNotPreparedError,
          protocol.NonFiniteFeaturesError, ValueError) as e:
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  # --config is defined while parsing (config_arg.parse_flags loads the file it
  # names), not at import: tandem.ssl.train defines its own --config.
  app.run(main, flags_parser=lambda argv: config_arg.parse_flags(
      FLAGS, argv, help_text="Transfer config file[:arg]."))
