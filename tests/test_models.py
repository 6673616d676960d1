"""Backbones and heads: pinned parameter counts, output contract, BatchNorm behaviour.

Large models are only traced (`jax.eval_shape`), never run, so the file stays fast.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tandem import models
from tandem.models import cnn, heads, resnet, text, vit
from tandem.models import conv as conv_lib

# name: (module, kwargs, input HWC, parameter count). BN counts scale + bias only.
# References: torchvision resnet18/34/50/101/152 (with their 1000-way fc), and
# google-research/vision_transformer's MODEL_SIZES (ViT-*_16 with a 1000-way head;
# "-gap" = their "-gap-norep").
IMAGENET, CIFAR, MNIST = (224, 224, 3), (32, 32, 3), (28, 28, 1)
MODEL_SIZES = {
    # ResNet-18 less the second block of each stage: 2 x (9c^2 + 2c) per stage c.
    "resnet10": ("resnet", dict(depth=10, num_classes=1000), IMAGENET,
                 11_689_512 - sum(2 * (9 * c * c + 2 * c) for c in (64, 128, 256, 512))),
    "resnet18": ("resnet", dict(depth=18, num_classes=1000), IMAGENET, 11_689_512),
    "resnet18-nohead": ("resnet", dict(depth=18), IMAGENET, 11_176_512),
    "resnet18-cifar": ("resnet", dict(depth=18, stem="cifar"), CIFAR, 11_168_832),
    "resnet18-w0.5": ("resnet", dict(depth=18, width=0.5), CIFAR, 2_798_880),
    "resnet34": ("resnet", dict(depth=34, num_classes=1000), IMAGENET, 21_797_672),
    "resnet50": ("resnet", dict(depth=50, num_classes=1000), IMAGENET, 25_557_032),
    "resnet50-nohead": ("resnet", dict(depth=50), IMAGENET, 23_508_032),
    "resnet101": ("resnet", dict(depth=101, num_classes=1000), IMAGENET, 44_549_160),
    "resnet152": ("resnet", dict(depth=152, num_classes=1000), IMAGENET, 60_192_808),
    "vit-tiny/4": ("vit", dict(variant="tiny", patch_size=4), CIFAR, 458_592),
    "vit-Ti/16": ("vit", dict(variant="Ti", num_classes=1000), IMAGENET, 5_717_416),
    "vit-S/16": ("vit", dict(variant="S", num_classes=1000), IMAGENET, 22_050_664),
    "vit-S/16-gap": ("vit", dict(variant="S", num_classes=1000, pool_type="gap"),
                     IMAGENET, 22_049_896),
    "vit-B/16": ("vit", dict(variant="B", num_classes=1000), IMAGENET, 86_567_656),
    "vit-B/16-gap": ("vit", dict(variant="B", num_classes=1000, pool_type="gap"),
                     IMAGENET, 86_566_120),
    "vit-B/32": ("vit", dict(variant="B", patch_size=32, num_classes=1000), IMAGENET,
                 88_224_232),
    "vit-L/16": ("vit", dict(variant="L", num_classes=1000), IMAGENET, 304_326_632),
    "cnn": ("cnn", dict(), MNIST, 92_896),
    "cnn-flatten-dense512": ("cnn", dict(widths=(64, 128, 256), strides=(2, 2, 1),
                                         pool="flatten", dense_dim=512),
                             MNIST, 6_793_664),
}


def abstract_variables(model, size, channels=3, batch=1):
  hwc = size if isinstance(size, tuple) else (size, size, channels)
  images = jax.ShapeDtypeStruct((batch, *hwc), jnp.float32)
  return jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), images)


def abstract_outputs(model, size, channels=3, batch=2, **kw):
  images = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
  def f(x):
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, train=False, **kw)
  return jax.eval_shape(f, images)


def init(model, x, **kw):
  """Jitted init with the "rbg" PRNG: XLA:CPU takes 15-30 s to compile a ResNet-18
  init drawn with threefry (one hash per parameter), ~3 s with rbg."""
  rng = jax.random.key(0, impl="rbg")
  return jax.jit(functools.partial(model.init, **kw))(rng, x)


def apply(model, variables, x, **kw):
  return jax.jit(functools.partial(model.apply, **kw))(variables, x)


def num_params(variables):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def shapes(tree):
  return {k: tuple(v.shape) for k, v in tree.items()}


@pytest.mark.parametrize("name", MODEL_SIZES)
def test_param_count(name):
  module, kwargs, size, expected = MODEL_SIZES[name]
  variables = abstract_variables(models.get_model(module, **kwargs), size)
  assert num_params(variables) == expected


def test_every_variant_is_pinned():
  pinned = [(m, kw) for m, kw, _, _ in MODEL_SIZES.values()]
  assert set(resnet.BLOCKS) <= {kw["depth"] for m, kw in pinned if m == "resnet"}
  assert set(vit.VARIANTS) <= {kw["variant"] for m, kw in pinned if m == "vit"}
  assert set(resnet.STEMS) <= {kw.get("stem", "imagenet")
                               for m, kw in pinned if m == "resnet"}
  assert set(vit.POOL_TYPES) <= {kw.get("pool_type", "cls")
                                 for m, kw in pinned if m == "vit"}
  assert set(models.available_models()) <= {m for m, _ in pinned} | {"text"}
  assert set(text.VARIANTS) <= {kw["variant"] for kw, _, _ in TEXT_SIZES.values()}


# Text towers: (kwargs, max_len, parameter count). CLIP ViT-B/32's text tower
# (vocab 49,408, context 77) has 63,428,096 parameters including its 512x512
# text_projection, which lives in the two-tower model here, not in the tower.
TEXT_SIZES = {
    "text-B-clip": (dict(variant="B", vocab_size=49408, max_len=77), 77,
                    63_428_096 - 512 * 512),
    # 259x64 embedding + 64x64 positions + 2 x (4 attention projections with
    # bias + 2 LN + 64-256-64 MLP) + final LN.
    "text-tiny-bytes": (dict(variant="tiny", vocab_size=259, max_len=64), 64,
                        259 * 64 + 64 * 64 + 2 * (4 * (64 * 64 + 64) + 2 * 128
                                                  + 64 * 256 + 256 + 256 * 64
                                                  + 64) + 128),
}


@pytest.mark.parametrize("name", TEXT_SIZES)
def test_text_tower_param_count(name):
  kwargs, max_len, expected = TEXT_SIZES[name]
  model = models.get_model("text", **kwargs)
  tokens = jax.ShapeDtypeStruct((1, max_len), jnp.int32)
  variables = jax.eval_shape(
      lambda t: model.init(jax.random.key(0), t, train=False), tokens)
  assert num_params(variables) == expected


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pool_type", ["eos", "mean"])
def test_text_tower_ignores_padding(causal, pool_type):
  """A text's features do not depend on the padding after it (or, when causal, on
  anything after its last token)."""
  model = models.get_model("text", vocab_size=259, width=32, depth=2, mlp_dim=64,
                           num_heads=2, max_len=16, causal=causal,
                           pool_type=pool_type)
  short = jnp.array([[1, 50, 60, 70, 2, 0, 0, 0, 0, 0, 0, 0]])
  other_pad = short.at[0, 8].set(99)  # Garbage in a pad slot would change pooling...
  variables = init(model, short)
  a = apply(model, variables, short)["pre_logits"]
  b = apply(model, variables, jnp.pad(short, ((0, 0), (0, 4))))["pre_logits"]
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  c = apply(model, variables, other_pad)["pre_logits"]  # ...as it is a real token.
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4


def test_text_tower_rejects_texts_longer_than_max_len():
  model = models.get_model("text", vocab_size=259, variant="tiny", max_len=8)
  with pytest.raises(ValueError, match="max_len=8"):
    init(model, jnp.ones((1, 9), jnp.int32))


def test_get_model_unknown_name():
  with pytest.raises(ValueError, match=r"'resnet9'.*available: cnn, resnet, text, vit"):
    models.get_model("resnet9")
  with pytest.raises(ValueError, match="available"):
    models.get_model("heads")  # A module, but not a backbone.


def test_get_model_passes_kwargs():
  model = models.get_model("resnet", depth=18, width=0.5)
  assert isinstance(model, resnet.Model) and (model.depth, model.width) == (18, 0.5)


# ResNet.


@pytest.mark.parametrize("depth,expansion", [(18, 1), (50, 4)])
@pytest.mark.parametrize("stem,stem_res", [("cifar", 32), ("imagenet", 8)])
def test_resnet_outputs(depth, expansion, stem, stem_res):
  model = resnet.Model(depth=depth, width=0.25, stem=stem, num_classes=10)
  out = abstract_outputs(model, 32)
  c = 16  # 64 * width.
  assert shapes(out) == {
      "stem": (2, stem_res, stem_res, c),
      "stage1": (2, stem_res, stem_res, c * expansion),
      "stage2": (2, stem_res // 2, stem_res // 2, 2 * c * expansion),
      "stage3": (2, stem_res // 4, stem_res // 4, 4 * c * expansion),
      "stage4": (2, max(stem_res // 8, 1), max(stem_res // 8, 1), 8 * c * expansion),
      "pre_logits": (2, 8 * c * expansion),
      "logits": (2, 10),
  }


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_width_scales_params(depth):
  count = lambda w: num_params(
      abstract_variables(resnet.Model(depth=depth, width=w), 32))
  base = count(1.0)
  # Conv params scale with width**2; BN params (a small share) linearly.
  assert count(2.0) / base == pytest.approx(4.0, rel=0.01)
  assert count(0.5) / base == pytest.approx(0.25, rel=0.01)


@functools.cache
def small_resnet():
  """(model, images, variables) of a ResNet-18 small enough to run; shared by tests."""
  model = resnet.Model(depth=18, width=0.125, stem="cifar")
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  return model, x, init(model, x)


def test_resnet_zero_init_residual():
  params = small_resnet()[2]["params"]
  blocks = [b for b in params if b.startswith("stage")]
  assert len(blocks) == 8
  for b in blocks:
    np.testing.assert_array_equal(params[b]["bn2"]["scale"], 0.0)
    np.testing.assert_array_equal(params[b]["bn1"]["scale"], 1.0)


@pytest.mark.parametrize("zero_init", [True, False])
def test_resnet_bottleneck_zero_init_residual(zero_init):
  block = resnet.ResidualBlock(2, bottleneck=True, zero_init_residual=zero_init)
  params = init(block, jnp.zeros((1, 4, 4, 8)), train=False)["params"]
  np.testing.assert_array_equal(params["bn3"]["scale"], 0.0 if zero_init else 1.0)
  np.testing.assert_array_equal(params["bn2"]["scale"], 1.0)


def test_resnet_batchnorm_train_vs_eval():
  model, x, variables = small_resnet()
  stats = variables["batch_stats"]

  eval_out, eval_state = apply(model, variables, x, train=False,
                               mutable=["batch_stats"])
  chex.assert_trees_all_equal(eval_state["batch_stats"], stats)

  train_out, train_state = apply(model, variables, x, train=True,
                                 mutable=["batch_stats"])
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         train_state["batch_stats"], stats)
  assert all(jax.tree.leaves(changed))
  assert not np.allclose(train_out["pre_logits"], eval_out["pre_logits"])
  # Momentum 0.9 from mean 0: the stem's running mean is 0.1 * its batch mean.
  stem_conv = jax.lax.conv_general_dilated(
      x, variables["params"]["stem_conv"]["kernel"], (1, 1), [(1, 1), (1, 1)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(train_state["batch_stats"]["stem_bn"]["mean"],
                             0.1 * stem_conv.mean(axis=(0, 1, 2)), atol=1e-5)


def test_resnet_bfloat16_compute():
  model = resnet.Model(depth=18, width=0.125, stem="cifar", dtype=jnp.bfloat16)
  variables = abstract_variables(model, 8)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = abstract_outputs(model, 8)
  assert out["stage4"].dtype == jnp.bfloat16
  assert out["pre_logits"].dtype == jnp.float32


def test_resnet_rejects_bad_config():
  with pytest.raises(ValueError, match="depth"):
    abstract_variables(resnet.Model(depth=20), 32)
  with pytest.raises(ValueError, match="stem"):
    abstract_variables(resnet.Model(depth=18, stem="tiny"), 32)


# ViT.

TINY = dict(variant="tiny", depth=1, patch_size=4)  # 16 patches of 16x16 input.


@functools.cache
def small_vit(pool_type):
  """(model, images, variables, outputs) of a one-block ViT on 16 patches."""
  model = vit.Model(**TINY, pool_type=pool_type, num_classes=5)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  variables = init(model, x)
  return model, x, variables, apply(model, variables, x)


@pytest.mark.parametrize("pool_type,prefix", [("cls", 1), ("gap", 0)])
def test_vit_outputs_and_pooling(pool_type, prefix):
  _, _, variables, out = small_vit(pool_type)
  assert shapes(out) == {"stem": (2, 16, 96), "encoded": (2, 16 + prefix, 96),
                         "tokens": (2, 16, 96), "pre_logits": (2, 96),
                         "logits": (2, 5)}
  expected = out["encoded"][:, 0] if pool_type == "cls" else out["encoded"].mean(1)
  np.testing.assert_allclose(out["pre_logits"], expected, rtol=1e-6)
  assert ("cls" in variables["params"]) == (pool_type == "cls")
  assert variables["params"]["pos_embedding"].shape == (1, 16 + prefix, 96)


@pytest.mark.parametrize("pool_type", ["cls", "gap"])
def test_vit_keep_idx_selects_patches_after_posemb(pool_type):
  """MAE contract: patches are gathered after adding posembs, so encoding a permutation
  of all patches permutes the patch tokens and leaves the pooled representation."""
  model, x, variables, full = small_vit(pool_type)
  perm = jnp.stack([jax.random.permutation(jax.random.key(i), 16) for i in range(2)])
  permuted = apply(model, variables, x, keep_idx=perm)
  np.testing.assert_allclose(permuted["tokens"],
                             jnp.take_along_axis(full["tokens"], perm[..., None], 1),
                             atol=1e-5)
  np.testing.assert_allclose(permuted["pre_logits"], full["pre_logits"], atol=1e-5)
  subset = abstract_outputs(model, 16, keep_idx=perm[:, :4])
  assert subset["encoded"].shape == (2, 4 + (pool_type == "cls"), 96)


def test_vit_variant_overrides_and_errors():
  assert vit.Model(variant="S", depth=2, width=64).arch() == dict(
      width=64, depth=2, mlp_dim=1536, num_heads=6)
  assert vit.Model(width=8, depth=1, mlp_dim=16, num_heads=2).arch()["width"] == 8
  with pytest.raises(ValueError, match="variant"):
    vit.Model(variant="XXL").arch()
  with pytest.raises(ValueError, match="num_heads"):
    vit.Model(width=8, depth=1, mlp_dim=16).arch()
  with pytest.raises(ValueError, match="pool_type"):
    abstract_variables(vit.Model(**TINY, pool_type="max"), 16)


def test_vit_sincos_posemb_has_no_params():
  learned = num_params(abstract_variables(vit.Model(**TINY), 16))
  fixed = num_params(abstract_variables(vit.Model(**TINY, posemb="sincos2d"), 16))
  assert learned - fixed == 17 * 96
  pe = vit.posemb_sincos_2d(4, 4, 96)
  assert pe.shape == (1, 16, 96) and len(np.unique(np.asarray(pe), axis=1)[0]) == 16
  # MAE / big_vision: [sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)] at row y, column x
  # (raster order), ω_k = 10000^(−k / (D/4 − 1)).
  omega = 10_000.0 ** -(np.arange(24) / 23)
  for y, x in ((0, 0), (0, 3), (2, 1), (3, 3)):
    expected = np.concatenate([np.sin(x * omega), np.cos(x * omega),
                               np.sin(y * omega), np.cos(y * omega)])
    np.testing.assert_allclose(pe[0, 4 * y + x], expected, atol=1e-6)


def test_vit_encoder_runs_on_any_token_count():
  encoder = vit.Encoder(depth=1, mlp_dim=32, num_heads=2)
  def run(x):
    return encoder.apply(encoder.init(jax.random.key(0), x[:1, :5]), x)
  for n in (1, 3, 9):
    x = jax.ShapeDtypeStruct((2, n, 16), jnp.float32)
    assert jax.eval_shape(run, x).shape == (2, n, 16)


# Small CNN.


@pytest.mark.parametrize("pool,pooled_dim", [("gap", 128), ("flatten", 7 * 7 * 128)])
@pytest.mark.parametrize("dense_dim", [None, 64])
def test_cnn_outputs(pool, pooled_dim, dense_dim):
  model = cnn.Model(widths=(32, 64, 128), strides=(1, 2, 2), pool=pool,
                    dense_dim=dense_dim)
  out = abstract_outputs(model, 28, channels=1)
  assert shapes(out) == {"stage1": (2, 28, 28, 32), "stage2": (2, 14, 14, 64),
                         "stage3": (2, 7, 7, 128), "pooled": (2, pooled_dim),
                         "pre_logits": (2, dense_dim or pooled_dim)}


def test_cnn_strides_per_conv_and_norm_none():
  model = cnn.Model(widths=(8, 16), strides=(2, 1, 1, 2), convs_per_stage=2,
                    norm="none")
  variables = abstract_variables(model, 28, channels=1)
  assert "batch_stats" not in variables
  assert set(variables["params"]) == {"stage1_conv1", "stage1_conv2", "stage2_conv1",
                                      "stage2_conv2"}
  assert "bias" in variables["params"]["stage1_conv1"]
  assert abstract_outputs(model, 28, channels=1)["stage2"].shape == (2, 7, 7, 16)
  per_stage = cnn.Model(widths=(8, 16), strides=(2, 2), convs_per_stage=2)
  assert per_stage.conv_strides() == [[2, 1], [2, 1]]
  with pytest.raises(ValueError, match="strides"):
    cnn.Model(widths=(8, 16), strides=(2, 2, 2)).conv_strides()


def test_cnn_batchnorm_train_updates_stats():
  model = cnn.Model(widths=(4, 8), strides=(2, 2), dense_dim=6)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  variables = init(model, x)
  _, eval_state = apply(model, variables, x, train=False, mutable=["batch_stats"])
  chex.assert_trees_all_equal(eval_state["batch_stats"], variables["batch_stats"])
  train_out, train_state = apply(model, variables, x, train=True,
                                 mutable=["batch_stats"])
  assert set(train_state["batch_stats"]) == {"stage1_bn1", "stage2_bn1", "dense_bn"}
  # The dense layer's BN (NumPy): batch statistics when training, momentum 0.9 from
  # mean 0 and variance 1 (biased batch variance), eps 1e-5, then ReLU.
  kernel = np.asarray(variables["params"]["dense"]["kernel"])
  h = np.asarray(train_out["pooled"]) @ kernel
  stats = train_state["batch_stats"]["dense_bn"]
  np.testing.assert_allclose(stats["mean"], 0.1 * h.mean(0), atol=1e-5)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * h.var(0), rtol=1e-5)
  np.testing.assert_allclose(
      train_out["pre_logits"],
      np.maximum((h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5), 0), rtol=1e-4, atol=1e-4)


# Projector.


def test_projector_shapes_and_no_bias():
  proj = heads.Projector(hidden_dims=(32, 32), out_dim=16, last_bn=True)
  variables = init(proj, jnp.zeros((4, 8)))
  out = apply(proj, variables, jnp.ones((4, 8)))
  assert out.shape == (4, 16) and out.dtype == jnp.float32
  params = variables["params"]
  assert set(params) == {"dense1", "bn1", "dense2", "bn2", "out"}  # out_bn: no params.
  for name in ("dense1", "dense2", "out"):
    assert set(params[name]) == {"kernel"}
  assert "out_bn" in variables["batch_stats"]
  no_last_bn = init(heads.Projector((32,), 16), jnp.zeros((4, 8)))
  assert "out_bn" not in no_last_bn["batch_stats"]


@pytest.mark.parametrize("train", [True, False])
def test_projector_matches_numpy(train):
  proj = heads.Projector(hidden_dims=(6,), out_dim=3)
  x = np.asarray(jax.random.normal(jax.random.key(1), (5, 4)))
  variables = init(proj, x)
  out, state = apply(proj, variables, x, train=train, mutable=["batch_stats"])
  w1 = np.asarray(variables["params"]["dense1"]["kernel"])
  w2 = np.asarray(variables["params"]["out"]["kernel"])
  h = x @ w1
  mean, var = (h.mean(0), h.var(0)) if train else (0.0, 1.0)
  expected = np.maximum((h - mean) / np.sqrt(var + 1e-5), 0) @ w2
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
  new = state["batch_stats"]["bn1"]
  np.testing.assert_allclose(new["mean"], 0.1 * h.mean(0) if train else 0.0, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 + 0.1 * h.var(0) if train else 1.0,
                             rtol=1e-5)


@pytest.mark.parametrize("k,stride,padding", [
    (3, 1, "SAME"), (3, 2, ((1, 1), (1, 1))), (1, 2, "VALID"), (7, 2, ((3, 3), (3, 3))),
    (3, 2, ((0, -1), (1, 0))),  # Negative padding crops, as in lax.
])
@pytest.mark.parametrize("block_bytes", [8 * 2 ** 20, 512])  # One product; blocks.
def test_conv_kernel_gradient_by_matrix_product_equals_xlas(k, stride, padding,
                                                             block_bytes, monkeypatch):
  monkeypatch.setattr(conv_lib, "_BLOCK_BYTES", block_bytes)
  rng = np.random.default_rng(k + stride)
  x = jnp.asarray(rng.normal(size=(3, 12, 10, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 4, 5)), jnp.float32)
  dn = ("NHWC", "HWIO", "NHWC")
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(
      x, w, (stride, stride), padding, dimension_numbers=dn)))
  # On CPU the custom gradient is the one taken, not lax's.
  assert "custom_vjp_call" in str(jax.make_jaxpr(loss(conv_lib.conv_general_dilated))(
      x, w))
  want = jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)
  got = jax.jit(jax.grad(loss(conv_lib.conv_general_dilated), (0, 1)))(x, w)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
  # Other layouts and dilations are lax's own convolution, unchanged.
  dilated = conv_lib.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                          dimension_numbers=dn)
  np.testing.assert_array_equal(dilated, jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=dn))
