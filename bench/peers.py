r"""This codebase next to PyTorch: one Barlow Twins training step, side by side.

    python bench/peers.py [--models cnn,resnet18] [--batch 64] [--steps 10] \
        [--threads 2] [--json FILE]

For each model the same network (the config's backbone and Barlow Twins projector,
parameter counts checked equal), the same loss (λ = 0.0051), AdamW (the config's
learning rate and weight decay), batch and pre-made views (random normalised
images: the augmentations are left out on both sides) are timed in JAX (this
codebase: `tandem.ssl.siamese.encode` + `barlow_twins_loss`, jitted, one device)
and then in PyTorch (eager, float32, NCHW, `torch.set_num_threads(--threads)`), in
this one process. Each side runs 2 untimed steps, then the mean of `--steps`.
Models:
  cnn       the demo CNN, `configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn`
            (28x28x1; two strided 3x3 convs, flatten, dense 512)
  resnet18  ResNet-18 with the CIFAR stem,
            `configs/ssl/barlow_twins.py:dataset=cifar10_subset,model=resnet18`
            (32x32x3), against torchvision's resnet18 with the same stem

First it checks, on fixed embeddings, that lightly's `BarlowTwinsLoss` and
`NTXentLoss` (what lightly and solo-learn users train with) give this codebase's
Barlow Twins and NT-Xent losses to 1e-5, and stops if not.

Needs the `bench` extra: `pip install -e .[cpu,bench]` (torch, torchvision, lightly).
"""
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tandem import host_malloc  # pylint: disable=g-import-not-at-top
host_malloc.use_tcmalloc()  # As the training programs run (may re-execute).

from absl import app
from absl import flags
import jax
import numpy as np
import optax

from tandem import config_arg  # pylint: disable=g-import-not-at-top
from tandem import parallel
from tandem.ssl import barlow_twins
from tandem.ssl import siamese
from tandem.ssl import simclr

import report  # pylint: disable=g-import-not-at-top  (bench/report.py)

_MODELS = flags.DEFINE_list("models", ["cnn", "resnet18"], "Models to time.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images (pairs of views) per step.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after two untimed ones.")
_THREADS = flags.DEFINE_integer("threads", 2, "PyTorch's intra-op threads.")
_JSON = flags.DEFINE_string("json", None, "Append each result as a JSON line here.")
_JAX_ONLY = flags.DEFINE_bool("jax_only", False, "Time only this codebase's side "
                              "(to try XLA_FLAGS); no ratio, nothing appended.")

CONFIGS = {
    "cnn": "configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn",
    "resnet18": "configs/ssl/barlow_twins.py:dataset=cifar10_subset,model=resnet18",
}
LAMBD = 0.0051


# --- Losses: lightly against this codebase ----------------------------------------

def check_losses_against_lightly(n=64, d=128, temperature=0.1, tol=1e-5) -> dict:
  """Barlow Twins and NT-Xent of both libraries on the same fixed embeddings;
  raises if they differ by more than `tol` (relative)."""
  import torch  # pylint: disable=g-import-not-at-top
  from lightly import loss as lightly_loss  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(n, d)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
  t1, t2 = torch.from_numpy(z1), torch.from_numpy(z2)
  ours = {
      "barlow_twins": float(barlow_twins.barlow_twins_loss(z1, z2, lambd=LAMBD)[0]),
      "nt_xent": float(simclr.nt_xent_loss(z1, z2, temperature)[0]),
  }
  theirs = {
      "barlow_twins": float(lightly_loss.BarlowTwinsLoss(
          lambda_param=LAMBD, gather_distributed=False)(t1, t2)),
      "nt_xent": float(lightly_loss.NTXentLoss(temperature=temperature)(t1, t2)),
  }
  for name in ours:
    if abs(ours[name] - theirs[name]) > tol * abs(theirs[name]):
      raise AssertionError(f"{name}: this codebase {ours[name]!r}, lightly "
                           f"{theirs[name]!r}: they differ by more than {tol:g}.")
  return {"ours": ours, "lightly": theirs}


# --- JAX (this codebase) -----------------------------------------------------------

def jax_side(config, views, steps):
  model = siamese.make_model(config, config.barlow_twins.projector_dims)
  variables = jax.jit(lambda k: model.init(k, views[0][:2], train=False))(
      jax.random.key(0))
  params = variables.pop("params")
  state = dict(variables)
  opt = config.optimizer
  tx = optax.adamw(opt.lr_per_256 * views[0].shape[0] / 256, b1=opt.b1, b2=opt.b2,
                   weight_decay=opt.weight_decay)
  opt_state = tx.init(params)

  def loss_fn(params, state, v1, v2):
    (z1, z2), state = siamese.encode(model, params, state, (v1, v2))
    return barlow_twins.barlow_twins_loss(z1, z2, lambd=LAMBD)[0], state

  @jax.jit
  def step(params, state, opt_state, v1, v2):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, state, v1, v2)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), state, opt_state, loss

  # Data parallel over every device (one unless XLA_FLAGS asks for more host
  # devices): the views split over them, the parameters replicated.
  mesh = parallel.make_mesh({"data": jax.device_count()})
  params, state, opt_state = jax.device_put((params, state, opt_state),
                                            parallel.replicated(mesh))
  v1, v2 = jax.device_put(tuple(views), parallel.batch_sharding(mesh))
  t0 = time.perf_counter()
  compiled = step.lower(params, state, opt_state, v1, v2).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(2):
    params, state, opt_state, loss = compiled(params, state, opt_state, v1, v2)
  jax.block_until_ready(loss)
  t0 = time.perf_counter()
  for _ in range(steps):
    params, state, opt_state, loss = compiled(params, state, opt_state, v1, v2)
  jax.block_until_ready(loss)
  seconds = (time.perf_counter() - t0) / steps
  count = sum(np.size(x) for x in jax.tree.leaves(params))
  return {"step_s": seconds, "compile_s": compile_s, "params": int(count),
          "loss": float(loss)}


# --- PyTorch ------------------------------------------------------------------------

def torch_model(name, config):
  """The same backbone + projector as `siamese.make_model(config)`, in PyTorch."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  bn = lambda c: nn.BatchNorm1d(c, eps=1e-5, momentum=0.1)  # flax momentum 0.9.
  if name == "cnn":
    m = config.model
    layers, channels = [], config.input.channels
    for width, stride in zip(m.widths, m.strides):
      layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False),
                 nn.BatchNorm2d(width, eps=1e-5, momentum=0.1), nn.ReLU()]
      channels = width
    size = config.input.image_size
    for stride in m.strides:
      size = (size - 1) // stride + 1
    backbone = nn.Sequential(*layers, nn.Flatten(),
                             nn.Linear(channels * size * size, m.dense_dim, bias=False),
                             bn(m.dense_dim), nn.ReLU())
    features = m.dense_dim
  elif name == "resnet18":
    import torchvision  # pylint: disable=g-import-not-at-top
    backbone = torchvision.models.resnet18(zero_init_residual=True)
    backbone.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # The CIFAR stem.
    backbone.maxpool = nn.Identity()
    backbone.fc = nn.Identity()
    features = 512
  else:
    raise ValueError(f"Unknown model {name!r}; known: {sorted(CONFIGS)}.")
  dims = list(config.barlow_twins.projector_dims)
  head, width = [], features
  for dim in dims[:-1]:
    head += [nn.Linear(width, dim, bias=False), bn(dim), nn.ReLU()]
    width = dim
  head.append(nn.Linear(width, dims[-1], bias=False))
  return torch.nn.Sequential(backbone, *head)


def torch_side(name, config, views, steps, threads):
  import torch  # pylint: disable=g-import-not-at-top
  from lightly.loss import BarlowTwinsLoss  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = torch_model(name, config).train()
  opt = config.optimizer
  optimizer = torch.optim.AdamW(
      model.parameters(), lr=opt.lr_per_256 * views[0].shape[0] / 256,
      betas=(opt.b1, opt.b2), weight_decay=opt.weight_decay)
  criterion = BarlowTwinsLoss(lambda_param=LAMBD, gather_distributed=False)
  v1, v2 = (torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)))
            for v in views)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = criterion(model(v1), model(v2))
    loss.backward()
    optimizer.step()
    return loss

  for _ in range(2):
    step()
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step()
  seconds = (time.perf_counter() - t0) / steps
  count = sum(p.numel() for p in model.parameters())
  return {"step_s": seconds, "params": int(count), "loss": loss.item(),
          "torch": torch.__version__, "threads": threads}


def main(argv):
  del argv
  losses = check_losses_against_lightly()
  print(f"losses on fixed embeddings: this codebase {losses['ours']}, lightly "
        f"{losses['lightly']} (equal to 1e-5)")
  import torch  # pylint: disable=g-import-not-at-top
  for name in _MODELS.value:
    config = config_arg.load_config(CONFIGS[name])
    rng = np.random.default_rng(0)
    shape = (_BATCH.value, config.input.image_size, config.input.image_size,
             config.input.channels)
    views = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]
    ours = jax_side(config, views, _STEPS.value)
    if _JAX_ONLY.value:
      print(f"{name}: batch {_BATCH.value}: this codebase "
            f"{_BATCH.value / ours['step_s']:.1f} pairs/s ({1e3 * ours['step_s']:.0f} "
            f"ms/step, compile {ours['compile_s']:.1f} s), XLA_FLAGS="
            f"{os.environ.get('XLA_FLAGS', '')!r}", flush=True)
      continue
    theirs = torch_side(name, config, views, _STEPS.value, _THREADS.value)
    if ours["params"] != theirs["params"]:
      raise AssertionError(f"{name}: {ours['params']} parameters here, "
                           f"{theirs['params']} in PyTorch: not the same model.")
    row = {
        "model": name, "config": CONFIGS[name], "batch": _BATCH.value,
        "params": ours["params"],
        "jax_pairs_per_s": _BATCH.value / ours["step_s"],
        "torch_pairs_per_s": _BATCH.value / theirs["step_s"],
        "jax_step_ms": 1e3 * ours["step_s"], "torch_step_ms": 1e3 * theirs["step_s"],
        "jax_compile_s": ours["compile_s"],
        "ratio": theirs["step_s"] / ours["step_s"],
        "jax": jax.__version__, "jax_devices": str(jax.devices()[0].device_kind),
        "torch": torch.__version__, "torch_threads": _THREADS.value,
        "cpu_count": os.cpu_count(), "machine": platform.processor() or
        platform.machine(), "date": time.strftime("%Y-%m-%d"),
        "losses_vs_lightly": losses,
    }
    print(f"{name}: {row['params']:,} params, batch {row['batch']}: this codebase "
          f"{row['jax_pairs_per_s']:.1f} pairs/s ({row['jax_step_ms']:.0f} ms/step, "
          f"compile {row['jax_compile_s']:.1f} s), PyTorch "
          f"{row['torch_pairs_per_s']:.1f} pairs/s ({row['torch_step_ms']:.0f} "
          f"ms/step): {row['ratio']:.2f}x PyTorch's speed", flush=True)
    report.append(_JSON.value, "peers", [row])


if __name__ == "__main__":
  app.run(main)
