"""MAE: patches, masking, the loss against NumPy, sharded == single device, the
encoder blind to masked patches, config errors, the reconstruction grid against the
model, and the runlocal config end to end (reconstruction PNG, and what
tests/test_train.py checks of every runlocal run)."""
import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import check_runlocal_run
from numerics import numerical_grad
import tandem
from configs.ssl import mae as mae_config
from tandem import analysis
from tandem import parallel
from tandem.data import input_pipeline
from tandem.ssl import mae
from tandem.ssl import train
from tandem.transfer import protocol


def test_patchify_unpatchify_round_trip_and_patch_layout():
  images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  patches = mae.patchify(jnp.asarray(images), 4)
  assert patches.shape == (2, 6, 4 * 4 * 3)
  # Raster order of patches, (row, column, channel) inside a patch.
  np.testing.assert_array_equal(patches[1, 4], images[1, 4:8, 4:8].reshape(-1))
  np.testing.assert_array_equal(mae.unpatchify(patches, 4, 8, 12, 3), images)


def test_random_masking_keeps_k_per_example_and_restore_inverts_shuffle():
  n, ratio, batch = 49, 0.75, 16
  keep, mask, restore = jax.device_get(
      mae.random_masking(jax.random.key(0), batch, n, ratio))
  k = round(n * (1 - ratio))
  assert keep.shape == (batch, k) and mask.shape == restore.shape == (batch, n)
  np.testing.assert_array_equal(mask.sum(1), n - k)
  for keep_i, mask_i in zip(keep, mask):
    assert len(set(keep_i)) == k
    np.testing.assert_array_equal(np.flatnonzero(mask_i == 0), np.sort(keep_i))
  assert len({tuple(np.sort(keep_i)) for keep_i in keep}) == batch  # All differ.
  # restore_idx inverts the shuffle: the encoded visible patches followed by mask
  # tokens (-1), gathered with it, land at their original positions.
  for keep_i, mask_i, restore_i in zip(keep, mask, restore):
    shuffled = np.concatenate([keep_i, np.full(n - k, -1)])
    np.testing.assert_array_equal(shuffled[restore_i],
                                  np.where(mask_i == 0, np.arange(n), -1))
    np.testing.assert_array_equal(np.argsort(restore_i)[:k], keep_i)


def numpy_mae_loss(pred, target, mask, norm_pix_loss):
  total, count = 0.0, 0
  for b, i in np.ndindex(mask.shape):
    if not mask[b, i]:
      continue
    t = target[b, i]
    if norm_pix_loss:
      t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
    total += np.mean((pred[b, i] - t) ** 2)
    count += 1
  return total / count


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_and_gradient_match_numpy(norm_pix_loss):
  rng = np.random.default_rng(1)
  pred, target = rng.normal(size=(2, 2, 5, 6))
  mask = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 1, 0]], np.float64)
  loss = mae.mae_loss(jnp.asarray(pred, jnp.float32), jnp.asarray(target), mask,
                      norm_pix_loss)
  np.testing.assert_allclose(loss, numpy_mae_loss(pred, target, mask, norm_pix_loss),
                             rtol=1e-5)
  with jax.enable_x64():
    grad = jax.grad(lambda p: mae.mae_loss(p, jnp.asarray(target), jnp.asarray(mask),
                                           norm_pix_loss))(jnp.asarray(pred))
  np.testing.assert_allclose(grad, numerical_grad(
      lambda p: numpy_mae_loss(p, target, mask, norm_pix_loss), pred), atol=1e-6)
  assert np.all(np.asarray(grad)[mask == 0] == 0)


def test_loss_ignores_visible_patches():
  rng = np.random.default_rng(2)
  pred, target = rng.normal(size=(2, 4, 9, 16)).astype(np.float32)
  mask = (rng.uniform(size=(4, 9)) < 0.5).astype(np.float32)
  mask[0, 0], mask[0, 1] = 0, 1
  loss = lambda p: float(mae.mae_loss(jnp.asarray(p), jnp.asarray(target), mask))
  visible, masked = pred.copy(), pred.copy()
  visible[mask == 0] += 5.0
  masked[0, 1] += 5.0
  assert loss(visible) == loss(pred)
  assert loss(masked) != loss(pred)


def test_sharded_loss_and_grads_equal_single_device():
  """Masks, augmentation and the loss's average are over the global batch."""
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  config = mae_config.get_config("runlocal")
  model = mae.make_model(config)
  loss_fn = mae.make_loss_fn(model, config)
  images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), np.uint8)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
  params = variables.pop("params")

  def run(mesh):
    batch = jax.device_put({"image": images}, parallel.batch_sharding(mesh))
    p = jax.device_put(params, parallel.replicated(mesh))
    fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, _), grads = fn(p, dict(variables), batch, jax.random.key(3))
    return jax.device_get((loss, grads))

  loss8, grads8 = run(parallel.make_mesh({"data": 8}))
  loss1, grads1 = run(parallel.make_mesh({"data": 1}, devices=jax.devices()[:1]))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               grads8, grads1)


def test_model_with_given_mask_equals_drawn_mask():
  config = mae_config.get_config("runlocal")
  model = mae.make_model(config)
  images = jnp.asarray(np.random.default_rng(4).normal(size=(3, 28, 28, 1)))
  variables = jax.jit(model.init)(jax.random.key(0), images)
  apply = jax.jit(model.apply)
  drawn = apply(variables, images, mask_rng=jax.random.key(5))
  keep, mask, restore = mae.random_masking(jax.random.key(5), 3, 49, 0.75)
  given = apply(variables, images, keep_idx=keep, restore_idx=restore)
  np.testing.assert_array_equal(given["mask"], mask)
  np.testing.assert_allclose(given["pred"], drawn["pred"], rtol=1e-5, atol=1e-6)
  assert drawn["pred"].shape == (3, 49, 16) and drawn["tokens"].shape == (3, 12, 32)


def test_encoder_ignores_the_pixels_of_masked_patches():
  """The encoder sees only the visible patches: with the same mask_rng (hence the same
  mask), any pixels in the masked patches leave its outputs and the decoder's
  predictions unchanged, while changing one visible patch changes them. A class token
  (not the runlocal default) so that the prefix handling is covered too."""
  config = mae_config.get_config("runlocal")  # 28x28, patch 4: 49 patches, 12 kept.
  config.model.pool_type = "cls"
  model = mae.make_model(config)
  rng = np.random.default_rng(6)
  images = rng.normal(size=(3, 28, 28, 1)).astype(np.float32)
  # Random weights everywhere (no zero-initialised parameter hides a path) without
  # compiling an init.
  variables = jax.tree.map(
      lambda s: rng.normal(scale=0.3, size=s.shape).astype(np.float32),
      jax.eval_shape(model.init, jax.random.key(0), images))
  run = jax.jit(lambda v, x: model.apply(v, x, mask_rng=jax.random.key(7)))
  outputs = lambda x: jax.device_get(run(variables, np.asarray(x, np.float32)))
  out = outputs(images)
  masked = out["mask"][..., None] > 0  # [3, 49, 1]
  patches = np.asarray(mae.patchify(images, 4))
  scribbled = np.where(masked, 100 * rng.normal(size=patches.shape), patches)
  other_masked = outputs(mae.unpatchify(scribbled, 4, 28, 28, 1))
  np.testing.assert_array_equal(other_masked["mask"], out["mask"])
  checked = ("encoded", "tokens", "pre_logits", "pred")
  for key in checked:
    np.testing.assert_array_equal(other_masked[key], out[key], err_msg=key)
  # The first visible patch of every example, changed as much: the outputs move.
  first_visible = np.argmax(out["mask"] == 0, axis=1)
  changed = patches.copy()
  changed[np.arange(3), first_visible] += 100 * rng.normal(size=(3, 16))
  other_visible = outputs(mae.unpatchify(changed, 4, 28, 28, 1))
  for key in checked:
    diff = np.abs(other_visible[key] - out[key]).reshape(3, -1).max(axis=1)
    assert np.all(diff > 1e-3), (key, diff)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 0.99, 0.005])
def test_mask_ratio_leaving_no_visible_or_no_masked_patch_is_a_config_error(ratio):
  config = mae_config.get_config("runlocal")  # 7 x 7 = 49 patches.
  config.mae.mask_ratio = ratio
  with pytest.raises(ValueError, match=r"config\.mae\.mask_ratio.*valid range"):
    mae.make_model(config)
  with pytest.raises(ValueError, match=r"config\.mae\.mask_ratio"):
    mae.random_masking(jax.random.key(0), 2, 49, ratio)


def test_non_vit_model_is_a_clear_error():
  with pytest.raises(ValueError, match="MAE needs a ViT encoder.*vit_tiny"):
    mae_config.get_config("model=cnn,runlocal")
  config = mae_config.get_config("runlocal")
  config.model_name = "resnet"
  with pytest.raises(ValueError, match="MAE needs a ViT encoder.*'resnet'"):
    mae.make_model(config)


def test_runlocal_trains_and_writes_reconstructions(tiny_data_dir, tmp_path):
  config = mae_config.get_config("runlocal")
  config.data_dir = tiny_data_dir
  results = train.train(config, str(tmp_path))
  check_runlocal_run(config, results, tmp_path)  # MAE's run of test_train's matrix.
  final = results["final"]
  assert np.isfinite(final["loss"]) and np.isfinite(final["mae_reconstruction/loss"])
  # conftest's images are separable (a bar whose row is the label): the probe on the
  # encoder's features is far above the 10 classes' chance.
  assert final["linear_probe/pre_logits/test_top1"] > 0.8
  pngs = glob.glob(str(tmp_path / "images" / "mae_reconstruction" / "*.png"))
  assert len(pngs) == 1
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  # The encoder is the transfer backbone: `tandem.load` embeds with it as is.
  images = np.zeros((3, 28, 28, 1), np.uint8)
  images[1], images[2, 10:20] = 255, 200
  embeddings = np.asarray(tandem.load(str(tmp_path)).embed(images))
  assert embeddings.shape == (3, 32)
  assert all(np.abs(embeddings[i] - embeddings[j]).max() > 1e-3
             for i, j in ((0, 1), (0, 2), (1, 2)))
  # Reconstructions of any images from the checkpoint: on the evaluator's images
  # with its mask (seed 0), the evaluator's loss; another seed, another mask.
  settings = config.evals.reconstruction
  fixed, _ = input_pipeline.load_arrays(settings.dataset, settings.split,
                                        data_dir=tiny_data_dir)
  loaded = tandem.load(str(tmp_path))
  out = analysis.reconstruct(loaded, fixed[:settings.num_images])
  np.testing.assert_allclose(out["loss"], final["mae_reconstruction/loss"], rtol=1e-4)
  assert out["reconstruction"].shape == out["masked"].shape == (
      settings.num_images, 28, 28, 1) and out["original"].dtype == np.uint8
  other = analysis.reconstruct(loaded, fixed[:settings.num_images] / 255.0, seed=1)
  np.testing.assert_array_equal(other["original"], out["original"])
  assert not np.array_equal(other["masked"], out["masked"])


def test_reconstruction_grid_pastes_visible_patches(tiny_data_dir):
  config = mae_config.get_config("runlocal")
  settings = config.evals.reconstruction
  data = mae.load_data(settings, config, tiny_data_dir)
  model = mae.make_model(config)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
  evaluated = protocol.Model(config, variables)
  record, = mae.evaluate_task(data, settings, evaluated)
  grid = mae.images(data, settings, evaluated)["mae/reconstruction"]
  # 3 rows of 8 images enlarged 2x to 56 pixels, with 1-pixel borders.
  assert grid.dtype == np.uint8 and grid.shape == (3 * 57 + 1, 8 * 57 + 1, 1)
  original, masked, recon = (
      np.stack([grid[1 + 57 * r:57 * (r + 1), 1 + 57 * j:57 * (j + 1)]
                for j in range(8)]) for r in range(3))
  np.testing.assert_array_equal(original[:, ::2, ::2], data.images)
  # Per 4x4 patch (8x8 enlarged): the visible ones are shown as they are, and
  # pasted into the reconstruction; the masked ones are mid-gray.
  tiles = lambda x: np.asarray(mae.patchify(x.astype(np.float32), 8))
  visible = np.all(tiles(masked) == tiles(original), axis=-1)  # [8, 49]
  np.testing.assert_array_equal(visible.sum(1), round(49 * (1 - config.mae.mask_ratio)))
  np.testing.assert_array_equal(tiles(recon)[visible], tiles(original)[visible])
  np.testing.assert_array_equal(tiles(masked)[~visible], 128)
  # The shown mask is the model's: its predictions for the masked patches,
  # un-normalised with each target patch's statistics, fill the reconstruction,
  # and the reported loss is theirs (NumPy).
  mean, std = (np.asarray(v, np.float32) for v in (config.input.mean, config.input.std))
  x = (data.images / np.float32(255) - mean) / std
  keep = np.stack([np.flatnonzero(v) for v in visible])
  restore = np.argsort(np.argsort(visible == 0, axis=1, kind="stable"), axis=1)
  pred = np.asarray(jax.jit(model.apply)(variables, x, keep_idx=keep,
                                         restore_idx=restore)["pred"])
  target = np.asarray(mae.patchify(x, 4))
  assert (record["evaluator"], record["metric"]) == ("mae_reconstruction", "loss")
  np.testing.assert_allclose(record["value"],
                             numpy_mae_loss(pred, target, ~visible, True), rtol=1e-4)
  pixels = (pred * np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
            + target.mean(-1, keepdims=True))
  pixels = np.round(np.clip(mae.unpatchify(pixels, 4, 28, 28, 1) * std + mean, 0, 1)
                    * 255)
  shown = recon[:, ::2, ::2, 0].astype(np.float32)
  masked_pixels = ~np.repeat(np.repeat(visible.reshape(8, 7, 7), 4, 1), 4, 2)
  np.testing.assert_allclose(shown[masked_pixels], pixels[..., 0][masked_pixels],
                             atol=1)
