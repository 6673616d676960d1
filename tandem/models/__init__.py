"""Backbones and heads, looked up by module name (big_vision style).

Each backbone module `tandem/models/<name>.py` defines `class Model(nn.Module)`, and

    model = get_model(config.model_name, **config.model)

imports that module and returns `Model(**kwargs)`. The backbone contract:

    out = model.apply(variables, images, train=bool, mutable=...)

`images` are float32 NHWC, already normalised. `out` is a dict holding at least
`pre_logits` [B, D] (the representation used for transfer) and named intermediate
features (`stem`, `stage1`.. for CNNs; `encoded` tokens for ViT). BatchNorm layers use
batch statistics when `train=True` (pass `mutable=["batch_stats"]`) and running averages
otherwise; they have no `axis_name`, because the step is jitted on globally sharded
arrays and so already sees the global batch.

Heads (projectors) live in `heads.py` and are used by the objectives directly.
"""
import importlib
import pkgutil

import flax.linen as nn


PRECISIONS = ("float32", "bfloat16")


def compute_dtype(config):
  """The compute dtype of `config.precision` (default float32).

  Mixed precision: with "bfloat16", matmuls, convolutions and activations run in
  bfloat16 while parameters (and so optimizer state) stay float32; normalisation
  statistics are reduced in float32 (flax's default), and every objective casts its
  embeddings to float32 before the loss, so cross-correlations, logits, softmax and
  sigmoid, MAE's target normalisation and the losses are float32. Parameters are
  never bfloat16 (big_vision found bf16 parameters slower and worse).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  precision = config.get("precision", "float32")
  if precision not in PRECISIONS:
    raise ValueError(f"config.precision must be one of {PRECISIONS}, got "
                     f"{precision!r}.")
  return jnp.dtype(precision)


def available_models() -> list[str]:
  """Names of the modules in this package that define a `Model`."""
  names = []
  for info in pkgutil.iter_modules(__path__):
    if info.name.startswith("_"):
      continue
    if hasattr(importlib.import_module(f"{__name__}.{info.name}"), "Model"):
      names.append(info.name)
  return sorted(names)


def get_model(name: str, /, **kwargs) -> nn.Module:
  """Returns `tandem.models.<name>.Model(**kwargs)`."""
  module_name = f"{__name__}.{name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    # Re-raise if the module exists but one of *its* imports is missing.
    if not (module_name == e.name or module_name.startswith(f"{e.name}.")):
      raise
    module = None
  if module is None or not hasattr(module, "Model"):
    raise ValueError(
        f"Unknown model {name!r}; available: {', '.join(available_models())}.")
  return module.Model(**kwargs)
