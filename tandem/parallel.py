"""Device mesh, partition rules and host-to-global batch placement.

The mesh has three named axes, `data`, `fsdp` and `model`, sized from the config
(`config.mesh`, -1 means "all remaining devices"). Axes are created as
`AxisType.Auto` on purpose: in jax 0.10 `jax.make_mesh` defaults to Explicit axes,
which would require sharding-in-types annotations throughout model code; with Auto
axes the compiler propagates the shardings we give to `jax.jit`.

Parameters (and the optimizer state that mirrors them) are placed by a list of
`(regex, spec)` rules from the config, first match wins; `spec` is a tuple of mesh
axis names (or None) for the leading dimensions. A rule whose spec is longer than a
leaf's rank leaves that leaf replicated (so `opt_state/count` and scalars are safe).

The batch is split over (`data`, `fsdp`): data parallelism and fully-sharded data
parallelism both consume batch shards. Losses that need the global batch (Barlow
Twins cross-correlation, contrastive negatives, batch-norm statistics) are written
as ordinary array code on these global arrays, so XLA inserts the collectives and
the result equals the single-device result.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a `Mesh` with axes `data`, `fsdp`, `model` from `{axis: size}`."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in AXES}
  unknown = set(mesh_config.keys()) - set(AXES)
  if unknown:
    raise ValueError(f"Unknown mesh axes {sorted(unknown)}; the axes are {AXES}.")
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"At most one mesh axis may be -1, got {free}.")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if free:
    if len(devices) % fixed:
      raise ValueError(f"{len(devices)} devices are not divisible by {fixed} "
                       f"(mesh {dict(mesh_config)}).")
    sizes[free[0]] = len(devices) // fixed
  if int(np.prod(list(sizes.values()))) != len(devices):
    raise ValueError(f"Mesh {sizes} needs {int(np.prod(list(sizes.values())))} "
                     f"devices, but {len(devices)} are available.")
  shape = tuple(sizes[a] for a in AXES)
  return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_str(path) -> str:
  """'params/encoder/conv1/kernel' style name for a tree path."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _spec_for(name: str, shape, rules, mesh: Mesh) -> P:
  for pattern, spec in rules:
    if re.search(pattern, name):
      spec = tuple(spec)
      if len(spec) > len(shape):
        return P()
      for dim, axis in zip(shape, spec):
        if axis is None:
          continue
        size = int(np.prod([mesh.shape[a] for a in
                            (axis if isinstance(axis, (tuple, list)) else (axis,))]))
        if dim % size:
          raise ValueError(
              f"Partition rule ({pattern!r}, {spec}) shards {name} of shape {shape} "
              f"over {axis} of size {size}, which does not divide {dim}. "
              "Change the rule in config.partition_rules or the mesh.")
      return P(*spec)
  return P()


def tree_shardings(tree: Any, rules, mesh: Mesh) -> Any:
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  rules = [(pattern, tuple(spec)) for pattern, spec in rules]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(
          mesh, _spec_for(path_str(path), np.shape(leaf), rules, mesh)),
      tree)


SHARDING_PRESETS = ("dp", "fsdp", "fsdp_tp")
# Megatron-style tensor parallelism of transformer blocks (ViT, the text tower) on
# `model`: query/key/value column-parallel over heads and the output projection
# row-parallel; the MLP's first layer column-parallel over its hidden units, the
# second row-parallel. One all-reduce per attention and per MLP in each direction.
TP_RULES = (
    (r"attn/(query|key|value)/kernel$", (None, "model", None)),
    (r"attn/(query|key|value)/bias$", ("model", None)),
    (r"attn/out/kernel$", ("model", None, None)),
    (r"mlp/fc1/kernel$", (None, "model")),
    (r"mlp/fc1/bias$", ("model",)),
    (r"mlp/fc2/kernel$", ("model", None)),
)


def preset_mesh(preset: str, mesh_config) -> dict:
  """The mesh of a sharding preset: `dp` all devices on `data`; `fsdp` all on
  `fsdp`; `fsdp_tp` `model` as `mesh_config` gives it (2 when it gives 1), the rest
  on `fsdp`."""
  if preset not in SHARDING_PRESETS:
    raise ValueError(f"config.sharding must be '' (use config.mesh and "
                     f"config.partition_rules) or one of {SHARDING_PRESETS}, got "
                     f"{preset!r}.")
  if preset == "dp":
    return dict(data=-1, fsdp=1, model=1)
  if preset == "fsdp":
    return dict(data=1, fsdp=-1, model=1)
  return dict(data=1, fsdp=-1, model=max(2, int(mesh_config.get("model", 1))))


def preset_rules(preset: str, params, mesh: Mesh, min_size_mb: float = 4.0) -> list:
  """The `(regex, spec)` rules of a sharding preset for `params` (arrays or shapes).

  `dp`: everything replicated. `fsdp`: every parameter of at least `min_size_mb`
  sharded on `fsdp` along its largest dimension that the axis divides (big_vision's
  `fsdp` rule; small arrays stay replicated, where sharding costs more than it
  saves). `fsdp_tp`: `TP_RULES` on `model`, and `fsdp` as above on a dimension the
  `model` rule leaves free. One rule per sharded parameter, matching its path at the
  end, so the optimizer state that mirrors it (`opt_state/.../mu/<path>`) follows.
  """
  preset_mesh(preset, {})  # Validates the name.
  rules = []
  fsdp = mesh.shape["fsdp"]
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name, shape = path_str(path), tuple(np.shape(leaf))
    spec = [None] * len(shape)
    if preset == "fsdp_tp":
      for pattern, tp in TP_RULES:
        if re.search(pattern, name) and len(tp) == len(shape):
          spec = list(tp)
          break
    size_mb = np.prod(shape, dtype=np.int64) * np.dtype(leaf.dtype).itemsize / 2**20
    if preset != "dp" and fsdp > 1 and shape and size_mb >= min_size_mb:
      free = [d for d in np.argsort(shape)[::-1]
              if spec[d] is None and shape[d] % fsdp == 0]
      if free:
        spec[free[0]] = "fsdp"
    if any(axis is not None for axis in spec):
      rules.append((r"(^|/)" + re.escape(name) + "$", tuple(spec)))
  return rules + [(".*", ())]


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Turns this process's slice of the batch into global arrays on the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def batch_shards(mesh: Mesh) -> int:
  """How many ways the mesh splits a batch (the product of the batch axes)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def hashable(value):
  """Nested dicts/lists as sorted tuples: a static argument for `jax.jit` or a
  cache key."""
  if isinstance(value, dict):
    return tuple(sorted((k, hashable(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(hashable(v) for v in value)
  return value


def host_to_global(x: np.ndarray, sharding) -> jax.Array:
  """A host array that every process holds in full, as a global array."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


@functools.partial(jax.jit, static_argnums=1)
def _replicate(x, sharding):
  return jax.lax.with_sharding_constraint(x, sharding)


def batched_map(fn, inputs: np.ndarray, batch_size: int, *, mesh: Mesh | None = None,
                empty_shape: tuple = (0, 0)) -> np.ndarray:
  """`fn(batch)` over `inputs` in fixed-size batches, as one host array (or a
  dict of them, when `fn` returns a dict).

  Every batch has the same shape (the last one is padded with zeros and the padding
  dropped from the output), so `fn` compiles once: the batch is `batch_size`, or
  `len(inputs)` when that is smaller, rounded up to a multiple of the mesh's batch
  shards. With a `mesh`, each batch is split over the batch axes (every process
  holds all of `inputs`, so this is multi-host safe) and the output replicated.
  """
  shards = 1
  if mesh is not None:
    shards = batch_shards(mesh)
    sharding, out_sharding = batch_sharding(mesh), replicated(mesh)
  round_up = lambda n: -(-n // shards) * shards
  batch = min(round_up(batch_size), round_up(max(len(inputs), 1)))
  outputs = []
  for start in range(0, len(inputs), batch):
    chunk = inputs[start:start + batch]
    pad = batch - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    if mesh is not None:
      out = _replicate(fn(host_to_global(chunk, sharding)), out_sharding)
    else:
      out = fn(chunk)
    outputs.append(jax.tree.map(lambda o: np.asarray(o)[:batch - pad], out))
  if not outputs:
    return np.zeros(empty_shape, np.float32)
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
