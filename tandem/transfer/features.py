"""Frozen-feature extraction with a checkpoint's own preprocessing.

Every objective keeps its image backbone under the `encoder` key of its params (and
batch stats), built by `tandem.models.get_model(config.model_name, **config.model)`.
Extraction runs that backbone in eval mode (running batch-norm statistics) on uint8
NHWC images of any size and channel count: images are resized to
`config.input.image_size`, converted to `config.input.channels`, scaled to [0, 1]
and normalised with the config's mean/std, exactly as in pretraining
(`preprocessing(config.input)` describes it for results records). Spatial
layers ([B, H, W, C]) are global-average-pooled and token layers ([B, N, D]) are
mean-pooled to vectors, unless `extract_layers` is asked for "flatten" or "none";
`pre_logits` is used as is.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tandem import models
from tandem import parallel
from tandem.data import image_ops
from tandem.data import preprocess


def encoder_variables(params, model_state) -> dict:
  """The backbone's variables out of an objective's params and model state."""
  variables = {"params": params["encoder"]}
  stats = (model_state or {}).get("batch_stats", {})
  if "encoder" in stats:
    variables["batch_stats"] = stats["encoder"]
  return variables


POOLINGS = ("mean", "none", "flatten")


def _pool(x, pooling: str = "mean"):
  """A layer's output per example: "mean" averages spatial ([B, H, W, C]) and
  token ([B, N, D]) axes; "flatten" keeps every value as one vector; "none"
  keeps the layer's shape."""
  if pooling == "none" or x.ndim == 2:
    return x
  if pooling == "flatten":
    return x.reshape(x.shape[0], -1)
  if x.ndim == 4:
    return x.mean(axis=(1, 2))
  if x.ndim == 3:
    return x.mean(axis=1)
  return x


@functools.lru_cache(maxsize=16)
def _embed_fn(model_name: str, model_kwargs: tuple, layers: tuple, mean: tuple,
              std: tuple, pooling: str = "mean"):
  """A jitted fn(variables, uint8 images) -> {layer: float32 features}."""
  model = models.get_model(model_name, **dict(model_kwargs))

  @jax.jit
  def embed(variables, images_uint8):
    x = preprocess.normalize(images_uint8.astype(jnp.float32) / 255.0, mean, std)
    out = model.apply(variables, x, train=False)
    missing = [layer for layer in layers if layer not in out]
    if missing:
      raise KeyError(f"Layers {missing} not in the model's outputs {sorted(out)}.")
    return {layer: _pool(out[layer], pooling).astype(jnp.float32)
            for layer in layers}

  return embed


def layer_names(config) -> list[str]:
  """The backbone's named outputs (`embed`'s layers), in the model's order."""
  model = models.get_model(config.model_name, **config.model.to_dict())
  shape = (1, config.input.image_size, config.input.image_size,
           config.input.channels)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros(shape), train=False))
  outputs = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=False),
                           variables)
  return list(outputs)


RESIZE = "linear, antialiased, to a square (aspect ratio not kept)"


def preprocessing(input_config) -> dict:
  """What `extract` and `ImageTextEmbedder` do to images, for results records: a
  feature is only comparable with features made the same way."""
  return {"image_size": int(input_config.image_size), "resize": RESIZE,
          "channels": int(input_config.channels), "scale": "x / 255",
          "mean": [float(m) for m in input_config.mean],
          "std": [float(s) for s in input_config.std]}


def prepare_images(images: np.ndarray, input_config) -> np.ndarray:
  """NHWC images of any size/channels -> uint8 at the config's size and channels.

  uint8 images are used as they are; float images must lie in [0, 1] and are
  rounded to uint8 first, as every image of the input pipeline is uint8.
  """
  images = np.asarray(images)
  if images.ndim == 3 and images.shape[-1] in (1, 3, 4):
    raise ValueError(
        f"images of shape {images.shape} look like one image [H, W, C]; pass a "
        "batch [N, H, W, C] (images[None] for one image). [N, H, W] is read as "
        "single-channel images, but not with a last axis of 1, 3 or 4.")
  if images.ndim == 3:  # A batch of single-channel images without a channel axis.
    images = images[..., None]
  if images.ndim == 4 and np.issubdtype(images.dtype, np.floating):
    low, high = (float(images.min()), float(images.max())) if images.size else (0, 0)
    if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 1):
      raise ValueError(f"Float images must lie in [0, 1]; these span [{low}, "
                       f"{high}]. Scale them, or pass uint8 images in [0, 255].")
    images = np.round(images * 255.0).astype(np.uint8)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError("images must be uint8 in [0, 255] or float in [0, 1], shaped "
                     f"[N, H, W, C] (or [N, H, W]); got {images.dtype} "
                     f"{images.shape}.")
  images = image_ops.convert_channels(images, input_config.channels)
  return image_ops.resize_uint8(images, input_config.image_size)


def extract(variables, images: np.ndarray, config, *, layer: str = "pre_logits",
            batch_size: int = 256, mesh=None) -> np.ndarray:
  """Features [N, D] (float32 NumPy) of `images` under the backbone `variables`,
  spatial and token layers mean-pooled.

  With a `mesh`, batches are split over its batch axes
  (`parallel.batched_map`); otherwise they run on the default device.
  """
  return extract_layers(variables, images, config, layers=(layer,),
                        batch_size=batch_size, mesh=mesh)[layer]


def extract_layers(variables, images: np.ndarray, config, *, layers, pooling="mean",
                   batch_size: int = 256, mesh=None) -> dict[str, np.ndarray]:
  """{layer: float32 features} of `images` for several layers in one forward pass,
  each pooled by `pooling` (one of POOLINGS)."""
  if pooling not in POOLINGS:
    raise ValueError(f"pooling={pooling!r}; choose one of {POOLINGS}.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
  layers = tuple(layers)
  embed = _embed_fn(config.model_name, parallel.hashable(config.model.to_dict()),
                    layers, tuple(config.input.mean), tuple(config.input.std),
                    pooling)
  images = prepare_images(images, config.input)
  if not len(images):  # [0, D]: the width comes from one blank image.
    size, channels = config.input.image_size, config.input.channels
    blank = np.zeros((1, size, size, channels), np.uint8)
    return {k: v[:0] for k, v in parallel.batched_map(
        lambda chunk: embed(variables, chunk), blank, 1).items()}
  return parallel.batched_map(lambda chunk: embed(variables, chunk), images,
                              batch_size, mesh=mesh)


IMAGE_TEXT_LAYER = "image_text_embedding"  # A two-tower model's image embedding.
RAW_PIXELS = "raw_pixels"  # Pixels scaled to [0, 1], flattened: the baseline to beat.


def extractor(model) -> Callable[[np.ndarray, str], np.ndarray]:
  """`extract(images, layer)` for `protocol.TaskData`, under `model`
  (`protocol.Model`)'s current variables: a backbone layer, `IMAGE_TEXT_LAYER`
  (the image tower's normalised embedding) or `RAW_PIXELS`."""

  def features(images, layer):
    if layer == RAW_PIXELS:
      return images.reshape(len(images), -1).astype(np.float32) / 255.0
    if layer == IMAGE_TEXT_LAYER:
      return model.embedder.images(model.variables, images)
    params = model.variables["params"]
    state = {k: v for k, v in model.variables.items() if k != "params"}
    return extract(encoder_variables(params, state), images, model.config,
                   layer=layer, batch_size=model.batch_size, mesh=model.mesh)

  return features


class ImageTextEmbedder:
  """L2-normalised image and text embeddings of a two-tower (CLIP/SigLIP) model.

  Built from the pretraining config: images get the pretraining preprocessing (as in
  `extract`), texts the pretraining tokenizer at the text tower's length (longer
  texts are cut; `truncated` counts them).
  """

  def __init__(self, config, batch_size: int = 1024):
    from tandem.data import tokenizer as tokenizer_lib
    from tandem.ssl import objectives
    objective = objectives.get_objective(config.objective)
    self.model = objective.make_model(config)
    self.config, self.batch_size = config, batch_size
    self.tokenizer = tokenizer_lib.get_tokenizer(config.input.text.tokenizer)
    self.max_len = config.input.text.max_len
    self.truncated = 0
    mean, std = tuple(config.input.mean), tuple(config.input.std)
    model = self.model
    self._images = jax.jit(lambda v, x: model.apply(
        v, preprocess.normalize(x.astype(jnp.float32) / 255.0, mean, std),
        method=model.encode_image))
    self._texts = jax.jit(lambda v, t: model.apply(v, t, method=model.encode_text))

  def images(self, variables, images: np.ndarray) -> np.ndarray:
    """[N, D] embeddings of uint8 images of any size/channels."""
    return parallel.batched_map(lambda x: self._images(variables, x),
                                prepare_images(images, self.config.input),
                                self.batch_size)

  def texts(self, variables, texts) -> np.ndarray:
    """[N, D] embeddings of a list of strings."""
    tokens, truncated = self.tokenizer.encode_batch(list(texts), self.max_len)
    self.truncated += int(np.sum(truncated))
    return parallel.batched_map(lambda t: self._texts(variables, t), tokens,
                                self.batch_size)
