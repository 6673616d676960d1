"""Writes the last `make bench` run's results into BENCHMARKS.md.

    python bench/report.py [--results bench/results] [--out BENCHMARKS.md]

Reads the JSON lines that `make bench` wrote (bench/results/peers.jsonl,
evaluators.jsonl, input_pipeline.jsonl; `make bench` empties the folder first, so
they hold one run) and replaces the section between the markers
`<!-- make bench: begin -->` and `<!-- make bench: end -->` in BENCHMARKS.md (added
at the end when missing) with its tables, the date, the machine, the package
versions and the command. Everything else in the file is left as it is. A missing
results file is reported in the section, not skipped silently.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform

BEGIN = "<!-- make bench: begin -->"
END = "<!-- make bench: end -->"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn", "pillow",
            "torch", "torchvision", "lightly")


def append(path: str | None, bench: str, records: list[dict]) -> None:
  """Appends `records` to the JSON-lines file `path` (nothing when None), each
  tagged with the bench that made it and the host allocator it ran on: what the
  benches write and `render` reads."""
  if path:
    allocator = "tcmalloc" if _tcmalloc_loaded() else "system malloc"
    with open(path, "a") as f:
      for record in records:
        f.write(json.dumps({"bench": bench, "allocator": allocator, **record}) + "\n")


def _tcmalloc_loaded() -> bool:
  from tandem import host_malloc  # pylint: disable=g-import-not-at-top
  return host_malloc.tcmalloc_loaded()


def _read(path: str) -> list[dict] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
  return f"{model}, {os.cpu_count()} CPUs, {memory:.0f} GiB"


def versions() -> str:
  found = []
  for name in PACKAGES:
    try:
      found.append(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
      pass
  return f"Python {platform.python_version()}, " + ", ".join(found)


def peers_table(rows: list[dict]) -> list[str]:
  lines = ["| model | params | batch | this codebase | PyTorch | ratio |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['model']} (`{r['config']}`) | {r['params']:,} | {r['batch']} | "
        f"{r['jax_pairs_per_s']:.1f} pairs/s ({r['jax_step_ms']:.0f} ms/step, "
        f"compile {r['jax_compile_s']:.1f} s) | {r['torch_pairs_per_s']:.1f} pairs/s "
        f"({r['torch_step_ms']:.0f} ms/step, {r['torch_threads']} threads) | "
        f"{r['ratio']:.2f}x |")
  losses = rows[0].get("losses_vs_lightly") if rows else None
  if losses:
    pairs = ", ".join(f"{name} {value:.7g} / {losses['lightly'][name]:.7g}"
                      for name, value in losses["ours"].items())
    lines += ["", f"Losses on fixed embeddings, this codebase / lightly: {pairs} "
                  "(checked equal to 1e-5 before timing)."]
  return lines


def evaluators_table(rows: list[dict]) -> list[str]:
  lines = ["| evaluator | this codebase (first / repeat) | scikit-learn | ratio | "
           "same result |", "|---|---|---|---|---|"]
  for r in rows:
    if "sklearn_s" not in r:  # Feature extraction: no scikit-learn side.
      continue
    if "agreement" in r:
      same = (f"prediction agreement {r['agreement']:.4f}; top-1 "
              f"{r['tandem_top1']:.4f} / {r['sklearn_top1']:.4f}")
    else:
      same = "same chosen L2" if r.get("same_l2") else "**different chosen L2**"
    lines.append(f"| {r['evaluator']} | {r['tandem_first_s']:.2f} s / "
                 f"{r['tandem_s']:.2f} s | {r['sklearn_s']:.2f} s | "
                 f"{r['speedup']:.1f}x | {same} |")
  for r in rows:
    if "images_per_s" in r:
      lines += ["", f"{r['evaluator']}: {r['images_per_s']:,.0f} images/s "
                    f"({r['images']:,} images, first call {r['first_s']:.2f} s)."]
  return lines


def input_pipeline_table(rows: list[dict]) -> list[str]:
  lines = ["| dataset | size | reader threads | images/s | CPU ms / image | "
           "images/s per busy core |", "|---|---|---|---|---|---|"]
  for r in rows:
    if "dataset" in r:
      lines.append(f"| {r['dataset']} | {r['image_size']} | {r['threads']} | "
                   f"{r['images_per_s']:,.0f} | {r['cpu_ms_per_image']:.3f} | "
                   f"{r['images_per_s_per_core']:,.0f} |")
  for r in rows:
    if "cores_per_accelerator_224" in r:
      lines += ["", f"One accelerator at {r['accelerator_rate']:,.0f} images/s "
                    "(`--accelerator_rate`; the default is MAE ViT-B/16 on one H200), "
                    "fed 224-pixel images from JPEG, needs "
                    f"{r['cores_per_accelerator_224']:.1f} cores of this machine."]
  return lines


SECTIONS = (("This codebase next to PyTorch (bench/peers.py)", "peers.jsonl",
             peers_table),
            ("The evaluators next to scikit-learn (bench/evaluators.py)",
             "evaluators.jsonl", evaluators_table),
            ("The host input pipeline (bench/input_pipeline.py)",
             "input_pipeline.jsonl", input_pipeline_table))


def render(results_dir: str, today: str | None = None) -> str:
  today = today or datetime.date.today().isoformat()
  tables, allocators = [], set()
  for title, name, table in SECTIONS:
    rows = _read(os.path.join(results_dir, name))
    allocators.update(r.get("allocator", "not recorded") for r in rows or [])
    tables += [f"### {title}", ""]
    tables += table(rows) if rows else [f"No results: {name} is missing or empty."]
    tables.append("")
  allocator = (f" Host allocator: {', '.join(sorted(allocators))} "
               "(tandem/host_malloc.py)." if allocators else "")
  out = [BEGIN, f"## `make bench`, {today} (written by bench/report.py)", "",
         f"Machine: {machine()}. {versions()}.{allocator} Command: `make bench`; "
         f"JSON lines in {results_dir}/.", "", *tables, END]
  return "\n".join(out) + "\n"


def write(path: str, section: str) -> None:
  text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
  if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1].lstrip("\n")
    text = head + section + ("\n" + tail if tail else "")
  else:
    text = text.rstrip("\n") + "\n\n" + section
  with open(path, "w") as f:
    f.write(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", default="bench/results")
  parser.add_argument("--out", default="BENCHMARKS.md")
  args = parser.parse_args()
  write(args.out, render(args.results))
  print(f"Wrote the `make bench` section of {args.out}.")


if __name__ == "__main__":
  main()
