"""Frozen-feature extraction with a checkpoint's own preprocessing.

Every objective keeps its image backbone under the `encoder` key of its params (and
batch stats), built by `tandem.models.get_model(config.model_name, **config.model)`.
Extraction runs that backbone in eval mode (running batch-norm statistics) on uint8
NHWC images of any size and channel count: images are resized to
`config.input.image_size`, converted to `config.input.channels`, scaled to [0, 1]
and normalised with the config's mean/std, exactly as in pretraining
(`preprocessing(config.input)` describes it for results records). Spatial
layers ([B, H, W, C]) are global-average-pooled and token layers ([B, N, D]) are
mean-pooled to vectors; `pre_logits` is used as is.
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


def _pool(x):
  if x.ndim == 4:
    return x.mean(axis=(1, 2))
  if x.ndim == 3:
    return x.mean(axis=1)
  return x


@functools.lru_cache(maxsize=16)
def _embed_fn(model_name: str, model_kwargs: tuple, layer: str, mean: tuple,
              std: tuple):
  model = models.get_model(model_name, **dict(model_kwargs))

  @jax.jit
  def embed(variables, images_uint8):
    x = preprocess.normalize(images_uint8.astype(jnp.float32) / 255.0, mean, std)
    out = model.apply(variables, x, train=False)
    if layer not in out:
      raise KeyError(f"Layer {layer!r} not in the model's outputs {sorted(out)}.")
    return _pool(out[layer]).astype(jnp.float32)

  return embed


RESIZE = "linear, antialiased, to a square (aspect ratio not kept)"


def preprocessing(input_config) -> dict:
  """What `extract` and `ImageTextEmbedder` do to images, for results records: a
  feature is only comparable with features made the same way."""
  return {"image_size": int(input_config.image_size), "resize": RESIZE,
          "channels": int(input_config.channels), "scale": "x / 255",
          "mean": [float(m) for m in input_config.mean],
          "std": [float(s) for s in input_config.std]}


def prepare_images(images: np.ndarray, input_config) -> np.ndarray:
  """uint8 NHWC of any size/channels -> uint8 at the config's size and channels."""
  images = np.asarray(images)
  if images.ndim == 3:  # A batch of single-channel images without a channel axis.
    images = images[..., None]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError("images must be a uint8 array [N, H, W, C] (or [N, H, W]), got "
                     f"{images.dtype} {images.shape}.")
  images = image_ops.convert_channels(images, input_config.channels)
  return image_ops.resize_uint8(images, input_config.image_size)


def extract(variables, images: np.ndarray, config, *, layer: str = "pre_logits",
            batch_size: int = 256, mesh=None) -> np.ndarray:
  """Features [N, D] (float32 NumPy) of `images` under the backbone `variables`.

  With a `mesh`, batches are split over its batch axes
  (`parallel.batched_map`); otherwise they run on the default device.
  """
  embed = _embed_fn(config.model_name, parallel.hashable(config.model.to_dict()), layer,
                    tuple(config.input.mean), tuple(config.input.std))
  images = prepare_images(images, config.input)
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
