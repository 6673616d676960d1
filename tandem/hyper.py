"""Sweeps as data: lists of config override dicts, keyed by dotted config paths,
for sweep files (configs/sweeps/*.py: `get_sweep()`), as XManager's and
big_vision's hyper-parameter sweeps read. Launched by `tandem.launch.sweep`."""
import itertools


def _check_axes(axes: dict) -> None:
  if not axes:
    raise ValueError("A sweep needs at least one axis (key=[values]).")
  for key, values in axes.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise ValueError(f"Sweep axis {key!r} must be a non-empty list of values, "
                       f"got {values!r}.")


def product(**axes) -> list[dict]:
  """Every combination of the axes' values, the last axis varying fastest:
  `product(**{"a.b": [1, 2], "c": [3, 4]})` is 4 override dicts."""
  _check_axes(axes)
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def zipped(**axes) -> list[dict]:
  """The i-th values of all axes together (the axes must have equal lengths):
  `zipped(**{"a": [1, 2], "b": [3, 4]})` is [{a: 1, b: 3}, {a: 2, b: 4}]."""
  _check_axes(axes)
  lengths = {key: len(values) for key, values in axes.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"zipped() needs axes of equal length, got {lengths}.")
  keys = list(axes)
  return [dict(zip(keys, values)) for values in zip(*axes.values())]


def concat(*sweeps: list[dict]) -> list[dict]:
  """The runs of several sweeps, one after the other."""
  return [dict(overrides) for sweep in sweeps for overrides in sweep]
