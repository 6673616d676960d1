"""Text Transformer tower for image-text objectives (CLIP, SigLIP).

Tokens [B, L] (int32, `pad_id` after the text) -> token embedding + learned position
embedding -> pre-LN Transformer blocks (the ViT's `Encoder`, with an attention mask)
-> final LayerNorm -> `pre_logits` [B, width], pooled by `pool_type`:
  * "eos" (default, as CLIP): the final token of each text, i.e. the last non-pad
    position, where the tokenizer puts its end-of-sequence token. With
    `causal=True` (CLIP) that token has attended to the whole text and nothing after.
  * "mean": the mean over the non-pad tokens (big_vision's text tower option).
Padding is masked out of attention either way, so the output of a text does not
depend on how much padding follows it.

The mask is `tokens != pad_id`, so `pad_id` must be an id no text contains (the
contract of tandem/data/tokenizer.py: a SentencePiece model without a pad piece
pads with `piece_size`, not with its `<unk>` 0) and inside the embedding
(`0 <= pad_id < vocab_size`), which is checked.

Variants (width, depth, mlp_dim, num_heads): "tiny" 64/2/256/2 (CPU-sized: byte
tokens make texts ~5x longer than word pieces, and on 2 CPU cores a 128-wide tower
cost 10x the image tower's FLOPs) and "B" 512/12/2048/8 (CLIP's text tower).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from tandem.models import vit

VARIANTS = {
    "tiny": dict(width=64, depth=2, mlp_dim=256, num_heads=2),
    "B": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),
}
POOL_TYPES = ("eos", "mean")


class Model(nn.Module):
  """Returns `tokens` [B, L, D] (final LN) and `pre_logits` [B, D]."""
  vocab_size: int
  variant: str | None = "tiny"
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  max_len: int = 77
  pad_id: int = 0
  causal: bool = True
  pool_type: str = "eos"
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def arch(self) -> dict[str, int]:
    return vit.resolve_arch(self, VARIANTS, "Text tower")

  @nn.compact
  def __call__(self, tokens, *, train: bool = False):
    if self.pool_type not in POOL_TYPES:
      raise ValueError(f"pool_type must be one of {POOL_TYPES}, got "
                       f"{self.pool_type!r}.")
    if tokens.shape[1] > self.max_len:
      raise ValueError(f"Texts of {tokens.shape[1]} tokens exceed the text tower's "
                       f"max_len={self.max_len}; tokenize with max_len <= "
                       f"{self.max_len}.")
    if not 0 <= self.pad_id < self.vocab_size:
      raise ValueError(f"pad_id {self.pad_id} is not an id of the embedding "
                       f"(vocab_size {self.vocab_size}); use the tokenizer's "
                       "pad_id and vocab_size.")
    arch = self.arch()
    width = arch["width"]
    valid = tokens != self.pad_id  # [B, L]
    x = nn.Embed(self.vocab_size, width,
                 embedding_init=nn.initializers.normal(stddev=0.02),
                 name="embedding")(tokens)
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.01),
                     (1, self.max_len, width), jnp.float32)
    x = (x + pos[:, :tokens.shape[1]]).astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    mask = nn.make_attention_mask(valid, valid, dtype=bool)  # [B, 1, L, L]
    if self.causal:
      mask = mask & nn.make_causal_mask(tokens, dtype=bool)
    # A text with no valid token (cannot come from our tokenizers, which always
    # write bos/eos) would have all-masked rows; let every row see itself.
    mask = mask | jnp.eye(tokens.shape[1], dtype=bool)[None, None]
    x = vit.Encoder(arch["depth"], arch["mlp_dim"], arch["num_heads"], self.dropout,
                    self.dtype, name="Transformer")(x, train=train, mask=mask)
    x = x.astype(jnp.float32)
    if self.pool_type == "eos":
      # The last non-pad position (0 for an all-pad row).
      last = jnp.max(jnp.where(valid, jnp.arange(tokens.shape[1]), 0), axis=1)
      pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    else:
      weights = valid.astype(jnp.float32)[..., None]
      pooled = jnp.sum(x * weights, axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
    return {"tokens": x, "pre_logits": pooled}
