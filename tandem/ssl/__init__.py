"""Pretraining objectives; `get_objective(name)` looks one up (`objectives.py`).

Imported on first use, so `python -m tandem.ssl.train` can re-execute itself on
tcmalloc (`tandem/host_malloc.py`) before JAX is imported.
"""
import importlib

__all__ = ["get_objective"]


def __getattr__(name: str):
  if name == "get_objective":
    return importlib.import_module("tandem.ssl.objectives").get_objective
  raise AttributeError(f"module 'tandem.ssl' has no attribute {name!r}")
