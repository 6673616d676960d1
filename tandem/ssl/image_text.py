"""The two-tower (image, text) model shared by CLIP and SigLIP.

`Model` holds the image backbone under `encoder` (looked up by name in
`tandem.models`, so feature extraction, linear probes and `tandem.load` read it like
any other objective's), the text Transformer under `text` (`tandem/models/text.py`),
a linear projection of each tower's `pre_logits` to the shared embedding
(`image_head`, `text_head`, no bias, as CLIP's projections) and two learned scalars:
`t`, the log of the logit scale (CLIP: log 1/0.07, SigLIP: log 10), and `b`, the
logit bias (SigLIP only, init −10). Embeddings are L2-normalised.

`make_loss_fn` turns a pairwise loss `pair_loss(zimg, ztxt, t, b)` into the train
loop's `loss_fn`: images get light augmentation on device (`config.aug`, one view),
texts arrive tokenised ("text" in the batch, from `config.input.text`), padded with
the tokenizer's `pad_id`, an id no text contains (tandem/data/tokenizer.py), so the
text tower's mask and EOS pooling come from the ids alone; `make_model` sizes the
text embedding by the tokenizer's `vocab_size`, which counts that pad id.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from tandem import models
from tandem import random_streams
from tandem.data import augment
from tandem.data import preprocess
from tandem.data import tokenizer as tokenizer_lib


def _l2_normalize(x):
  x = x.astype(jnp.float32)  # Embeddings, logits and losses are float32.
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


class Model(nn.Module):
  """Image and text towers; `__call__` returns both embeddings and the scalars."""
  image_name: str
  image_kwargs: dict[str, Any]
  text_kwargs: dict[str, Any]
  embed_dim: int
  logit_scale_init: float  # The initial scale itself (e.g. 1/0.07); stored as log.
  logit_bias_init: float | None = None  # None: no bias parameter (CLIP).
  dtype: Any = jnp.float32  # Compute dtype of the towers (`models.compute_dtype`).

  def setup(self):
    self.encoder = models.get_model(self.image_name, **self.image_kwargs,
                                    dtype=self.dtype)
    self.text = models.get_model("text", **self.text_kwargs, dtype=self.dtype)
    self.image_head = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
    self.text_head = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype)
    self.t = self.param("t", nn.initializers.constant(jnp.log(self.logit_scale_init)),
                        (), jnp.float32)
    if self.logit_bias_init is not None:
      self.b = self.param("b", nn.initializers.constant(self.logit_bias_init), (),
                          jnp.float32)

  def encode_image(self, images, train: bool = False):
    out = self.encoder(images, train=train)
    return _l2_normalize(self.image_head(out["pre_logits"]))

  def encode_text(self, tokens, train: bool = False):
    out = self.text(tokens, train=train)
    return _l2_normalize(self.text_head(out["pre_logits"]))

  def __call__(self, images, tokens, train: bool = False):
    b = self.b if self.logit_bias_init is not None else jnp.zeros((), jnp.float32)
    return {"zimg": self.encode_image(images, train=train),
            "ztxt": self.encode_text(tokens, train=train), "t": self.t, "b": b}


def make_model(config, *, logit_scale_init: float,
               logit_bias_init: float | None = None) -> Model:
  tok = tokenizer_lib.get_tokenizer(config.input.text.tokenizer)
  text_kwargs = dict(config.text_model.to_dict(), vocab_size=tok.vocab_size,
                     pad_id=tok.pad_id, max_len=config.input.text.max_len)
  return Model(image_name=config.model_name, image_kwargs=config.model.to_dict(),
               text_kwargs=text_kwargs, embed_dim=config.embed_dim,
               logit_scale_init=logit_scale_init, logit_bias_init=logit_bias_init,
               dtype=models.compute_dtype(config))


def init_inputs(config) -> tuple:
  """Example (images, tokens) for `model.init`."""
  size, channels = config.input.image_size, config.input.channels
  return (jnp.zeros((2, size, size, channels), jnp.float32),
          jnp.zeros((2, config.input.text.max_len), jnp.int32))


def check_config(config) -> None:
  """Clear errors for settings that cannot train."""
  if config.input.text.max_len < 3:
    raise ValueError(f"config.input.text.max_len must be >= 3 (begin, one token, "
                     f"end), got {config.input.text.max_len}.")
  if config.input.batch_size < 2:
    raise ValueError("Image-text objectives contrast the pairs of a batch: "
                     f"config.input.batch_size must be >= 2, got "
                     f"{config.input.batch_size}.")


def make_loss_fn(model: Model, config, pair_loss: Callable):
  """`loss_fn(params, model_state, batch, rng) -> (loss, (metrics, model_state))`.

  `pair_loss(zimg, ztxt, t, b) -> (loss, metrics)` on the global batch.
  """
  check_config(config)

  def loss_fn(params, model_state, batch, rng):
    tokens = batch["text"]
    images = batch["image"].astype(jnp.float32) / 255.0
    if config.get("aug") is not None:
      images = augment.augment_view(random_streams.stream(rng, "augment/view"),
                                    images, config.aug)
    images = preprocess.normalize(images, config.input.mean, config.input.std)
    out, state = model.apply({"params": params, **model_state}, images, tokens,
                             train=True, mutable=["batch_stats"])
    loss, metrics = pair_loss(out["zimg"], out["ztxt"], out["t"], out["b"])
    return loss, ({"loss": loss, **metrics}, dict(state))

  return loss_fn


def make_stages(model: Model, config, pair_loss: Callable):
  """(prepare, embed, head) for exact gradient accumulation: the pairs of the whole
  batch are contrasted in `head`, which also owns the scale t and bias b."""
  check_config(config)

  def prepare(batch, rng):
    images = batch["image"].astype(jnp.float32) / 255.0
    if config.get("aug") is not None:
      images = augment.augment_view(random_streams.stream(rng, "augment/view"),
                                    images, config.aug)
    return {"image": preprocess.normalize(images, config.input.mean,
                                          config.input.std),
            "text": batch["text"]}

  def embed(params, model_state, inputs):
    out, state = model.apply({"params": params, **model_state}, inputs["image"],
                             inputs["text"], train=True, mutable=["batch_stats"])
    return {"zimg": out["zimg"], "ztxt": out["ztxt"]}, dict(state)

  def head(params, emb, rng):
    del rng
    b = params["b"] if "b" in params else jnp.zeros((), jnp.float32)
    loss, metrics = pair_loss(emb["zimg"], emb["ztxt"], params["t"], b)
    return loss, {"loss": loss, **metrics}

  return prepare, embed, head


def retrieval_top1(logits):
  """Image→text and text→image top-1 within the batch (diagonal = the pair)."""
  labels = jnp.arange(logits.shape[0])
  return {"i2t_top1": jnp.mean(jnp.argmax(logits, axis=1) == labels),
          "t2i_top1": jnp.mean(jnp.argmax(logits, axis=0) == labels)}

