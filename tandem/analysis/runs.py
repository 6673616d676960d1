"""A run's checkpoints and logs, for notebooks.

    steps("/tmp/bt")                       # [500, 1000, ...]: complete checkpoints
    for model in load_steps("/tmp/bt"):    # tandem.pretrained.Pretrained per step
      ...
    models = load_runs(["/tmp/bt", "/tmp/mae"])   # {workdir: latest checkpoint}
    log = read_metrics("/tmp/bt")
    log.train      # DataFrame: one row per logged step (loss, lr, images_per_sec...)
    log.evals      # DataFrame: one row per evaluation number, long format:
                   #   step, metric, evaluator, layer, name, value, baseline

`metrics.jsonl` (written by training) holds training records (they have a
"loss") and evaluation records (every key `evaluator/layer/name`) in one file.
Evaluations at step 0 are the baselines (`linear_probe.baselines`,
tandem/transfer/periodic.py): the probe of the random-init encoder (its usual
layer) and of raw pixels (layer `raw_pixels`); they are labelled `baseline`.
Only the last
`checkpoint.keep` checkpoints of a run are kept unless `checkpoint.keep_every`
asked for a trajectory (configs/common.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator, Sequence

import pandas as pd

from tandem import checkpoint
from tandem import pretrained

def steps(workdir: str) -> list[int]:
  """The steps of the run's complete checkpoints, ascending."""
  return checkpoint.all_steps(workdir)


load = pretrained.load  # One checkpoint (default: the latest), as `tandem.load`.


def load_steps(workdir: str, which: Sequence[int] | None = None,
               sharding=None) -> Iterator[pretrained.Pretrained]:
  """The checkpoints of `which` steps (default: all kept), one at a time, so that
  a long trajectory never sits in memory at once."""
  for step in (steps(workdir) if which is None else which):
    yield pretrained.load(workdir, step, sharding=sharding)


def load_runs(workdirs: Sequence[str], sharding=None) -> dict[str, pretrained.Pretrained]:
  """{workdir: its latest checkpoint} for several runs."""
  return {w: pretrained.load(w, None, sharding=sharding) for w in workdirs}


@dataclasses.dataclass
class Metrics:
  train: pd.DataFrame
  evals: pd.DataFrame

  def eval_table(self, include_baselines: bool = False) -> pd.DataFrame:
    """Evaluations wide: one row per step, one column per metric."""
    evals = self.evals if include_baselines else self.evals[~self.evals.baseline]
    if evals.empty:
      return pd.DataFrame()
    return evals.pivot_table(index="step", columns="metric", values="value",
                             aggfunc="last")


def _split_name(metric: str) -> tuple[str, str, str]:
  parts = metric.split("/")
  if len(parts) >= 3:
    return parts[0], parts[1], "/".join(parts[2:])
  if len(parts) == 2:
    return parts[0], "", parts[1]
  return "", "", metric


def read_metrics(workdir: str) -> Metrics:
  """The run's metrics.jsonl as a training table and an evaluation table
  (see the module docstring). A cut-short last line (a run being written) is
  skipped; a missing file is an error that says where it looked."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"No metrics.jsonl in {workdir!r}: not a training "
                            "workdir, or the run has not logged a step yet.")
  train, evals = [], []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      step = record.pop("step", None)
      if "loss" in record:
        train.append({"step": step, **record})
        continue
      for metric, value in record.items():
        evaluator, layer, name = _split_name(metric)
        evals.append({"step": step, "metric": metric, "evaluator": evaluator,
                      "layer": layer, "name": name, "value": value,
                      "baseline": step == 0})
  columns = ["step", "metric", "evaluator", "layer", "name", "value", "baseline"]
  train_frame = pd.DataFrame(train)
  if not train_frame.empty:  # A resumed run logs its last steps again.
    train_frame = train_frame.drop_duplicates("step", keep="last").reset_index(
        drop=True)
  return Metrics(train=train_frame, evals=pd.DataFrame(evals, columns=columns))
