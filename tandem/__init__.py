"""Tandem: self-supervised pretraining and transfer in JAX.

`tandem.load(workdir, step=None, weights=None)` returns a pretrained checkpoint
with `.config`, `.params`, `.layers` and `.embed(images, layer=..., pooling=...)`
(`weights`: "student" or "teacher" for objectives with an EMA teacher); see
tandem/pretrained.py. `tandem.transfer` (evaluators on arrays) and
`tandem.analysis` (metrics, loaders and plots for notebooks) are imported on
first use.
"""
import importlib

_SUBMODULES = ("analysis", "transfer")


def load(workdir: str, step: int | None = None, sharding=None,
         weights: str | None = None):
  from tandem import pretrained  # Lazy: keeps `import tandem` cheap.
  return pretrained.load(workdir, step, sharding=sharding, weights=weights)


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"tandem.{name}")
  raise AttributeError(f"module 'tandem' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_SUBMODULES])
