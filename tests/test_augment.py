"""Tests for tandem.data.augment: the SSL view augmentations.

Each op is checked against a NumPy / stdlib reference or its defining property (identity
at probability or strength 0, flip, solarize, grayscale, blur of a constant image, hue
of a gray image), the whole pipeline for shapes, range, determinism and per-example
randomness, that every train step draws new views, and a batch sharded over 8 fake CPU
devices against the unsharded result.
Images are small (16x16) to keep XLA compile time, which dominates here, low.
"""
import colorsys
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import common
from configs.ssl import barlow_twins as barlow_twins_config
from tandem import optimizers
from tandem import train_state
from tandem.data import augment
from tandem.ssl import siamese
from tandem.ssl import train

SIZE = 16


def _images(batch=8, channels=3, seed=0):
  return np.random.default_rng(seed).random((batch, SIZE, SIZE, channels), np.float32)


def _identity_config(**overrides):
  """Every op off and the crop the whole image: augment_view must return its input."""
  cfg = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0,
             jitter_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0,
             grayscale_prob=0.0, blur_prob=0.0, blur_sigma=(0.1, 2.0),
             blur_kernel_frac=0.1, solarize_prob=0.0, solarize_threshold=0.5)
  cfg.update(overrides)
  return cfg


def _run(cfg, images, seed=0):
  fn = jax.jit(lambda rng, x: augment.augment_view(rng, x, cfg))
  return np.asarray(fn(jax.random.key(seed), jnp.asarray(images)))


# ---------------------------------------------------------------------- whole pipeline


@functools.cache
def _default_views(channels):
  """two_views with the default configs on a batch of 8 copies of one image: the jitted
  function, the batch, its views with key 0 and its views with key 1."""
  cfg = ml_collections.ConfigDict(common.byol_views(rgb=channels == 3, small=False))
  image = (_images(1, channels) * 255).astype(np.uint8)
  images = np.repeat(image, 8, axis=0)
  fn = jax.jit(lambda rng, x: augment.two_views(rng, x, cfg))
  run = lambda seed: [np.asarray(v) for v in fn(jax.random.key(seed), images)]
  return fn, images, run(0), run(1)


@pytest.fixture(params=[1, 3], ids=["gray", "rgb"])
def views(request):
  """(channels, views with key 0, views with key 0 again, views with key 1)."""
  fn, images, first, other = _default_views(request.param)
  again = [np.asarray(v) for v in fn(jax.random.key(0), images)]
  return request.param, first, again, other


def test_shapes_dtypes_range(views):
  c, (view1, view2), _, _ = views
  for view in (view1, view2):
    assert view.shape == (8, SIZE, SIZE, c) and view.dtype == np.float32
    assert view.min() >= 0.0 and view.max() <= 1.0


def test_same_key_same_views(views):
  _, first, again, _ = views
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])


def test_different_keys_views_and_examples_differ(views):
  _, (view1, view2), _, (other1, _) = views
  assert not np.allclose(view1, other1)
  assert not np.allclose(view1, view2)
  # The 8 inputs are identical; their augmentations are not.
  for view in (view1, view2):
    flat = view.reshape(8, -1)
    assert all(not np.allclose(flat[i], flat[j]) for i in range(8) for j in range(i))


class _OneParameter(nn.Module):
  """A model whose only parameter is a scalar: the step below compiles in seconds."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del x, train
    return self.param("w", nn.initializers.zeros, ())


def test_train_step_draws_new_views_at_every_step():
  """The views are drawn inside the jitted train step (`train_state.make_step`) from the
  key it derives from the train state and the step: the same batch gets new views
  at every step, two different views within a step, and at a step rerun from the
  same state (a resumed run) the same views again."""
  config = barlow_twins_config.get_config("runlocal,model=cnn")

  def loss_fn(params, model_state, batch, rng):  # Barlow Twins' and SimCLR's views.
    views = jnp.stack(siamese.augmented_views(rng, batch["image"], config))
    return params["w"], ({"loss": params["w"], "views": views}, model_state)

  tx, lr_schedule = optimizers.make_optimizer(config)
  params, state = train.make_init_fn(_OneParameter(), tx, config, (jnp.zeros(()),))(
      jax.random.key(0))
  train_step = jax.jit(train_state.make_step(loss_fn, tx, lr_schedule=lr_schedule))
  batch = {"image": (_images(4, channels=1) * 255).astype(np.uint8)}
  views, states = [], [state]
  for _ in range(3):
    params, state, metrics = train_step(params, state, batch)
    views.append(np.asarray(metrics["views"]).reshape(2, 4, -1))  # [view, example, .]
    states.append(state)
  assert [int(s["step"]) for s in states] == [0, 1, 2, 3]
  differ = lambda a, b: all(not np.allclose(x, y) for x, y in zip(a, b))  # Per example.
  for step_views in views:
    assert differ(step_views[0], step_views[1])
  for now, later in zip(views, views[1:]):
    assert differ(now[0], later[0]) and differ(now[1], later[1])
  assert differ(views[0][0], views[2][0]) and differ(views[0][1], views[2][1])
  _, _, again = train_step(params, states[1], batch)  # Step 1 from its saved state.
  np.testing.assert_array_equal(np.asarray(again["views"]).reshape(2, 4, -1), views[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_everything_off_is_identity(channels):
  images = _images(channels=channels)
  np.testing.assert_allclose(_run(_identity_config(), images), images, atol=1e-6)


def test_crop_that_never_fits_falls_back_to_whole_image():
  images = _images()
  out = _run(_identity_config(crop_scale=(1.5, 2.0)), images)
  np.testing.assert_allclose(out, images, atol=1e-6)


def test_flip():
  images = _images()
  np.testing.assert_allclose(_run(_identity_config(flip_prob=1.0), images),
                             images[:, :, ::-1], atol=1e-6)


def test_solarize():
  images = _images()
  expected = np.where(images >= 0.5, 1.0 - images, images)
  np.testing.assert_allclose(_run(_identity_config(solarize_prob=1.0), images), expected,
                             atol=1e-6)


def test_grayscale_has_equal_channels_equal_to_luma():
  images = _images()
  out = _run(_identity_config(grayscale_prob=1.0), images)
  luma = images @ np.asarray([0.299, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(out, np.repeat(luma[..., None], 3, axis=-1), atol=1e-6)


def test_blur_keeps_constant_image():
  images = np.full((8, SIZE, SIZE, 3), 0.3, np.float32)
  out = _run(_identity_config(blur_prob=1.0, blur_sigma=(0.5, 2.0)), images)
  np.testing.assert_allclose(out, images, atol=1e-6)


def test_hue_and_saturation_keep_gray_image():
  images = np.repeat(_images(channels=1), 3, axis=-1)
  out = _run(_identity_config(jitter_prob=1.0, hue=0.5, saturation=0.8), images)
  np.testing.assert_allclose(out, images, atol=1e-6)


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_sharded_batch_equals_unsharded(axis_type):
  fn, images, expected, _ = _default_views(3)
  assert jax.device_count() == 8 == len(images)
  axis_type = getattr(jax.sharding.AxisType, axis_type)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
  sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
  with jax.set_mesh(mesh):
    compiled = fn.lower(jax.random.key(0), sharded).compile()
    views = compiled(jax.random.key(0), sharded)
  for view, view_expected in zip(views, expected):
    assert view.sharding.spec[0] == "data"
    np.testing.assert_allclose(np.asarray(view), view_expected, atol=1e-6)
  # Each device augments its own examples: no batch gathered anywhere.
  hlo = compiled.as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo


# ---------------------------------------------------------------- ops vs references


def test_crop_matrix_matches_jax_image_resize():
  """Bilinear, half-pixel centres, edges clamped: jax.image.resize without antialias."""
  x = np.random.default_rng(0).random(SIZE, np.float32)
  crops = ((0, SIZE), (3, 5), (SIZE - 1, 1), (7, 9))
  crop_matrices = jax.jit(jax.vmap(lambda start, size: augment._crop_matrix(start, size,
                                                                           SIZE)))
  matrices = crop_matrices(*np.asarray(crops).T)
  for (start, size), m in zip(crops, np.asarray(matrices)):
    expected = jax.image.resize(x[start:start + size], (SIZE,), "linear", antialias=False)
    np.testing.assert_allclose(m @ x, expected, atol=1e-6)
  np.testing.assert_array_equal(matrices[0], np.eye(SIZE))


def test_sampled_crops_follow_scale_and_ratio():
  scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
  n = 2000
  u = jax.random.uniform(jax.random.key(0), (n, augment._NUM_DRAWS))
  sample = jax.vmap(lambda v: augment._sample_crop(augment._name_draws(v), SIZE, SIZE,
                                                   scale, ratio))
  top, left, h, w = (np.asarray(a) for a in jax.jit(sample)(u))
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= SIZE).all() and (left + w <= SIZE).all()
  # Rounding to whole pixels widens the bounds by up to half a pixel each side.
  area = h * w / SIZE**2
  assert area.min() >= (np.sqrt(scale[0]) * SIZE - 1)**2 / SIZE**2
  assert (w / h).min() >= (ratio[0] * SIZE - 2) / (SIZE + 1)
  assert (w / h).max() <= (ratio[1] * SIZE + 2) / (SIZE - 1)
  assert h.min() < SIZE // 2 and (h == SIZE).any()  # the whole range is used


def test_blur_matrix_matches_numpy_reflect_convolution():
  x = np.random.default_rng(0).random(SIZE)
  for sigma, ksize in ((0.5, 3), (1.7, 2 * SIZE - 1)):
    radius = ksize // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma)**2)
    taps /= taps.sum()
    expected = np.convolve(np.pad(x, radius, mode="reflect"), taps, mode="valid")
    m = np.asarray(augment._blur_matrix(sigma, SIZE, ksize))
    np.testing.assert_allclose(m @ x, expected, atol=1e-6)
  assert augment._kernel_size(0.1, 224) == 23 and augment._kernel_size(0.1, 32) == 3
  assert augment._kernel_size(0.1, 28) == 3


def test_adjust_hue_matches_colorsys():
  rng = np.random.default_rng(0)
  rgb = rng.random((300, 3), np.float32)
  rgb[:30] = rgb[:30, :1]  # gray pixels
  rgb[30:60, 1] = rgb[30:60, 0]  # ties for the max channel
  adjust_hue = jax.jit(augment._adjust_hue)
  for shift in (0.0, 0.1, -0.37, 0.5):
    expected = [colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
                for h, s, v in (colorsys.rgb_to_hsv(*p) for p in rgb)]
    out = np.asarray(adjust_hue(jnp.asarray(rgb.T), shift)).T
    np.testing.assert_allclose(out, expected, atol=2e-6)


def _reference_jitter(img, factors, hue_shift, order):
  """torchvision ColorJitter's ops on an [H, W, C] image, in the given order."""
  weights = [0.299, 0.587, 0.114] if img.shape[-1] == 3 else [1.0]
  luma = lambda x: x @ np.asarray(weights)
  blend = lambda x, y, f: np.clip(f * x + (1 - f) * y, 0, 1)
  ops = {
      "brightness": lambda x: np.clip(x * factors["brightness"], 0, 1),
      "contrast": lambda x: blend(x, luma(x).mean(), factors["contrast"]),
      "saturation": lambda x: blend(x, luma(x)[..., None], factors["saturation"]),
      "hue": lambda x: np.asarray(
          [colorsys.hsv_to_rgb((h + hue_shift) % 1.0, s, v)
           for h, s, v in (colorsys.rgb_to_hsv(*p) for p in x.reshape(-1, 3))]
      ).reshape(x.shape),
  }
  for name in order:
    img = ops[name](img)
  return img


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_matches_torchvision_in_each_order(channels):
  p = augment._read_config(dict(common.byol_views(rgb=True, small=False)["view2"],
                                brightness=0.6, contrast=0.6, saturation=0.6, hue=0.3))
  names = ("brightness", "contrast", "saturation", "hue")[:4 if channels == 3 else 2]
  jitter = jax.jit(lambda u, img: augment._color_jitter(u, img, p))
  img = _images(1, channels)[0]
  u = augment._name_draws(jax.random.uniform(jax.random.key(0), (augment._NUM_DRAWS,)))
  factors = {n: 1 - p[n] + 2 * p[n] * float(u[n]) for n in names[:3]}
  hue_shift = -p["hue"] + 2 * p["hue"] * float(u["hue"])
  orders = [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)]
  for order in ([o for o in order if o < len(names)] for order in orders):
    # jitter_order holds each op's rank, so its argsort (slot -> op) is the order.
    ranks = np.zeros(4, np.float32)
    ranks[order] = (np.arange(len(order)) + 0.5) / 4
    for apply in (True, False):
      u.update(jitter=jnp.float32(0.0 if apply else 0.99), jitter_order=jnp.asarray(ranks))
      out = np.asarray(jitter(u, jnp.asarray(img).transpose(2, 0, 1))).transpose(1, 2, 0)
      expected = (_reference_jitter(img, factors, hue_shift, [names[i] for i in order])
                  if apply else img)
      np.testing.assert_allclose(out, expected, atol=1e-5, err_msg=f"{order} {apply}")
