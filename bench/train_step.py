r"""Throughput of one pretraining step (augmentations + forward + backward + update).

    python bench/train_step.py --config configs/ssl/barlow_twins.py:dataset=fashion_mnist \
        [--config.input.batch_size=256] [--steps 5]

Prints images/s (one image = one pair of views, or one image-text pair) and compile
time, on whatever devices JAX sees (try XLA_FLAGS=--xla_force_host_platform_device_count=8 on a CPU).
"""
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tandem import config_arg  # pylint: disable=g-import-not-at-top
from tandem import optimizers
from tandem import parallel
from tandem import train_state
from tandem.ssl import objectives
from tandem.ssl import train

# `--config` is defined while parsing, from the file it names (`config_arg`).
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after the compiled one.")


def main(argv):
  del argv
  config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  if config is None:
    sys.exit("Usage: python bench/train_step.py --config FILE[:ARG] [--steps N]")
  objective = objectives.get_objective(config.objective)
  mesh = parallel.make_mesh(config.mesh)
  model = objective.make_model(config)
  tx, lr = optimizers.make_optimizer(config)
  step_fn = train_state.make_step(objective.make_loss_fn(model, config), tx,
                                  lr_schedule=lr)
  size, ch, batch = config.input.image_size, config.input.channels, config.input.batch_size
  init_inputs = objective.init_inputs(config)
  params, state = train.make_init_fn(model, tx, config, init_inputs)(
      jax.random.key(config.seed, impl="rbg"))
  rng = np.random.default_rng(0)
  data = {"image": rng.integers(0, 256, (batch, size, size, ch), np.uint8)}
  if "text" in config.input:  # Random byte tokens at the text tower's length.
    data["text"] = rng.integers(3, 259, (batch, config.input.text.max_len), np.int32)
  batch_data = jax.device_put(data, parallel.batch_sharding(mesh))
  step = jax.jit(step_fn, donate_argnums=(0, 1))
  t0 = time.time()
  params, state, metrics = step(params, state, batch_data)
  jax.block_until_ready(metrics)
  compile_s = time.time() - t0
  params, state, metrics = step(params, state, batch_data)  # Committed inputs now.
  jax.block_until_ready(metrics)
  t0 = time.time()
  for _ in range(_STEPS.value):
    params, state, metrics = step(params, state, batch_data)
  jax.block_until_ready(metrics)
  per_step = (time.time() - t0) / _STEPS.value
  n_params = sum(np.size(p) for p in jax.tree.leaves(params))
  print(f"{config.objective} {config.model_name} {dict(config.model)} "
        f"params={n_params:,} batch={batch} devices={mesh.size}: "
        f"{batch / per_step:.0f} images/s ({per_step * 1000:.0f} ms/step), "
        f"first step incl. compile {compile_s:.1f} s, load avg {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: config_arg.parse_flags(flags.FLAGS, argv))
