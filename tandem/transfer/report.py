"""Reporting of evaluation records: metrics for training logs, the suite's table,
JSON-ready summary and bar chart, and the pretraining run's closing summary.

Records are what evaluators return (`tandem/transfer/protocol.py`): {"evaluator",
"metric", "value", ...} or {"evaluator", "skipped"}.
"""
from __future__ import annotations

import numpy as np

GROUPS = ("natural", "specialized", "structured")  # VTAB's task groups.
# Record fields logged next to the value in training (the choices a sweep made).
LOGGED_FIELDS = ("val_top1", "l2", "lr_per_512")


def metrics(records: list[dict]) -> dict[str, float]:
  """Scalars named `evaluator[/layer]/metric` (and `.../val_top1`, `.../l2`, ...);
  records with a `seed` give `..._seed{s}` and the `_mean` and `_std` (ddof 0) over
  seeds. An evaluator named after its metric (`retrieval_i2t_recall@1`, metric
  `i2t_recall@1`) logs under the part before it (`retrieval/LAYER/i2t_recall@1`).
  Skipped records give nothing."""
  out, seeded = {}, {}
  for r in records:
    if "value" not in r:
      continue
    evaluator = r["evaluator"].removesuffix("_" + r["metric"])
    base = "/".join([evaluator] + ([r["layer"]] if "layer" in r else []))
    name = f"{base}/{r['metric']}"
    if "seed" in r:
      out[f"{name}_seed{r['seed']}"] = float(r["value"])
      seeded.setdefault(name, []).append(float(r["value"]))
      continue
    out[name] = float(r["value"])
    out.update({f"{base}/{k}": float(r[k]) for k in LOGGED_FIELDS if k in r})
  for name, values in seeded.items():
    out[f"{name}_mean"], out[f"{name}_std"] = (float(np.mean(values)),
                                               float(np.std(values)))
  return out


def print_pretraining_summary(results: dict, config) -> None:
  """The final evaluation of a pretraining run, the linear probe next to its
  baselines (`results` as `tandem.ssl.train.train` returns it)."""
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


def summarise(records: list[dict], task_groups: dict[str, str]) -> dict:
  """{"columns", "rows": {task: {evaluator: (mean, std, n)}}, "groups", "overall"}.

  `task_groups`: {task: group} of the suite's tasks, in order. A cell is the mean (± std) over the evaluator's seeds. Group means and the overall
  mean are unweighted means over tasks (VTAB's score); a mean that misses tasks
  says how many it has.
  """
  cells: dict[str, dict[str, list[float]]] = {}
  columns: list[str] = []
  groups = dict(task_groups)
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
  suite_tasks = list(task_groups)
  for ev in columns:
    for group in GROUPS:
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
