"""Recipes against the papers: every config's effective peak learning rate and the
augmentations training really uses, for every `dataset=`/`model=` variant; configs
are data (loading one imports no JAX) and the fine-tuning recipe has one value."""
import importlib
import json
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import common
from tandem import config_arg
from tandem import optimizers
from tandem.transfer import finetune

from conftest import ROOT

IMAGENET = "dataset=imagenet2012"
COCO = "dataset=coco_captions"
SMALL = ("dataset=fashion_mnist", "dataset=cifar10_subset")
BT_PATH = os.path.join(ROOT, "configs/ssl/barlow_twins.py")
BT = f"--config={BT_PATH}"
# (config, dataset arg) -> (peak lr of the weights, peak lr of LARS's biases, source).
# Peak = the rate after warm-up, for the config's own global batch. NAME_imagenet.py
# and NAME_reference.py are the papers' recipes, NAME.py this project's CPU recipe.
PUBLISHED = {
    ("barlow_twins_imagenet", IMAGENET): (
        0.2 * 2048 / 256, 0.0048 * 2048 / 256,
        "Zbontar et al. 2021, Sec. 4: LARS, lr 0.2 weights / 0.0048 biases x B/256, "
        "B = 2048; facebookresearch/barlowtwins main.py"),
    ("simclr_imagenet", IMAGENET): (
        4.8, 4.8,
        "Chen et al. 2020, Sec. 2.3: 'LARS with learning rate of 4.8 "
        "(= 0.3 x BatchSize/256)', batch 4096"),
    ("mae_imagenet", IMAGENET): (
        1.5e-4 * 4096 / 256, None,
        "He et al. 2022, Table 8: base lr 1.5e-4, lr = base x batch/256, batch 4096"),
    ("clip_reference", COCO): (
        5e-4, None,
        "Radford et al. 2021, Tables 19-20: ViT-B/32 lr 5e-4 at batch 32,768"),
    ("siglip_reference", COCO): (
        1e-3, None, "Zhai et al. 2023, Sec. 4: lr 1e-3 at batch 32k"),
    # The CPU presets are this project's recipes (docs/PROTOCOLS.md, "CPU presets"),
    # measured in README: AdamW 1e-3 per 256 (MAE 1.5e-3 per 256).
    **{(name, small): (1e-3 * 256 / 256, None, "CPU preset, batch 256")
       for name in ("barlow_twins", "simclr", "byol", "vicreg", "moco_v3",
                    "dino")
       for small in SMALL},
    **{("mae", small): (1.5e-3 * 256 / 256, None, "CPU preset, batch 256")
       for small in SMALL},
    **{(name, small): (1e-3 * 128 / 256, None, "CPU preset, batch 128")
       for name in ("clip", "siglip")
       for small in SMALL + ("dataset=captioned_shapes",)},
}
MODELS = {name: common.VITS if name.startswith("mae") else tuple(common.MODELS)
          for name, _ in PUBLISHED}


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
  names = {p.stem for p in __import__("pathlib").Path(ROOT, "configs/ssl").glob("*.py")
           if p.stem != "__init__"}
  assert names == {name for name, _ in PUBLISHED}


@pytest.mark.parametrize("name,reference,dataset", [
    ("barlow_twins", "barlow_twins_imagenet", "imagenet2012"),
    ("simclr", "simclr_imagenet", "imagenet2012"),
    ("mae", "mae_imagenet", "cifar10"),
    ("clip", "clip_reference", "coco_captions"),
    ("siglip", "siglip_reference", "coco_captions")])
def test_cpu_config_refuses_other_datasets_and_names_the_papers_config(
    name, reference, dataset):
  with pytest.raises(ValueError, match=f"no CPU preset.*configs/ssl/{reference}.py"
                                       f":dataset={dataset}"):
    importlib.import_module(f"configs.ssl.{name}").get_config(f"dataset={dataset}")


def test_every_evaluator_has_its_own_cadence():
  """`every` per evaluator block (0: only at the end; the papers' recipes 10,000,
  runlocal 0); the linear probe's baselines are off by default."""
  for (name, dataset), _ in PUBLISHED.items():
    for runlocal in (False, True):
      config = importlib.import_module(f"configs.ssl.{name}").get_config(
          dataset + (",runlocal" if runlocal else ""))
      assert "every" not in config.evals and "baselines" not in config.evals
      assert config.evals, name
      paper = name.endswith(("_imagenet", "_reference"))
      for block in config.evals.values():
        assert block.every == (10000 if paper and not runlocal else 0), (name, block)
      if "linear_probe" in config.evals:
        assert config.evals.linear_probe.baselines is False


def test_loading_any_config_imports_no_jax_from_any_directory(tmp_path):
  """Every config file loads through `config_arg.load_config` with only the config
  helpers imported: no JAX, optax or TFDS, and `from configs import common` works
  from another working directory (the loader puts the checkout on sys.path)."""
  specs = [f"{ROOT}/configs/ssl/{name}.py:{dataset}{suffix}"
           for name, dataset in PUBLISHED for suffix in ("", ",runlocal")]
  specs += [f"{ROOT}/configs/ssl/{name}.py" for name in {n for n, _ in PUBLISHED}]
  specs += [f"{ROOT}/configs/transfer/vtab.py{arg}"
            for arg in ("", ":runlocal", ":suite=vtab1k,evaluators=finetune")]
  script = (
      "import json, sys\n"
      "from tandem import config_arg\n"
      f"sys.path[:] = [p for p in sys.path if p not in ('', {ROOT!r})]\n"
      "configs = [config_arg.load_config(s) for s in json.loads(sys.argv[1])]\n"
      "heavy = sorted(m for m in ('jax', 'optax', 'flax', 'tensorflow_datasets',\n"
      "                           'tensorflow') if m in sys.modules)\n"
      "print(json.dumps([len(configs), heavy]))\n")
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", script, json.dumps(specs)],
                        cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout.splitlines()[-1]) == [len(specs), []]


def test_loader_names_and_paths():
  path = BT_PATH
  assert config_arg.split_config_spec(f"{path}:dataset=a,b=c:d") == (
      path, "dataset=a,b=c:d")
  assert config_arg.split_config_spec(path) == (path, None)
  assert config_arg.load_config(path).dataset == "fashion_mnist"
  assert config_arg.load_config(f"{path}:runlocal").total_steps == 2
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_arg.load_config(os.path.join(ROOT, "configs/ssl/nope.py"))


def _parse_command_line(*args):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
  config_arg.parse_flags(flag_values, ["prog", *args])
  return flag_values


def test_command_line_loads_the_config_and_applies_overrides():
  fv = _parse_command_line(
      "--config", f"{BT_PATH}:dataset=fashion_mnist,model=cnn",
      "--config.total_steps=3000", "--config.evals.linear_probe.baselines=True",
      "--workdir=/tmp/bt")
  assert (fv.config.total_steps, fv.config.evals.linear_probe.baselines,
          fv.workdir) == (3000, True, "/tmp/bt")
  assert fv.config.optimizer.lr_per_256 == 1e-3 and fv.config.is_locked
  assert _parse_command_line("--workdir=/tmp/bt").config is None  # Usage message.


@pytest.mark.parametrize("args,message", [
    ((f"{BT}:runlocal", "--config.optimizer.lr=0.1"), re.escape(
        "Error: unknown config key 'optimizer.lr' (no such field under optimizer; "
        "fields there: b1, b2, grad_clip_norm, lr_per_256, name, weight_decay)")),
    ((f"{BT}:runlocal,size=3",),
     "Error: could not load config .*Unknown config arg 'size'"),
    ((f"--config={ROOT}/configs/ssl/simclr.py:dataset=imagenet2012",),
     "no CPU preset.*--config configs/ssl/simclr_imagenet.py:dataset=imagenet2012"),
    ((BT, "--config.total_steps=many"),
     "Error: IllegalFlagValueError: flag --config.total_steps=many")])
def test_command_line_errors_are_one_line_and_say_what_to_fix(args, message):
  with pytest.raises(SystemExit) as exit_info:
    _parse_command_line(*args)
  text = str(exit_info.value.code)
  assert "\n" not in text and re.search(message, text), text


def test_clip_and_siglip_adam_settings():
  clip = importlib.import_module("configs.ssl.clip_reference").get_config(
      COCO).optimizer
  # Radford et al. 2021, Table 19: beta2 0.98 and eps 1e-6 for ViTs, wd 0.2.
  assert (clip.b2, clip.eps, clip.weight_decay) == (0.98, 1e-6, 0.2)
  siglip = importlib.import_module("configs.ssl.siglip_reference").get_config(
      COCO).optimizer
  # big_vision's decoupled wd 1e-4 at lr 1e-3 is optax's wd x lr: 0.1.
  np.testing.assert_allclose(siglip.weight_decay * siglip.lr_abs, 1e-4)


def test_finetune_peak_learning_rate_is_bits():
  """BiT-HyperRule (Kolesnikov et al. 2020, Sec. 3.3): SGD, lr 0.003 at batch 512,
  scaled linearly with the batch."""
  ft = finetune.default_config()
  assert ft.lr_per_512 == 0.003
  assert finetune.plan(50_000, ft)["peak_lr"] == pytest.approx(0.003)
  assert finetune.plan(128, ft)["peak_lr"] == pytest.approx(0.003 * 128 / 512)


def test_transfer_config_states_the_finetune_defaults_field_for_field():
  """configs/transfer/vtab.py writes BiT-HyperRule out; it cannot drift from the
  library's `finetune.default_config()` (same fields, values and types)."""
  block = importlib.import_module("configs.transfer.vtab").get_config().finetune
  default = finetune.default_config()
  assert list(block) == list(default)
  for key in default:
    assert type(block[key]) is type(default[key]), key
    assert block[key] == default[key], key


@pytest.mark.parametrize("arg,message", [
    ("fashion_mnist,no_such_task", "Unknown task 'no_such_task'"),
    ("evaluators=knn+no_such_evaluator", "Unknown evaluators ['no_such_evaluator']")])
def test_transfer_config_passes_names_through_and_the_runner_checks_them(
    arg, message, tmp_path):
  from tandem.transfer import run  # pylint: disable=g-import-not-at-top
  config = config_arg.load_config(f"{ROOT}/configs/transfer/vtab.py:{arg}")
  config.checkpoint = str(tmp_path / "never_read")
  with pytest.raises(ValueError, match=re.escape(message)):
    run.run(config)


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
  if dataset == "imagenet2012":
    name += "_imagenet"
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
        value = (0.2, 1.0)  # configs/common.py:small_dataset_views says why.
      if small and key == "blur_sigma":
        value = (0.1, 1.0)
      assert tuple(np.atleast_1d(view[key])) == tuple(np.atleast_1d(value)), (
          name, dataset, i, key)


def test_mae_and_image_text_views():
  mae = importlib.import_module("configs.ssl.mae_imagenet").get_config(IMAGENET).aug
  # He et al. 2022, Table 8: random resized crop (0.2, 1) and flip only.
  assert tuple(mae.crop_scale) == (0.2, 1.0) and mae.flip_prob == 0.5
  assert mae.jitter_prob == mae.blur_prob == mae.solarize_prob == 0.0
  # captioned_shapes: no flip or crop (they would change what the caption says).
  assert importlib.import_module("configs.ssl.clip").get_config(
      "dataset=captioned_shapes").aug is None
