r"""One table of a sweep's runs: their overrides, final metrics and status.

    python -m tandem.launch.summary ROOT [--metric NAME] [--plot]

Reads ROOT/sweep.json (`tandem.launch.sweep`) and each run's workdir
(`tandem.launch.run_dir`; a workdir on a bucket from its copy in ROOT/NAME): results.json once finished, else the last
metrics.jsonl records; status.json for wall time and failures. One row per run,
failed runs included with their reason; columns are the overrides, then status,
steps, wall time, the final training loss and the evaluations' test metrics
(linear probe, few-shot means, k-NN, zero-shot, retrieval when present). Rows are
sorted by `--metric` (default: the linear probe's test top-1; descending, losses
ascending). Writes ROOT/summary.md, .csv, .json and, with --plot,
ROOT/summary_<metric>.png: the metric against each swept hyper-parameter.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys

import pandas as pd

from tandem.launch import run_dir

DEFAULT_METRICS = ("linear_probe/pre_logits/test_top1", "linear_probe")


def read_sweep(root: str) -> dict:
  sweep = run_dir.read_json(os.path.join(root, "sweep.json"))
  if sweep is None:
    raise FileNotFoundError(f"No sweep.json in {root}: run `python -m "
                            "tandem.launch.sweep ... --workdir ROOT` first.")
  return sweep


def is_headline(key: str) -> bool:
  """An evaluation's summary number: a test metric that is not one seed's or a
  spread (`fewshot_5shot/pre_logits/test_top1_mean` yes, `..._seed0` no)."""
  return "/test_" in key and not re.search(r"_seed\d+$|_std$", key)


def final_metrics(workdir: str) -> dict:
  """The run's last value of every metric: results.json's "final" when present,
  else the latest value of each key in metrics.jsonl."""
  results = run_dir.read_results(workdir)
  if results is not None and "final" in results:
    return dict(results["final"])
  latest = {}
  for record in run_dir.read_metrics(workdir):
    latest.update({k: v for k, v in record.items() if k != "step"})
  return latest


def run_status(workdir: str, logdir: str | None = None) -> tuple[str, str]:
  """(finished | failed | interrupted | incomplete, reason) from the run's files
  in `workdir` and the launcher's status.json in `logdir` (default: workdir)."""
  logdir = logdir or workdir
  status = run_dir.read_status(logdir)
  if run_dir.is_finished(workdir) or (
      workdir != logdir and (status or {}).get("status") == "finished"):
    return "finished", ""
  if status is not None and status.get("status") in ("failed", "interrupted"):
    return status["status"], status.get("reason", "")
  if not os.path.isdir(workdir):
    return "incomplete", "not started"
  return "incomplete", (f"running or stopped at step {run_dir.steps_reached(workdir)}"
                        " (no results.json yet)")


def run_row(run: dict) -> dict:
  """Overrides, status, the evaluations' test metrics, the final training loss,
  steps and wall time, then the reason (failed runs) and the run's name. A
  workdir on a bucket is read from the run's logdir, where `gcloud storage
  rsync` copies it (tandem.launch.sweep)."""
  logdir = run.get("logdir") or run["workdir"]
  workdir = logdir if "://" in run["workdir"] else run["workdir"]
  status, reason = run_status(workdir, logdir)
  metrics = final_metrics(workdir)
  row = {**run["overrides"], "status": status}
  row.update({k: v for k, v in sorted(metrics.items()) if is_headline(k)})
  row.update(loss=metrics.get("loss"), steps=run_dir.steps_reached(workdir),
             total_steps=run_dir.total_steps(workdir),
             wall_s=(run_dir.read_status(logdir) or {}).get("total_wall_s"),
             reason=reason, run=run["name"])
  return row


def choose_metric(frame: pd.DataFrame, metric: str | None) -> str | None:
  """The column `metric` names: itself, or the one column containing it; by
  default the linear probe's test top-1, else the first metric column."""
  metric_columns = [c for c in frame.columns if is_headline(c) or c == "loss"]
  if metric is None:
    for name in DEFAULT_METRICS:
      found = [c for c in metric_columns if name in c]
      if found:
        return found[0]
    return metric_columns[0] if metric_columns else None
  if metric in frame.columns:
    return metric
  found = [c for c in metric_columns if metric in c]
  if len(found) != 1:
    raise ValueError(f"--metric {metric!r} names {len(found)} columns "
                     f"({found}); metrics: {metric_columns}.")
  return found[0]


def descending(metric: str) -> bool:
  """Accuracies and recalls: higher is better; losses and errors: lower."""
  return not re.search(r"loss|error|mse", metric)


def summarise(root: str, metric: str | None = None) -> pd.DataFrame:
  """One row per run of the sweep in ROOT, sorted by `metric` (missing values,
  failed runs among them, last). `df.attrs["metric"]` is the chosen column."""
  sweep = read_sweep(root)
  frame = pd.DataFrame([run_row(run) for run in sweep["runs"]])
  chosen = choose_metric(frame, metric)
  if chosen is not None:
    frame = frame.sort_values(chosen, ascending=not descending(chosen),
                              na_position="last", kind="stable")
  frame = frame.reset_index(drop=True)
  frame.attrs["metric"] = chosen
  frame.attrs["swept"] = swept_keys(sweep)
  return frame


def swept_keys(sweep: dict) -> list[str]:
  """The override keys, in their first appearance's order."""
  keys = []
  for run in sweep["runs"]:
    keys += [k for k in run["overrides"] if k not in keys]
  return keys


def _cell(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame: pd.DataFrame) -> str:
  """A GitHub markdown table of `frame` (no dependency on `tabulate`)."""
  lines = ["| " + " | ".join(frame.columns) + " |",
           "|" + "---|" * len(frame.columns)]
  lines += ["| " + " | ".join(_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
  return "\n".join(lines) + "\n"


def plot(frame: pd.DataFrame, metric: str, path: str) -> None:
  """`metric` against each swept key, one panel per key (runs without the metric
  left out); log x-axis for positive numbers spanning 3x or more."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = frame.attrs.get("swept") or []
  if not keys:
    raise ValueError("The sweep has no overrides to plot against.")
  data = frame.dropna(subset=[metric])
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2),
                           squeeze=False, sharey=True)
  for ax, key in zip(axes[0], keys):
    values = pd.to_numeric(data[key], errors="coerce")
    if values.notna().all() and len(values):
      ax.scatter(values, data[metric])
      if (values > 0).all() and values.max() >= 3 * values.min():
        ax.set_xscale("log")  # Learning rates, weights: swept geometrically.
      ticks = sorted(values.unique())
      ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
      ax.minorticks_off()
    else:
      ax.scatter(data[key].astype(str), data[metric])
    ax.set_xlabel(key)
  axes[0][0].set_ylabel(metric)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_summary(root: str, frame: pd.DataFrame, *, with_plot: bool = False) -> list[str]:
  """ROOT/summary.md, .csv, .json (and the plot); returns the paths written."""
  paths = [os.path.join(root, f"summary.{ext}") for ext in ("md", "csv", "json")]
  with open(paths[0], "w") as f:
    f.write(to_markdown(frame))
  frame.to_csv(paths[1], index=False)
  with open(paths[2], "w") as f:
    json.dump(json.loads(frame.to_json(orient="records")), f, indent=2)
  metric = frame.attrs.get("metric")
  if with_plot:
    if metric is None:
      raise ValueError("No metric to plot: no run has recorded one yet.")
    paths.append(os.path.join(root, f"summary_{re.sub(r'[^A-Za-z0-9._-]', '_', metric)}.png"))
    plot(frame, metric, paths[-1])
  return paths


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if len(argv) != 2:
    sys.exit("Usage: python -m tandem.launch.summary ROOT [--metric NAME] [--plot]")
  root = argv[1]
  try:
    frame = summarise(root, FLAGS.metric)
    paths = write_summary(root, frame, with_plot=FLAGS.plot)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"Error: {e}")
  print(to_markdown(frame))
  print(f"Sorted by {frame.attrs['metric']}. Wrote " + ", ".join(paths))


def _run() -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("metric", None, "Column (or a unique part of one) to sort "
                      "and plot by; default: the linear probe's test top-1.")
  flags.DEFINE_bool("plot", False, "Also write ROOT/summary_<metric>.png.")
  app.run(main)


if __name__ == "__main__":
  _run()
