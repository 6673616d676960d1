"""bench/report.py: the `make bench` section of BENCHMARKS.md is written from the
run's JSON lines, replaced on the next run, and leaves the rest of the file alone."""
import importlib.util
import os

from conftest import ROOT

_spec = importlib.util.spec_from_file_location(
    "bench_report", os.path.join(ROOT, "bench", "report.py"))
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

PEER = {"model": "cnn", "config": "configs/ssl/barlow_twins.py:model=cnn",
        "batch": 64, "params": 3200480, "jax_pairs_per_s": 706.8,
        "torch_pairs_per_s": 674.1, "jax_step_ms": 90.5, "torch_step_ms": 94.9,
        "jax_compile_s": 3.3, "ratio": 1.05, "torch_threads": 2,
        "losses_vs_lightly": {"ours": {"barlow_twins": 2.820168},
                              "lightly": {"barlow_twins": 2.820168}}}
KNN = {"evaluator": "knn k=20 T=0.07", "tandem_first_s": 9.6, "tandem_s": 9.8,
       "sklearn_s": 22.7, "speedup": 2.32, "tandem_top1": 0.8422,
       "sklearn_top1": 0.8422, "agreement": 1.0}
FEWSHOT = {"evaluator": "few-shot ridge", "tandem_first_s": 1.1, "tandem_s": 0.99,
           "sklearn_s": 7.4, "speedup": 7.5, "same_l2": False}
PIPE = [{"dataset": "bench_jpeg", "image_size": 224, "threads": 2,
         "images_per_s": 439.0, "cpu_ms_per_image": 4.234,
         "images_per_s_per_core": 236.0},
        {"accelerator_rate": 3272.0, "cores_per_accelerator_224": 13.9}]


def _write(path, rows):  # As the benches write their results.
  report.append(str(path), "test", rows)


def test_the_section_is_written_then_replaced_and_the_rest_kept(tmp_path):
  results = tmp_path / "results"
  results.mkdir()
  _write(results / "peers.jsonl", [PEER])
  _write(results / "evaluators.jsonl", [KNN, FEWSHOT])
  out = tmp_path / "BENCHMARKS.md"
  out.write_text("# Benchmarks\n\nHand-written notes.\n")

  report.write(str(out), report.render(str(results), today="2026-12-01"))
  text = out.read_text()
  assert text.startswith("# Benchmarks\n\nHand-written notes.\n\n" + report.BEGIN)
  assert text.rstrip().endswith(report.END)
  assert "## `make bench`, 2026-12-01" in text and "Python 3." in text
  # The allocator each bench ran on (this test process: the system's or tcmalloc).
  allocator = "tcmalloc" if report._tcmalloc_loaded() else "system malloc"  # pylint: disable=protected-access
  assert f"Host allocator: {allocator} (tandem/host_malloc.py)." in text
  assert "| 706.8 pairs/s (90 ms/step, compile 3.3 s) | 674.1 pairs/s" in text
  assert "| 1.05x |" in text
  assert "this codebase / lightly: barlow_twins 2.820168 / 2.820168" in text
  assert "| 9.60 s / 9.80 s | 22.70 s | 2.3x | prediction agreement 1.0000" in text
  assert "**different chosen L2**" in text  # A mismatch is shown, not hidden.
  assert "No results: input_pipeline.jsonl is missing or empty." in text

  # The next run replaces the section only; text after it survives too.
  out.write_text(text + "\nAfter the section.\n")
  _write(results / "input_pipeline.jsonl", PIPE)
  report.write(str(out), report.render(str(results), today="2026-12-02"))
  text = out.read_text()
  assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
  assert "2026-12-01" not in text and "## `make bench`, 2026-12-02" in text
  assert "| bench_jpeg | 224 | 2 | 439 | 4.234 | 236 |" in text
  assert "needs 13.9 cores of this machine" in text
  assert text.startswith("# Benchmarks\n\nHand-written notes.\n")
  assert text.endswith(report.END + "\n\nAfter the section.\n")
