r"""Throughput of one pretraining step (augmentations + forward + backward + update).

    python bench/train_step.py --config configs/ssl/barlow_twins.py:dataset=fashion_mnist \
        [--config.input.batch_size=256] [--config.precision=bfloat16] [--steps 5] \
        [--max_batch] [--json FILE]

Prints images/s (one image = one pair of views, or one image-text pair), the step
time, compile time, the per-device memory and FLOPs that XLA's analyses give for the
compiled step (`tandem.train_state.resource_report`) and the model FLOPs
utilisation: XLA's FLOPs per step / step time / the devices' dense bf16 peak
(`--peak_tflops`, known for H100/H200 and TPU v4/v5e/v5p/v6e). On a CPU, try
XLA_FLAGS=--xla_force_host_platform_device_count=8.

`--max_batch` looks for the largest batch that fits before timing: it compiles the
step at the config's batch and at twice that, fits XLA's memory analysis
(argument + output + temporaries, per device) as a line in the batch, takes the
largest multiple of `--batch_multiple` under `--memory_fraction` of the device's
memory, and steps down until one compiles within it. Accelerators only: a CPU has no
memory limit to fit.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tandem import host_malloc  # pylint: disable=g-import-not-at-top
host_malloc.use_tcmalloc()  # As the training programs run (may re-execute).

from absl import app
from absl import flags
import jax
import numpy as np

from tandem import config_arg  # pylint: disable=g-import-not-at-top
from tandem import optimizers
from tandem import parallel
from tandem import train_state
from tandem.ssl import objectives
from tandem.ssl import train

# `--config` is defined while parsing, from the file it names (`config_arg`).
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after two untimed ones.")
_MAX_BATCH = flags.DEFINE_bool("max_batch", False,
                               "Time the largest batch that fits (see the docstring).")
_BATCH_MULTIPLE = flags.DEFINE_integer("batch_multiple", 128,
                                       "`--max_batch` picks a multiple of this.")
_MEMORY_FRACTION = flags.DEFINE_float("memory_fraction", 0.9,
                                      "`--max_batch` keeps the step under this "
                                      "fraction of the device's memory.")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", None,
                                  "Dense bf16 peak of one device, for the model FLOPs "
                                  "utilisation; default from the device kind.")
_JSON = flags.DEFINE_string("json", None, "Append the result as one JSON line here.")
_FLOPS_ONLY = flags.DEFINE_bool(
    "flops_only", False, "Only lower the step and print XLA's FLOPs per step for "
    "the config's batch (cost analysis of the not yet optimised step; no compile, "
    "no run). The count is the same on every backend: use it for a GPU, whose "
    "backend gives no FLOPs for that module (BENCHMARKS.md), as --flops.")
_FLOPS = flags.DEFINE_float("flops", None, "FLOPs per step for the utilisation, "
                            "where the backend's cost analysis gives none.")

# Dense (no sparsity) bf16 tensor-core peak per device, from the vendors' data
# sheets: NVIDIA H100 SXM / H200 SXM 989.5 TFLOP/s (1,979 "with sparsity");
# Google Cloud TPU v4 275, v5e 197, v5p 459, v6e 918.
_PEAKS = {"H200": 989.5, "H100": 989.5, "TPU v4": 275.0, "TPU v5 lite": 197.0,
          "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}


def _peak_tflops(device) -> float | None:
  if _PEAK_TFLOPS.value:
    return _PEAK_TFLOPS.value
  kind = device.device_kind
  return next((v for k, v in _PEAKS.items() if k.lower() in kind.lower()), None)


def _step_bytes(report) -> float:
  """Per-device bytes the compiled step holds at once, as XLA's analysis says:
  arguments + temporaries + the outputs that do not reuse a donated argument."""
  get = lambda k: report.get(f"step_{k}_mb_per_device", 0.0) * 2**20
  return get("argument") + get("temp") + max(get("output") - get("alias"), 0.0)


def _memory_limit(device) -> int | None:
  return (device.memory_stats() or {}).get("bytes_limit")


class Bench:
  """One config's model, state and jitted step; compiles for any batch size."""

  def __init__(self, config):
    self.config = config
    objective = objectives.get_objective(config.objective)
    self.mesh = parallel.make_mesh(config.mesh)
    model = objective.make_model(config)
    tx, lr = optimizers.make_optimizer(config)
    step_fn = train_state.make_step(objective.make_loss_fn(model, config), tx,
                                    lr_schedule=lr)
    self.params, self.state = train.make_init_fn(
        model, tx, config, objective.init_inputs(config))(
            jax.random.key(config.seed, impl="rbg"))
    self.step = jax.jit(step_fn, donate_argnums=(0, 1))

  def batch(self, size: int, abstract: bool):
    c = self.config.input
    shapes = {"image": ((size, c.image_size, c.image_size, c.channels), np.uint8)}
    if "text" in c:  # Random byte tokens at the text tower's length.
      shapes["text"] = ((size, c.text.max_len), np.int32)
    sharding = parallel.batch_sharding(self.mesh)
    if abstract:
      return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding)
              for k, (s, d) in shapes.items()}
    rng = np.random.default_rng(0)
    data = {k: rng.integers(3 if k == "text" else 0, 259 if k == "text" else 256, s,
                            dtype=d) for k, (s, d) in shapes.items()}
    return jax.device_put(data, sharding)

  def compile(self, size: int):
    """The compiled step for batch `size`, its resource report and compile seconds."""
    t0 = time.time()
    lowered = self.step.lower(self.params, self.state, self.batch(size, abstract=True))
    compiled = lowered.compile()
    report = train_state.resource_report(lowered, compiled, self.params, self.state)
    cost = compiled.cost_analysis()  # The optimised module's count, for comparison.
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and "flops" in cost:
      report["optimised_step_flops"] = float(cost["flops"])
    return compiled, report, time.time() - t0


def _largest_batch(bench: Bench, start: int) -> tuple[int, list[dict]]:
  """The largest multiple of --batch_multiple whose step fits (see the docstring)."""
  limit = _memory_limit(bench.mesh.devices.flat[0])
  if not limit:
    raise SystemExit("--max_batch needs a device that reports its memory limit "
                     "(a GPU or TPU); this one does not. Set the batch instead.")
  budget = _MEMORY_FRACTION.value * limit
  tried = []
  sizes = (start, 2 * start)
  used = []
  for size in sizes:
    _, report, seconds = bench.compile(size)
    used.append(_step_bytes(report))
    tried.append({"batch": size, "step_gib": used[-1] / 2**30, "compile_s": seconds})
  per_example = (used[1] - used[0]) / start
  fixed = used[0] - per_example * start
  multiple = _BATCH_MULTIPLE.value * bench.mesh.size
  size = int((budget - fixed) / per_example) // multiple * multiple
  while size > multiple:
    _, report, seconds = bench.compile(size)
    tried.append({"batch": size, "step_gib": _step_bytes(report) / 2**30,
                  "compile_s": seconds})
    if _step_bytes(report) <= budget:
      return size, tried
    size = int(size * 0.9) // multiple * multiple
  raise SystemExit(f"Not even a batch of {multiple} fits in "
                   f"{budget / 2**30:.1f} GiB; tried {tried}.")


def main(argv):
  del argv
  config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  if config is None:
    sys.exit("Usage: python bench/train_step.py --config FILE[:ARG] [--steps N]")
  bench = Bench(config)
  batch = config.input.batch_size
  if _FLOPS_ONLY.value:
    flops = train_state.step_flops(bench.step.lower(
        bench.params, bench.state, bench.batch(batch, abstract=True)))
    print(f"{config.objective} {config.model_name} {config.input.image_size}px "
          f"{config.get('precision', 'float32')} batch={batch}: "
          f"{flops:.6g} FLOPs/step (XLA cost analysis of the lowered step)")
    return
  tried = []
  if _MAX_BATCH.value:
    batch, tried = _largest_batch(bench, batch)
  compiled, report, compile_s = bench.compile(batch)
  compile_s = next((t["compile_s"] for t in tried if t["batch"] == batch), compile_s)
  data = bench.batch(batch, abstract=False)
  params, state = bench.params, bench.state
  for _ in range(2):  # Warm-up: the first steps also move the donated buffers.
    params, state, metrics = compiled(params, state, data)
  jax.block_until_ready(metrics)
  t0 = time.time()
  for _ in range(_STEPS.value):
    params, state, metrics = compiled(params, state, data)
  jax.block_until_ready(metrics)
  per_step = (time.time() - t0) / _STEPS.value
  device = bench.mesh.devices.flat[0]
  peak = _peak_tflops(device)
  result = {
      "objective": config.objective, "model": config.model_name,
      "image_size": config.input.image_size, "precision": config.get("precision"),
      "batch": batch, "devices": bench.mesh.size, "device_kind": device.device_kind,
      "images_per_s": batch / per_step, "step_ms": per_step * 1000,
      "compile_s": compile_s, "loss": float(metrics["loss"]),
      "resources": report, "batch_search": tried}
  flops = _FLOPS.value or report.get("step_flops")
  if peak and flops:
    # cost_analysis counts the whole step's FLOPs (all devices' shares).
    result["step_flops"] = flops
    result["peak_tflops_per_device"] = peak
    result["achieved_tflops"] = flops / per_step / 1e12
    result["mfu"] = result["achieved_tflops"] / (peak * bench.mesh.size)
  print(f"{config.objective} {config.model_name} {config.input.image_size}px "
        f"{config.get('precision', 'float32')} batch={batch} on {bench.mesh.size} x "
        f"{device.device_kind}: {result['images_per_s']:.0f} images/s "
        f"({result['step_ms']:.1f} ms/step), compile {compile_s:.1f} s")
  print("  " + train_state.format_report(report))
  if "mfu" in result:
    print(f"  {result['achieved_tflops']:.1f} TFLOP/s = {100 * result['mfu']:.1f}% "
          f"of {peak:.1f} TFLOP/s dense bf16 peak per device (model FLOPs from XLA's "
          "cost analysis)")
  if _JSON.value:
    with open(_JSON.value, "a") as f:
      f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: config_arg.parse_flags(flags.FLAGS, argv))
