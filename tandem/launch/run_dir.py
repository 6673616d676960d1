"""What a run's workdir says about it, read from the files the training program
writes there (`tandem.ssl.train`) and the one the sweep launcher writes.

    config.json    the resolved config, written by train at its start
    metrics.jsonl  one record per logged step and per evaluation ({"step", ...})
    results.json   {"final": {...metrics...}, "step": N, "final_evaluation":
                   "done"}, written once training and the final evaluation are
                   done; with "pending" or "interrupted" (and the training
                   metrics) when the final evaluation did not finish
    status.json    the launcher's record of the last attempt (exit status, wall
                   time, the last lines of its log when it failed)
    train.log      the run's stdout and stderr (local launcher)

A run is finished when results.json records a step >= the config's total_steps
and a final evaluation that is done: a run killed before that is resumed (or
evaluated again) by running the same command.
"""
from __future__ import annotations

import json
import os

STATUS_FILE = "status.json"
LOG_FILE = "train.log"


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None when it is missing or cut short."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except json.JSONDecodeError:
    return None  # A file being written, or left half-written by a killed run.


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, in order (a cut-short last line is
  skipped)."""
  records = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  except FileNotFoundError:
    pass
  return records


def read_results(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, "results.json"))


def read_status(workdir: str) -> dict | None:
  return read_json(os.path.join(workdir, STATUS_FILE))


def write_status(workdir: str, status: dict) -> None:
  """Writes WORKDIR/status.json whole (a temporary file, then a rename)."""
  path = os.path.join(workdir, STATUS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(status, f, indent=2)
  os.replace(path + ".tmp", path)


def total_steps(workdir: str) -> int | None:
  """`total_steps` of the run's resolved config (None before train wrote it)."""
  config = read_json(os.path.join(workdir, "config.json"))
  return None if config is None else config.get("total_steps")


def steps_reached(workdir: str) -> int | None:
  """The last step the run recorded: results.json's, else metrics.jsonl's."""
  results = read_results(workdir)
  if results is not None and "step" in results:
    return int(results["step"])
  steps = [r["step"] for r in read_metrics(workdir) if "step" in r]
  return max(steps) if steps else None


def is_finished(workdir: str) -> bool:
  """Whether results.json records the config's total_steps and a final
  evaluation that is done."""
  results, total = read_results(workdir), total_steps(workdir)
  return (results is not None and total is not None
          and int(results.get("step", -1)) >= int(total)
          and results.get("final_evaluation", "done") == "done")


def log_tail(path: str, lines: int = 20, offset: int = 0) -> list[str]:
  """The last `lines` lines of the text file `path` from byte `offset` on."""
  try:
    with open(path, "rb") as f:
      f.seek(offset)
      text = f.read().decode("utf-8", errors="replace")
  except FileNotFoundError:
    return []
  # Progress lines redrawn with "\r" on a terminal: keep the last drawing.
  rows = [row.rsplit("\r", 1)[-1].rstrip() for row in text.splitlines()]
  return [row for row in rows if row][-lines:]


def failure_reason(tail: list[str]) -> str:
  """The error line of a failed run's log: the last line starting with "Error"
  (every error of the training program ends with one), else the last line."""
  for line in reversed(tail):
    if line.startswith("Error") or "Error:" in line:
      return line.strip()
  return tail[-1].strip() if tail else "no output"
