"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

Layout and parameter counts follow google-research/vision_transformer (pinned in the
tests: ViT-B/16 at 224 with a 1000-way head is 86,567,656 parameters). Pre-LN blocks,
GELU MLP, a final LayerNorm, then `pool_type`:
  * "cls": a learned class token is prepended; `pre_logits` is its final-LN output. The
    learned position embedding then has N + 1 rows (the class token has a position).
  * "gap": no class token; `pre_logits` is the mean of the final-LN patch tokens.

`posemb` is "learn" (normal(0.02) init) or "sincos2d" (fixed 2-D sin-cos, as in MAE
and big_vision; the class token's position is then zero, as in MAE).

The pieces are separate so that MAE can reuse them: `PatchEmbed` (images -> [B, N, D]),
`get_posemb` (-> [1, prefix + N, D]) and `Encoder` (blocks + final LN; works on any
number of tokens, so it also serves as an MAE decoder at another width). `Model` accepts
`keep_idx` [B, K], the indices of the patches to keep: position embeddings are added
to all N patches *before* the subset is gathered, then the class token is prepended.
This is MAE's encoder with exactly the parameters of the transfer backbone.

Variants (width, depth, mlp_dim, num_heads); any field can be overridden explicitly:
  tiny  96/4/384/3      a CPU-sized toy (458,592 params at 32x32, patch 4): 32-d
                        heads like the larger models, 4x MLP ratio; for tests and
                        laptop runs.
  Ti    192/12/768/3    S  384/12/1536/6    B  768/12/3072/12    L  1024/24/4096/16
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

VARIANTS: dict[str, dict[str, int]] = {
    "tiny": dict(width=96, depth=4, mlp_dim=384, num_heads=3),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
}
POOL_TYPES = ("cls", "gap")
POSEMB_TYPES = ("learn", "sincos2d")


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.):
  """Fixed 2-D sin-cos position embedding, [1, h*w, width] (big_vision / MAE)."""
  if width % 4:
    raise ValueError(f"sincos2d needs width divisible by 4, got {width}.")
  y, x = np.mgrid[:h, :w]
  omega = 1. / temperature**(np.arange(width // 4) / (width // 4 - 1 or 1))
  y = np.einsum("m,d->md", y.flatten(), omega)
  x = np.einsum("m,d->md", x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return jnp.asarray(pe[None], jnp.float32)


def get_posemb(module: nn.Module, typ: str, seqshape: tuple[int, int], width: int,
               num_prefix: int = 0, name: str = "pos_embedding"):
  """Position embedding [1, num_prefix + h*w, width]; prefix tokens come first.

  Call inside `module`'s compact `__call__`; "learn" creates the parameter `name` there.
  """
  h, w = seqshape
  if typ == "learn":
    return module.param(name, nn.initializers.normal(stddev=0.02),
                        (1, num_prefix + h * w, width), jnp.float32)
  if typ == "sincos2d":
    pe = posemb_sincos_2d(h, w, width)
    return jnp.concatenate([jnp.zeros((1, num_prefix, width)), pe], axis=1)
  raise ValueError(f"posemb must be one of {POSEMB_TYPES}, got {typ!r}.")


def resolve_arch(module: nn.Module, variants: dict, kind: str) -> dict[str, int]:
  """`module.variant`'s (width, depth, mlp_dim, num_heads), overridden by the
  module's explicit fields; a clear error for unknown variants or missing sizes."""
  if module.variant is not None and module.variant not in variants:
    raise ValueError(f"{kind} variant must be one of {list(variants)}, got "
                     f"{module.variant!r}.")
  arch = dict(variants.get(module.variant, {}))
  for k in ("width", "depth", "mlp_dim", "num_heads"):
    if getattr(module, k) is not None:
      arch[k] = getattr(module, k)
    elif k not in arch:
      raise ValueError(f"{kind} needs `variant` or an explicit `{k}`.")
  return arch


class PatchEmbed(nn.Module):
  """Non-overlapping patches -> linear embedding: [B, H, W, C] -> [B, N, width]."""
  width: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    if images.shape[1] % p or images.shape[2] % p:
      raise ValueError(f"Image size {images.shape[1:3]} not divisible by patch {p}.")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, name="conv")(images.astype(self.dtype))
    return x.reshape(x.shape[0], -1, self.width)


class MlpBlock(nn.Module):
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dense = lambda n, name: nn.Dense(
        n, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6), name=name)
    width = x.shape[-1]
    x = nn.gelu(dense(self.mlp_dim, "fc1")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = dense(width, "fc2")(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)); x + MLP(LN(x))."""
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    y = nn.LayerNorm(dtype=self.dtype, name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, deterministic=True,
        kernel_init=nn.initializers.xavier_uniform(), name="attn")(y, y, mask=mask)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype, name="ln2")(x)
    return x + MlpBlock(self.mlp_dim, self.dropout, self.dtype, name="mlp")(y, train)


class Encoder(nn.Module):
  """`depth` blocks then a final LayerNorm; [B, L, D] -> [B, L, D] for any L."""
  depth: int
  mlp_dim: int
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False, mask=None):
    """`mask`: optional attention mask [B, 1 or heads, L, L] (True = attend)."""
    for i in range(self.depth):
      x = EncoderBlock(self.mlp_dim, self.num_heads, self.dropout, self.dtype,
                       name=f"block{i:02d}")(x, train, mask)
    return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class Model(nn.Module):
  """ViT backbone: returns `stem`, `encoded`, `tokens`, `pre_logits`, [`logits`].

  `stem` [B, N, D] patch embeddings (before position embeddings); `encoded`
  [B, prefix + K, D] final-LN tokens (class token first when pool_type="cls");
  `tokens` [B, K, D] the patch tokens of `encoded` (K = N unless `keep_idx`).
  With `dropout` > 0 and train=True, pass a "dropout" rng to `apply`.
  """
  variant: str | None = None
  width: int | None = None
  depth: int | None = None
  mlp_dim: int | None = None
  num_heads: int | None = None
  patch_size: int = 16
  pool_type: str = "cls"
  posemb: str = "learn"
  dropout: float = 0.0
  num_classes: int | None = None
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.

  def arch(self) -> dict[str, int]:
    """The variant's (width, depth, mlp_dim, num_heads) with explicit overrides."""
    return resolve_arch(self, VARIANTS, "ViT")

  @property
  def num_prefix_tokens(self) -> int:
    return 1 if self.pool_type == "cls" else 0

  @nn.compact
  def __call__(self, images, *, train: bool = False, keep_idx=None):
    if self.pool_type not in POOL_TYPES:
      raise ValueError(
          f"pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}.")
    arch = self.arch()
    width, prefix = arch["width"], self.num_prefix_tokens
    out = {}

    x = PatchEmbed(width, self.patch_size, self.dtype, name="embedding")(images)
    out["stem"] = x
    grid = (images.shape[1] // self.patch_size, images.shape[2] // self.patch_size)
    pos = get_posemb(self, self.posemb, grid, width, prefix)
    x = x + pos[:, prefix:].astype(x.dtype)
    if keep_idx is not None:  # MAE: encode only the visible patches.
      x = jnp.take_along_axis(x, keep_idx[..., None], axis=1)
    if prefix:
      cls = self.param("cls", nn.initializers.zeros, (1, 1, width), jnp.float32)
      cls = jnp.tile((cls + pos[:, :1]).astype(x.dtype), (x.shape[0], 1, 1))
      x = jnp.concatenate([cls, x], axis=1)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    x = Encoder(arch["depth"], arch["mlp_dim"], arch["num_heads"], self.dropout,
                self.dtype, name="Transformer")(x, train=train)
    out["encoded"] = x
    out["tokens"] = x[:, prefix:]
    x = x.astype(jnp.float32)  # The representation feeds losses and linear probes.
    out["pre_logits"] = x[:, 0] if self.pool_type == "cls" else jnp.mean(x, axis=1)
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                               name="head")(out["pre_logits"])
    return out
