"""Parsing of the `get_config(arg)` string: `"dataset=fashion_mnist,model=cnn,runlocal"`.

Configs pick their variants from this string (big_vision style) instead of being
copied. A bare key means `True`. Values are converted to the type of the default;
an unknown key is an error that names it and lists the known ones.
"""
from __future__ import annotations

import ml_collections


def _convert(key: str, value: str, default):
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes", ""):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"Config arg {key}={value!r}: expected a boolean.")
  if isinstance(default, int):
    return int(value)
  if isinstance(default, float):
    return float(value)
  return value


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Returns the defaults updated with the `key=value` pairs of `arg`."""
  result = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(
          f"Unknown config arg {key!r} in {arg!r}; known args: {sorted(defaults)}.")
    result[key] = _convert(key, value.strip() if sep else "", defaults[key])
  return ml_collections.ConfigDict(result)


def unknown_override_keys(config: ml_collections.ConfigDict, argv, flag: str = "config"):
  """The `--config.a.b=v` overrides in argv whose path is not a field of `config`."""
  unknown = []
  prefix = f"--{flag}."
  for arg in argv:
    if not arg.startswith(prefix):
      continue
    path = arg[len(prefix):].split("=", 1)[0]
    node = config
    for i, part in enumerate(path.split(".")):
      if isinstance(node, (ml_collections.ConfigDict, dict)) and part in node:
        node = node[part]
      else:
        known = sorted(node.keys()) if hasattr(node, "keys") else []
        unknown.append((path, ".".join(path.split(".")[:i]) or "<top>", known))
        break
  return unknown
