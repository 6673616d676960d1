"""Recipes against the papers: every config's effective peak learning rate and the
augmentations training really uses, for every `dataset=`/`model=` variant."""
import importlib

import ml_collections
import numpy as np
import pytest

from tandem import optimizers
from tandem.ssl import config_base
from tandem.transfer import finetune

IMAGENET = "dataset=imagenet2012"
COCO = "dataset=coco_captions"
SMALL = ("dataset=fashion_mnist", "dataset=cifar10_subset")
# (config, dataset arg) -> (peak lr of the weights, peak lr of LARS's biases, source).
# Peak = the rate after warm-up, for the config's own global batch.
PUBLISHED = {
    ("barlow_twins", IMAGENET): (
        0.2 * 2048 / 256, 0.0048 * 2048 / 256,
        "Zbontar et al. 2021, Sec. 4: LARS, lr 0.2 weights / 0.0048 biases x B/256, "
        "B = 2048; facebookresearch/barlowtwins main.py"),
    ("simclr", IMAGENET): (
        4.8, 4.8,
        "Chen et al. 2020, Sec. 2.3: 'LARS with learning rate of 4.8 "
        "(= 0.3 x BatchSize/256)', batch 4096"),
    ("mae", IMAGENET): (
        1.5e-4 * 4096 / 256, None,
        "He et al. 2022, Table 8: base lr 1.5e-4, lr = base x batch/256, batch 4096"),
    ("clip", COCO): (
        5e-4, None,
        "Radford et al. 2021, Tables 19-20: ViT-B/32 lr 5e-4 at batch 32,768"),
    ("siglip", COCO): (
        1e-3, None, "Zhai et al. 2023, Sec. 4: lr 1e-3 at batch 32k"),
    # The CPU presets are this project's recipes (docs/PROTOCOLS.md, "CPU presets"),
    # measured in README: AdamW 1e-3 per 256 (MAE 1.5e-3 per 256).
    **{(name, small): (1e-3 * 256 / 256, None, "CPU preset, batch 256")
       for name in ("barlow_twins", "simclr") for small in SMALL},
    **{("mae", small): (1.5e-3 * 256 / 256, None, "CPU preset, batch 256")
       for small in SMALL},
    **{(name, small): (1e-3 * 128 / 256, None, "CPU preset, batch 128")
       for name in ("clip", "siglip")
       for small in SMALL + ("dataset=captioned_shapes",)},
}
MODELS = {name: tuple(config_base.MODELS) for name in ("barlow_twins", "simclr",
                                                        "clip", "siglip")}
MODELS["mae"] = tuple(m for m in config_base.MODELS if m.startswith("vit"))


def _variants():
  for (name, dataset), expected in PUBLISHED.items():
    for model in MODELS[name]:
      yield pytest.param(name, f"{dataset},model={model}", expected,
                         id=f"{name}-{dataset.split('=')[1]}-{model}")


@pytest.mark.parametrize("name,arg,expected", _variants())
def test_effective_peak_learning_rate_is_the_published_one(name, arg, expected):
  config = importlib.import_module(f"configs.ssl.{name}").get_config(arg)
  weights, biases, source = expected
  # The rate the optimizer really uses: its schedule right after warm-up.
  _, schedule = optimizers.make_optimizer(config)
  peak = float(schedule(config.schedule.warmup_steps))
  np.testing.assert_allclose(peak, weights, rtol=1e-6, err_msg=source)
  np.testing.assert_allclose(optimizers.peak_lr(config), weights, rtol=1e-6)
  if biases is not None:
    np.testing.assert_allclose(optimizers.peak_lr(config, "bias_"), biases,
                               rtol=1e-6, err_msg=source)


def test_every_config_has_a_row():
  names = {p.stem for p in __import__("pathlib").Path("configs/ssl").glob("*.py")
           if p.stem != "__init__"}
  assert names == {name for name, _ in PUBLISHED}


def test_clip_and_siglip_adam_settings():
  clip = importlib.import_module("configs.ssl.clip").get_config(COCO).optimizer
  # Radford et al. 2021, Table 19: beta2 0.98 and eps 1e-6 for ViTs, wd 0.2.
  assert (clip.b2, clip.eps, clip.weight_decay) == (0.98, 1e-6, 0.2)
  siglip = importlib.import_module("configs.ssl.siglip").get_config(COCO).optimizer
  # big_vision's decoupled wd 1e-4 at lr 1e-3 is optax's wd x lr: 0.1.
  np.testing.assert_allclose(siglip.weight_decay * siglip.lr_abs, 1e-4)


def test_finetune_peak_learning_rate_is_bits():
  """BiT-HyperRule (Kolesnikov et al. 2020, Sec. 3.3): SGD, lr 0.003 at batch 512,
  scaled linearly with the batch."""
  ft = finetune.default_config()
  assert ft.lr_per_512 == 0.003
  assert finetune.plan(50_000, ft)["peak_lr"] == pytest.approx(0.003)
  assert finetune.plan(128, ft)["peak_lr"] == pytest.approx(0.003 * 128 / 512)


def _opt_config(**opt):
  return ml_collections.ConfigDict(dict(
      input=dict(batch_size=512), total_steps=10,
      schedule=dict(warmup_steps=1), optimizer=dict(name="adamw", weight_decay=0.0,
                                                    **opt)))


@pytest.mark.parametrize("opt,match", [
    (dict(lr=1e-3), "ambiguous: set lr_per_256"),
    (dict(lr_per_256=1e-3, lr_abs=1e-3), "exactly one of lr_per_256 and lr_abs"),
    (dict(), "neither")])
def test_learning_rate_convention_must_be_named(opt, match):
  with pytest.raises(ValueError, match=match):
    optimizers.make_optimizer(_opt_config(**opt))


def test_lr_abs_is_not_scaled_by_the_batch():
  assert optimizers.peak_lr(_opt_config(lr_abs=5e-4)) == 5e-4
  assert optimizers.peak_lr(_opt_config(lr_per_256=5e-4)) == 5e-4 * 2


# --- Augmentations: the dicts training uses (config.aug), per recipe. -----------

BYOL = dict(crop_scale=(0.08, 1.0), flip_prob=0.5, jitter_prob=0.8, brightness=0.4,
            contrast=0.4, saturation=0.2, hue=0.1, grayscale_prob=0.2,
            blur_sigma=(0.1, 2.0), solarize_prob=(0.0, 0.2), blur_prob=(1.0, 0.1))
SIMCLR = dict(crop_scale=(0.08, 1.0), flip_prob=0.5, jitter_prob=0.8, brightness=0.8,
              contrast=0.8, saturation=0.8, hue=0.2, grayscale_prob=0.2,
              blur_sigma=(0.1, 2.0), solarize_prob=(0.0, 0.0), blur_prob=(0.5, 0.5))


@pytest.mark.parametrize("name,table", [("barlow_twins", BYOL), ("simclr", SIMCLR)])
@pytest.mark.parametrize("dataset", ["imagenet2012", "fashion_mnist",
                                     "cifar10_subset"])
def test_two_view_augmentations_training_uses(name, table, dataset):
  config = importlib.import_module(f"configs.ssl.{name}").get_config(
      f"dataset={dataset}")
  views = (config.aug.view1, config.aug.view2)
  rgb = config.input.channels == 3
  small = dataset != "imagenet2012"
  for i, view in enumerate(views):
    for key, value in table.items():
      if key in ("solarize_prob", "blur_prob"):
        value = value[i]
      if key in ("saturation", "hue", "grayscale_prob") and not rgb:
        value = 0.0  # No-ops on one channel.
      if small and key == "crop_scale":
        value = (0.2, 1.0)  # config_base.small_dataset_views says why.
      if small and key == "blur_sigma":
        value = (0.1, 1.0)
      assert tuple(np.atleast_1d(view[key])) == tuple(np.atleast_1d(value)), (
          name, dataset, i, key)


def test_mae_and_image_text_views():
  mae = importlib.import_module("configs.ssl.mae").get_config(IMAGENET).aug
  # He et al. 2022, Table 8: random resized crop (0.2, 1) and flip only.
  assert tuple(mae.crop_scale) == (0.2, 1.0) and mae.flip_prob == 0.5
  assert mae.jitter_prob == mae.blur_prob == mae.solarize_prob == 0.0
  # captioned_shapes: no flip or crop (they would change what the caption says).
  assert importlib.import_module("configs.ssl.clip").get_config(
      "dataset=captioned_shapes").aug is None
