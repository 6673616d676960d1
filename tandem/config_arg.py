"""Config files and their `get_config(arg)` string: `"dataset=cifar10_subset,runlocal"`.

`load_config("path/to/config.py:arg")` is the one way configs are loaded (the
command-line entry points, the tests): it imports the file and returns
`get_config(arg)`. Configs are data (configs/common.py holds their shared parts)
and loading one never imports JAX.

Configs pick their variants from the arg string (big_vision style) instead of being
copied. A bare key means `True`. Values are converted to the type of the default;
an unknown key is an error that names it and lists the known ones.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
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


def split_config_spec(spec: str) -> tuple[str, str | None]:
  """("path/to/config.py", "arg") of "path/to/config.py:arg" (arg None if absent)."""
  head, sep, arg = spec.partition(".py:")
  if sep:
    return head + ".py", arg
  return spec, None


def _package_root(path: str) -> tuple[str, str] | None:
  """(directory to put on sys.path, dotted module name) of a .py file inside a
  package tree (directories with __init__.py), or None if its directory is none."""
  directory, name = os.path.split(os.path.splitext(path)[0])
  parts = [name]
  while os.path.isfile(os.path.join(directory, "__init__.py")):
    directory, package = os.path.split(directory)
    parts.insert(0, package)
  return (directory, ".".join(parts)) if len(parts) > 1 else None


def _add_to_path(directory: str) -> None:
  if not any(os.path.abspath(p or ".") == directory for p in sys.path):
    sys.path.insert(0, directory)


def load_file_module(path: str, prefix: str):
  """The Python file at `path` as a module named `prefix` + its stem, with this
  checkout on sys.path so that it may import `configs.*` (configs, sweep files)."""
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if os.path.isfile(os.path.join(checkout, "configs", "__init__.py")):
    _add_to_path(checkout)
  spec = importlib.util.spec_from_file_location(
      prefix + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file named by `spec` ("path/to/config.py:arg";
  without ":arg", `get_config()`), from any working directory.

  A file inside a package (configs/ssl/NAME.py) is imported as its module
  (`configs.ssl.NAME`), with the directory above the top package on sys.path, so
  `from configs import common` works; a file elsewhere is run as a module of its
  own, with this checkout's directory (the one holding configs/) on sys.path.
  """
  path, arg = split_config_spec(spec)
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path} does not exist (from {spec!r}).")
  root = _package_root(path)
  if root is not None:
    directory, name = root
    _add_to_path(directory)
    top = name.split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None and not any(
        os.path.abspath(p) == os.path.join(directory, top)
        for p in getattr(loaded, "__path__", [])):
      raise ImportError(
          f"Config {path} belongs to the package {top!r} in {directory}, but "
          f"{top!r} is already imported from {list(loaded.__path__)}; run from one "
          "checkout.")
    module = importlib.import_module(name)
  else:
    module = load_file_module(path, "_tandem_config_")
  if not hasattr(module, "get_config"):
    raise AttributeError(f"Config file {path} defines no get_config(arg).")
  return module.get_config(*([arg] if arg else []))


def _pop_flag(argv, flag: str):
  """(value of `--flag=V` / `--flag V` or None, argv without it)."""
  value, rest, i = None, [], 0
  while i < len(argv):
    a = argv[i]
    if i > 0 and a.startswith(f"--{flag}="):
      value = a.split("=", 1)[1]
    elif i > 0 and a == f"--{flag}" and i + 1 < len(argv):
      value = argv[i + 1]
      i += 1
    else:
      rest.append(a)
    i += 1
  return value, rest


def parse_flags(flag_values, argv, flag: str = "config",
                help_text: str = "Config file[:arg]."):
  """absl flags parser of the entry points (`app.run(main, flags_parser=...)`).

  `--config=FILE[:ARG]` is read from argv and loaded with `load_config`, then
  defined as a locked config-dict flag, so `--config.a.b=v` overrides any field;
  then absl parses the rest. Every error exits with one line: a config that fails
  to load, an unknown `--config.x` key (named with the fields that do exist), a bad
  flag. Without `--config`, FLAGS.config is None (for `--help` and usage messages).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  spec, rest = _pop_flag(argv, flag)
  config = None
  if spec is None:
    flags.DEFINE_string(flag, None, help_text, flag_values=flag_values)
  else:
    try:
      config = load_config(spec)
    except Exception as e:  # pylint: disable=broad-except  The config is broken.
      sys.exit(f"Error: could not load config {spec!r}: {type(e).__name__}: {e}")
    unknown = unknown_override_keys(config, rest, flag)
    if unknown:
      sys.exit("Error: " + "; ".join(
          f"unknown config key {path!r} (no such field under {parent}; "
          f"fields there: {', '.join(known)})" for path, parent, known in unknown))
  try:
    if config is not None:
      # The `--config.x` overrides are looked up in `sys_argv` (default: sys.argv).
      config_flags.DEFINE_config_dict(flag, config, help_text,
                                      flag_values=flag_values, lock_config=True,
                                      sys_argv=rest)
    return flag_values(rest)
  except Exception as e:  # pylint: disable=broad-except  Flag errors have many types.
    sys.exit(f"Error: {type(e).__name__}: {e}")
