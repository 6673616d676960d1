"""Features of a checkpoint with a cache on disk, so re-running a notebook cell
is instant.

    model = tandem.load("/tmp/bt")
    data = load_dataset("fashion_mnist", "test")
    x = features(model, data)                                  # pre_logits [N, D]
    per_layer = features(model, data, ["stage2", "pre_logits"], pooling="flatten")

Features are `Pretrained.embed`'s: the checkpoint's own preprocessing, eval mode.
The cache key is the checkpoint (its workdir, step and a digest of its
parameters, so a model with changed parameters, e.g. interpolated, never reads
another's features), a digest of the images, the layer, the pooling and the
preprocessing; files go to `cache_dir`
(default: $TANDEM_FEATURE_CACHE, else ~/.cache/tandem/features), one .npy per
layer. Delete the folder to clear it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "tandem", "features")


def cache_dir(path: str | None = None) -> str:
  return path or os.environ.get("TANDEM_FEATURE_CACHE") or DEFAULT_CACHE


def _images_digest(images: np.ndarray) -> str:
  images = np.ascontiguousarray(images)
  digest = hashlib.sha1(f"{images.dtype}{images.shape}".encode())
  digest.update(images.data)
  return digest.hexdigest()


def _params_digest(model) -> str:
  """A digest of the model's variables, kept on the object (computed once)."""
  digest = model.__dict__.get("_variables_digest")
  if digest is None:
    import jax  # pylint: disable=g-import-not-at-top
    hasher = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_flatten_with_path(model.variables)[0]:
      leaf = np.ascontiguousarray(jax.device_get(leaf))
      hasher.update(f"{jax.tree_util.keystr(path)}{leaf.dtype}{leaf.shape}".encode())
      hasher.update(leaf.data)
    digest = model.__dict__["_variables_digest"] = hasher.hexdigest()
  return digest


def cache_key(model, images: np.ndarray, layer: str, pooling: str) -> str:
  """A file name that changes with anything the features depend on."""
  from tandem.transfer import features as features_lib  # pylint: disable=g-import-not-at-top
  described = json.dumps({
      "workdir": model.workdir, "step": int(model.step),
      "variables": _params_digest(model), "layer": layer,
      "pooling": pooling, "model": model.config.get("model_name"),
      "preprocessing": features_lib.preprocessing(model.config.input),
      "images": _images_digest(images)}, sort_keys=True)
  return f"{layer.replace('/', '_')}-{hashlib.sha1(described.encode()).hexdigest()[:20]}"


def features(model, data, layers: str | Sequence[str] = "pre_logits", *,
             pooling: str = "mean", batch_size: int = 256,
             cache: bool = True, cache_path: str | None = None):
  """Features of `data` (a `Dataset` or images [N, H, W, C]) under `model` (a
  `tandem.load` checkpoint): an array for one layer name, {layer: array} for
  several (the missing ones computed in one forward pass). `cache=False` neither
  reads nor writes the cache."""
  images = getattr(data, "images", data)
  names = [layers] if isinstance(layers, str) else list(layers)
  folder = cache_dir(cache_path)
  paths = {l: os.path.join(folder, cache_key(model, images, l, pooling) + ".npy")
           for l in names}
  out = {l: np.load(paths[l]) for l in names if cache and os.path.exists(paths[l])}
  missing = [l for l in names if l not in out]
  if missing:
    computed = model.embed(images, layer=missing, pooling=pooling,
                           batch_size=batch_size)
    out.update(computed)
    if cache:
      os.makedirs(folder, exist_ok=True)
      for layer in missing:
        tmp = paths[layer] + f".{os.getpid()}.tmp.npy"
        np.save(tmp, computed[layer])
        os.replace(tmp, paths[layer])  # Whole, or not at all.
  return out[layers] if isinstance(layers, str) else {l: out[l] for l in names}
