"""Parsing of the `get_config(arg)` string: `"dataset=fashion_mnist,model=cnn,runlocal"`.

Configs pick their variants from this string (big_vision style) instead of being
copied. A bare key means `True`. Values are converted to the type of the default;
an unknown key is an error that names it and lists the known ones.
"""
from __future__ import annotations

import importlib.util
import sys

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


def parse_flags(flag_values, argv):
  """absl flag parsing (`flag_values(argv)`) that exits with a one-line error; an
  unknown `--config.x` key is reported by name with the fields that do exist."""
  try:
    return flag_values(argv)
  except Exception as e:  # Flag and config errors come in many types.
    config_arg = None
    for i, a in enumerate(argv):
      if a.startswith("--config="):
        config_arg = a.split("=", 1)[1]
      elif a == "--config" and i + 1 < len(argv):
        config_arg = argv[i + 1]
    if config_arg:
      try:
        path, _, arg = config_arg.partition(":")
        spec = importlib.util.spec_from_file_location("_tandem_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(*([arg] if arg else []))
      except Exception as load_error:  # The config file itself is broken.
        sys.exit(f"Error: could not load config {config_arg!r}: {load_error}")
      unknown = unknown_override_keys(config, argv)
      if unknown:
        sys.exit("Error: " + "; ".join(
            f"unknown config key {path!r} (no such field under {parent}; "
            f"fields there: {', '.join(known)})" for path, parent, known in unknown))
    sys.exit(f"Error: {type(e).__name__}: {e}")
