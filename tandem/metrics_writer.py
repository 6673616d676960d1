"""Metrics to JSONL and TensorBoard event files (images also as PNG files), and a
one-line progress display.

TensorBoard events are written with tensorboardX (protobuf only, no TensorFlow).
Only process 0 writes.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

import jax
import numpy as np

from tandem.data import png


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported lazily (a slow import) and without
  PyTorch: tensorboardX imports torch at module level when it is installed, only
  for a type hint, which costs ~3 s in every training process. Where torch is not
  imported yet it is hidden for that one import (tensorboardX still imports it
  itself, inside the functions that take torch tensors)."""
  if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile.
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricsWriter:
  """Appends to WORKDIR/metrics.jsonl and TensorBoard event files.

  `resumed_step`: the step a run starts from (its checkpoint's, or 0 when it starts
  from scratch in a workdir an earlier attempt logged into before its first save).
  What was logged after it (steps this run logs again) is dropped: JSON lines with
  a larger step and a line torn by a crash (not valid JSON) are removed, by
  rewriting the file atomically, and TensorBoard hides its events from that step on
  (tensorboardX's `purge_step`). Step-0 rows (the cached baselines) stay.
  """

  def __init__(self, workdir: str, resumed_step: int | None = None):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._workdir = workdir
    path = os.path.join(workdir, "metrics.jsonl")
    if resumed_step is not None:
      truncate_jsonl(path, resumed_step)
    self._path = path
    # Unbuffered, O_APPEND: each row goes down in one write (a crash tears at most
    # the last line, which the next resume drops), and a failed write raises here,
    # naming the file, instead of again at close.
    self._jsonl = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    self._tb = _summary_writer_class()(
        os.path.join(workdir, "tensorboard"),
        purge_step=None if resumed_step is None else resumed_step + 1)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    line = (json.dumps({"step": int(step), **values}) + "\n").encode()
    try:
      while line:  # A short write (a disk filling up) is retried: it then raises.
        line = line[os.write(self._jsonl, line):]
    except OSError as e:
      raise OSError(e.errno, e.strerror, self._path) from e
    try:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))
      self._tb.flush()
    except OSError as e:
      raise OSError(e.errno, e.strerror, os.path.join(self._workdir, "tensorboard")) \
          from e

  def write_images(self, step: int, name: str, image) -> None:
    """One uint8 image [H, W, C] (e.g. a grid) to TensorBoard and to
    WORKDIR/images/<name>/<step>.png (`/` in the name becomes `_`)."""
    if not self.enabled:
      return
    image = np.asarray(image)
    if image.ndim != 3 or image.dtype != np.uint8:
      raise ValueError(f"Expected a uint8 image [H, W, C], got {image.dtype} "
                       f"{image.shape} for {name!r}.")
    self._tb.add_image(name, image, int(step), dataformats="HWC")
    self._tb.flush()
    folder = os.path.join(self._workdir, "images", name.replace("/", "_"))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{int(step):08d}.png"), "wb") as f:
      f.write(png.encode_png(image))

  def close(self) -> None:
    if self.enabled:
      os.close(self._jsonl)
      try:
        self._tb.close()
      except OSError as e:  # Events it could not flush (a full disk): said already.
        logging.warning("TensorBoard events in %s not flushed: %s", self._workdir, e)


def read_row(workdir: str, step: int, key: str) -> dict:
  """The last row of WORKDIR/metrics.jsonl at `step` that has `key` (e.g. the
  training row, with "loss"), without its step; {} if there is none."""
  row = {}
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(record, dict) and record.get("step") == step and key in record:
          row = {k: v for k, v in record.items() if k != "step"}
  except FileNotFoundError:
    pass
  return row


def truncate_jsonl(path: str, last_step: int) -> int:
  """Keeps the rows of the JSON-lines file `path` up to `last_step`, dropping later
  ones and lines that are not valid JSON (torn by a crash); returns how many were
  dropped. The file is replaced atomically: a crash here leaves the old or the new."""
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
        keep = line.endswith("\n") and int(row["step"]) <= last_step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(line)
      else:
        dropped += 1
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  return dropped


def _fmt_seconds(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
  """Step, loss, images/s and ETA; redraws one line on a terminal, prints lines elsewhere."""

  def __init__(self, total_steps: int, batch_size: int, first_step: int = 0):
    self.total, self.batch = total_steps, batch_size
    self.tty = sys.stdout.isatty()
    self._t, self._step = time.time(), first_step
    self.enabled = jax.process_index() == 0

  def update(self, step: int, loss: float) -> float:
    """Prints progress; returns images/s since the last call."""
    now = time.time()
    rate = (step - self._step) * self.batch / max(now - self._t, 1e-9)
    eta = (self.total - step) * self.batch / max(rate, 1e-9)
    self._t, self._step = now, step
    if self.enabled:
      line = (f"step {step}/{self.total} | loss {loss:.4f} | {rate:.0f} img/s | "
              f"eta {_fmt_seconds(eta)}")
      print("\r" + line + " " * 8 if self.tty else line, end="" if self.tty else "\n",
            flush=True)
    return rate

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (e.g. an evaluation) out of the next images/s reading."""
    self._t += seconds

  def message(self, text: str) -> None:
    if self.enabled:
      print(("\n" if self.tty else "") + text, flush=True)
