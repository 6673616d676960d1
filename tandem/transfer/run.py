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

import dataclasses
import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from tandem import checkpoint
from tandem import config_arg
from tandem import pretrained
from tandem.data import input_pipeline
from tandem.transfer import features as features_lib
from tandem.transfer import fewshot
from tandem.transfer import knn
from tandem.transfer import linear_probe
from tandem.transfer import protocol
from tandem.transfer import vtab

IMAGE_TEXT_LAYER = "image_text_embedding"  # The image tower's normalised embedding.


@dataclasses.dataclass
class Context:
  """What every evaluator of a run shares: the checkpoint and the run config."""
  config: Any
  model: pretrained.Pretrained
  data_dir: str
  embedder: features_lib.ImageTextEmbedder | None = None
  # Loaded images by (dataset, split) and features by (images, layer), for the run.
  images: dict = dataclasses.field(default_factory=dict)
  features: dict = dataclasses.field(default_factory=dict)
  extractions: int = 0

  @property
  def variables(self) -> dict:
    return {"params": self.model.params, **self.model.model_state}


def _not_image_text(ctx: Context, name: str) -> dict | None:
  if ctx.embedder is None:
    return {"evaluator": name, "skipped": (
        f"{ctx.model.config.objective} checkpoints have no text tower; {name} needs "
        "a CLIP/SigLIP checkpoint.")}
  return None


def _linear_probe(data: protocol.TaskData, ctx: Context) -> list[dict]:
  """VTAB protocol: L2 swept by fitting train800 and scoring val200 (largest L2
  first, warm-started), refit on train800val200 with the best, test top-1 once."""
  block, layer = ctx.config.linear_probe, ctx.config.layer
  fit = lambda x, y, l2, init: linear_probe.fit_logistic_regression(
      x, y, data.num_classes, l2, init, block.max_iter)[0]
  accuracy = lambda params, x, y: float(np.mean(
      np.argmax(x @ np.asarray(params[0]) + np.asarray(params[1]), 1) == y))
  with data.selection():
    train_x, val_x = data.features("train", layer), data.features("val", layer)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    scores, solutions, params = {}, {}, None
    for l2 in sorted(block.l2_grid, reverse=True):
      params = fit((train_x - mean) / std, data.train.labels, l2, params)
      scores[l2], solutions[l2] = accuracy(params, (val_x - mean) / std,
                                           data.val.labels), params
    best = max(scores, key=lambda l2: (scores[l2], l2))
    x = data.features("trainval", layer)
    mean, std = x.mean(0), x.std(0) + 1e-6
    params = fit((x - mean) / std, data.trainval.labels, best, solutions[best])
  test_x = (data.features("test", layer) - mean) / std
  return [{"evaluator": "linear_probe", "metric": "test_top1", "layer": layer,
           "value": accuracy(params, test_x, data.test.labels), "l2": best,
           "val_top1": scores[best], "protocol": (
               f"multinomial logistic regression, standardised features, L2 from "
               f"{sorted(block.l2_grid)} chosen on val200, refit on train800val200")}]


def _fewshot(data, ctx):
  return fewshot.evaluate_task(data, {**ctx.config.fewshot.to_dict(),
                                      "layer": ctx.config.layer})


def _knn(data, ctx):
  return knn.evaluate_task(data, {**ctx.config.knn.to_dict(),
                                  "layer": ctx.config.layer})


def _finetune(data, ctx):
  from tandem.transfer import finetune  # Pulls in the training machinery.
  ft_config = ctx.config.finetune.to_dict()
  if data.group == "structured":  # Labels are positions/orientations: no flips or crops.
    ft_config.update(flip=False, crop=False)
  return finetune.evaluate_task(data, ctx.model.config, ctx.variables, ft_config,
                                seed=ctx.config.seed)


def _zeroshot(data, ctx):
  from tandem.transfer import zeroshot
  name = "zeroshot"
  skip = _not_image_text(ctx, name)
  if skip:
    return [skip]
  if not data.class_names:
    return [{"evaluator": name, "skipped": f"{data.name} has no class names to "
             "prompt with."}]
  templates = tuple(ctx.config.zeroshot.templates) or None
  from tandem.data import captions
  templates = templates or captions.TEMPLATES
  class_emb = zeroshot.class_embeddings(
      lambda t: ctx.embedder.texts(ctx.variables, t), data.class_names, templates)
  image_emb = data.features("test", IMAGE_TEXT_LAYER)
  return [{"evaluator": name, "metric": "test_top1", "layer": IMAGE_TEXT_LAYER,
           "value": zeroshot.zeroshot_top1(image_emb, class_emb, data.test.labels),
           "templates": len(templates),
           "protocol": "class-name prompts, embeddings averaged over templates"}]


EVALUATORS = {"linear_probe": _linear_probe, "fewshot": _fewshot, "knn": _knn,
              "finetune": _finetune, "zeroshot": _zeroshot}


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


def evaluate_task(data: protocol.TaskData, ctx: Context,
                  evaluators: list[str]) -> list[dict]:
  """The records of `evaluators` (names in EVALUATORS) on one task."""
  preprocessing = features_lib.preprocessing(ctx.model.config.input)
  return [_with_preprocessing({"task": data.name, "group": data.group, **record},
                              preprocessing)
          for name in evaluators for record in EVALUATORS[name](data, ctx)]


def _retrieval(ctx: Context) -> list[dict]:
  """Image↔text Recall@K: not a classification task, so a row of its own."""
  from tandem.transfer import retrieval
  block = ctx.config.retrieval
  task = f"{block.dataset}/{block.split}"
  skip = _not_image_text(ctx, "retrieval")
  if skip:
    return [{**skip, "task": task, "group": "image-text"}]
  # At the checkpoint's size, as the periodic evaluator: datasets such as
  # coco_captions hold images of many sizes, which cannot be stacked as stored.
  cfg = ctx.model.config.input
  images, captions, _ = input_pipeline.load_image_text(
      block.dataset, block.split, data_dir=ctx.data_dir, image_size=cfg.image_size,
      channels=cfg.channels, text_feature=block.text_feature or None)
  if block.max_examples and len(images) > block.max_examples:
    keep = np.sort(np.random.default_rng(ctx.config.seed).choice(
        len(images), block.max_examples, replace=False))
    images, captions = images[keep], [captions[i] for i in keep]
  texts = [c for caps in captions for c in caps]
  scores = retrieval.recall_at_k(ctx.embedder.images(ctx.variables, images),
                                 ctx.embedder.texts(ctx.variables, texts),
                                 captions, texts)
  preprocessing = features_lib.preprocessing(cfg)
  return [{"task": task, "group": "image-text", "evaluator": f"retrieval_{k}",
           "metric": k, "value": v, "layer": IMAGE_TEXT_LAYER,
           "preprocessing": preprocessing, "num_images": len(images),
           "num_captions": len(texts)} for k, v in scores.items()]


def _cap(images, labels, cap: int, seed: int):
  if cap and len(labels) > cap:
    keep = np.sort(np.random.default_rng(seed).choice(len(labels), cap, replace=False))
    return images[keep], labels[keep]
  return images, labels


def load_task(task: vtab.Task, ctx: Context) -> protocol.TaskData:
  """The task's train800 / val200 / test at the checkpoint's image size."""
  cfg = ctx.model.config.input

  def load(split):
    images, labels = vtab.load_split(task, split, data_dir=ctx.data_dir,
                                     image_size=cfg.image_size, channels=cfg.channels)
    # Tasks on the same data (dSprites location and orientation) share the image
    # array, so its features are extracted once for both.
    key = (task.dataset, task.splits[split])
    images = ctx.images.setdefault(key, images)
    if split == "test":
      images, labels = _cap(images, labels, ctx.config.max_test, ctx.config.seed)
      images = ctx.images.setdefault(key + ("cap",), images)
    return images, labels

  splits = {"train": protocol.Split("train", *load("train800")),
            "val": protocol.Split("val", *load("val200")),
            "test": protocol.Split("test", *load("test"))}

  def extract(images, layer):
    key = (id(images), layer)  # `ctx.images` keeps the arrays (and ids) alive.
    if key not in ctx.features:
      ctx.extractions += 1
      if layer == IMAGE_TEXT_LAYER:
        ctx.features[key] = ctx.embedder.images(ctx.variables, images)
      else:
        ctx.features[key] = features_lib.extract(
            ctx.model.encoder_variables, images, ctx.model.config, layer=layer,
            batch_size=ctx.config.batch_size)
    return ctx.features[key]

  return protocol.TaskData(task.name, task.num_classes, splits, extract,
                           class_names=vtab.class_names(task, ctx.data_dir),
                           group=task.group)


def run(config) -> dict:
  """Evaluates `config.checkpoint` on `config.tasks`; returns the results dict."""
  if not config.checkpoint:
    raise ValueError("Set --config.checkpoint=WORKDIR (a pretraining workdir).")
  tasks = vtab.get_tasks(config.tasks)
  evaluators = [e.strip() for e in config.evaluators.split(",") if e.strip()]
  unknown = [e for e in evaluators if e not in EVALUATORS and e != "retrieval"]
  if unknown:
    raise ValueError(f"Unknown evaluators {unknown}; available: "
                     f"{sorted(EVALUATORS) + ['retrieval']}.")
  data_dir = input_pipeline.resolve_data_dir(config.data_dir or None)
  model = pretrained.load(config.checkpoint, None if config.step < 0 else config.step)
  ctx = Context(config, model, data_dir)
  if hasattr(model.config, "text_model"):  # A two-tower (CLIP/SigLIP) checkpoint.
    ctx.embedder = features_lib.ImageTextEmbedder(model.config, config.batch_size)
  output_dir = config.output_dir or os.path.join(
      config.checkpoint, "transfer",
      f"{config.tasks.replace(',', '+')}_step{model.step}")
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
    task_start, extractions = time.time(), ctx.extractions
    data = load_task(task, ctx)
    records += evaluate_task(data, ctx, [e for e in evaluators if e != "retrieval"])
    print(f"{task.name}: {time.time() - task_start:.1f} s "
          f"({ctx.extractions - extractions} feature extractions)")
  if "retrieval" in evaluators:
    records += _retrieval(ctx)

  summary = summarise(records, tasks)
  results = {"checkpoint": os.path.abspath(config.checkpoint), "step": model.step,
             "objective": model.config.get("objective"),
             "model": model.config.get("model_name"), "layer": config.layer,
             "preprocessing": features_lib.preprocessing(model.config.input),
             "tasks": config.tasks, "seconds": round(time.time() - start, 1),
             "config": config.to_dict(), "records": records}
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=_json_default)
  with open(os.path.join(output_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  table = format_table(summary)
  print(table)
  with open(os.path.join(output_dir, "table.txt"), "w") as f:
    f.write(table + "\n")
  plot(summary, os.path.join(output_dir, "results.png"),
       title=f"{results['objective']} {results['model']} step {model.step}")
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


def summarise(records: list[dict], tasks: list[vtab.Task]) -> dict:
  """{"columns", "rows": {task: {evaluator: (mean, std, n)}}, "groups", "overall"}.

  A cell is the mean (± std) over the evaluator's seeds. Group means and the overall
  mean are unweighted means over tasks (VTAB's score); a mean that misses tasks
  says how many it has.
  """
  cells: dict[str, dict[str, list[float]]] = {}
  columns: list[str] = []
  groups = {t.name: t.group for t in tasks}
  for r in records:
    if "value" not in r:
      continue
    groups.setdefault(r["task"], r.get("group", ""))
    cells.setdefault(r["task"], {}).setdefault(r["evaluator"], []).append(r["value"])
    if r["evaluator"] not in columns:
      columns.append(r["evaluator"])
  rows = {task: {ev: [float(np.mean(v)), float(np.std(v)), len(v)]
                 for ev, v in evs.items()} for task, evs in cells.items()}
  skipped = [{"task": r["task"], "evaluator": r["evaluator"], "reason": r["skipped"]}
             for r in records if "skipped" in r]
  group_means, overall = {}, {}
  suite_tasks = [t.name for t in tasks]
  for ev in columns:
    for group in vtab.GROUPS:
      names = [t for t in suite_tasks if groups.get(t) == group]
      values = [rows[t][ev][0] for t in names if ev in rows.get(t, {})]
      if values:
        group_means.setdefault(group, {})[ev] = [float(np.mean(values)), len(values),
                                                 len(names)]
    values = [rows[t][ev][0] for t in suite_tasks if ev in rows.get(t, {})]
    if values:
      overall[ev] = [float(np.mean(values)), len(values), len(suite_tasks)]
  return {"columns": columns, "rows": rows, "groups": group_means,
          "overall": overall, "task_groups": groups, "skipped": skipped}


def format_table(summary: dict) -> str:
  columns = summary["columns"]
  width = max([len(c) for c in columns] + [11])
  names = list(summary["rows"]) + ["mean " + g for g in summary["groups"]] + ["mean"]
  first = max([len(n) for n in names] + [8]) + 2
  lines = ["".join([f"{'task':<{first}}"] + [f"{c:>{width + 2}}" for c in columns])]

  def cell(value, std=None, n=None, of=None):
    text = f"{100 * value:.2f}"
    if std is not None and n and n > 1:
      text += f"±{100 * std:.1f}"
    if of is not None and n != of:
      text += f" ({n}/{of})"
    return f"{text:>{width + 2}}"

  for task, evs in summary["rows"].items():
    lines.append("".join([f"{task:<{first}}"] + [
        cell(*evs[c]) if c in evs else f"{'-':>{width + 2}}" for c in columns]))
  for group, evs in summary["groups"].items():
    lines.append("".join([f"{'mean ' + group:<{first}}"] + [
        cell(evs[c][0], None, evs[c][1], evs[c][2]) if c in evs
        else f"{'-':>{width + 2}}" for c in columns]))
  if summary["overall"]:
    lines.append("".join([f"{'mean':<{first}}"] + [
        cell(summary["overall"][c][0], None, *summary["overall"][c][1:])
        if c in summary["overall"] else f"{'-':>{width + 2}}" for c in columns]))
  for skip in summary["skipped"]:
    lines.append(f"skipped {skip['task']} / {skip['evaluator']}: {skip['reason']}")
  return "\n".join(lines)


def plot(summary: dict, path: str, title: str = "") -> None:
  """Grouped bars: one group per task (and the means), one bar per evaluator."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  columns = summary["columns"]
  rows = {**{t: {c: v[0] for c, v in evs.items()} for t, evs in summary["rows"].items()},
          **{"mean " + g: {c: v[0] for c, v in evs.items()}
             for g, evs in summary["groups"].items()},
          **({"mean": {c: v[0] for c, v in summary["overall"].items()}}
             if summary["overall"] else {})}
  names = list(rows)
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) * max(1, len(columns)) / 3),
                                  4.5))
  width = 0.8 / max(1, len(columns))
  for i, c in enumerate(columns):
    xs = [j + (i - (len(columns) - 1) / 2) * width for j in range(len(names))]
    ax.bar(xs, [100 * rows[n].get(c, np.nan) for n in names], width, label=c)
  ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
  recall = any(c.startswith("retrieval") for c in columns)
  ax.set_ylabel("test top-1, Recall@K for retrieval (%)" if recall else "test top-1 (%)")
  ax.set_ylim(0, 100)
  ax.set_title(title)
  if columns:  # Every evaluator skipped: an empty chart, no legend.
    ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if FLAGS.config is None:
    sys.exit("Usage: python -m tandem.transfer.run --config "
             "configs/transfer/vtab.py[:ARG] --config.checkpoint=WORKDIR")
  try:
    run(FLAGS.config)
  except (checkpoint.CheckpointError, input_pipeline.DatasetNotPreparedError,
          protocol.NonFiniteFeaturesError, ValueError) as e:
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  # Defined here, not at import: tandem.ssl.train defines its own --config.
  config_flags.DEFINE_config_file("config", None, "Transfer config file[:arg].",
                                  lock_config=True)
  app.run(main, flags_parser=lambda argv: config_arg.parse_flags(FLAGS, argv))
