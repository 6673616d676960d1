"""Shared parts of the SSL configs (Barlow Twins, SimCLR; MAE replaces the two-view
augmentations and the optimiser): dataset presets, backbones, augmentations,
optimiser, mesh, checkpointing and evals.

`get_base_config(arg, objective)` returns everything but the objective's own block;
each config in configs/ssl/ adds that block. Plain values, big_vision-style: the
configs stay data, this module only spares them copies of each other. Arg keys: `dataset` (a TFDS name
prepared in the data dir; presets for fashion_mnist and cifar10_subset), `model`
(cnn, resnet18, resnet50, vit_tiny, vit_ti, vit_s, vit_b), `res` (input size for other
datasets), `runlocal` (shrinks model, batch and steps so the real config runs in
seconds on a CPU).
"""
import ml_collections

from tandem.config_arg import parse_arg

# Per-dataset input settings: stored size, channels, normalisation statistics.
DATASETS = {
    "fashion_mnist": dict(image_size=28, channels=1, mean=(0.2860,), std=(0.3530,),
                          num_classes=10, train_split="train", test_split="test",
                          num_train=60000),
    "cifar10_subset": dict(image_size=32, channels=3, mean=(0.4914, 0.4822, 0.4465),
                           std=(0.2470, 0.2435, 0.2616), num_classes=10,
                           train_split="train", test_split="test", num_train=5085),
}
IMAGENET = dict(channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                num_classes=1000, train_split="train", test_split="validation",
                num_train=1281167)

MODELS = {
    # CPU-sized: two strided convs, then flatten -> Dense 512 (pre_logits); about
    # 750 image pairs/s for Barlow Twins at 28x28 on 2 CPU cores (bench/train_step.py).
    "cnn": ("cnn", dict(widths=(32, 64), strides=(2, 2), pool="flatten",
                        dense_dim=512)),
    "resnet18": ("resnet", dict(depth=18, width=1.0, stem="cifar")),
    "resnet50": ("resnet", dict(depth=50, width=1.0, stem="imagenet")),
    "vit_tiny": ("vit", dict(variant="tiny", patch_size=4, pool_type="gap")),
    "vit_ti": ("vit", dict(variant="Ti", patch_size=16, pool_type="cls")),
    "vit_s": ("vit", dict(variant="S", patch_size=16, pool_type="cls")),
    "vit_b": ("vit", dict(variant="B", patch_size=16, pool_type="cls")),
}


def get_base_config(arg, objective: str, *, default_model: str = "cnn"):
  """Returns (config, parsed arg, whether the dataset is a small CPU preset).

  `default_model`: the `model` when the arg names none (MAE needs a ViT).
  """
  arg = parse_arg(arg, dataset="fashion_mnist", model=default_model, res=224,
                  runlocal=False)
  if arg.model not in MODELS:
    raise ValueError(f"Unknown model {arg.model!r}; choose from {sorted(MODELS)}.")
  data = DATASETS.get(arg.dataset, dict(IMAGENET, image_size=arg.res))
  small = arg.dataset in DATASETS
  config = ml_collections.ConfigDict()
  config.objective = objective
  config.seed = 0

  config.dataset = arg.dataset
  config.data_dir = ""  # "" -> $TANDEM_DATA_DIR or ~/tensorflow_datasets.
  config.train_split = data["train_split"]
  config.input = dict(image_size=data["image_size"], channels=data["channels"],
                      mean=data["mean"], std=data["std"],
                      batch_size=256 if small else 2048)

  config.model_name, config.model = backbone(arg.model, small, arg.runlocal)

  # Augmentations (tandem.data.augment): BYOL's asymmetric views, which Barlow Twins
  # uses; SimCLR's config replaces them with its own (configs/ssl/simclr.py).
  config.aug = byol_views(rgb=data["channels"] == 3, small=small)

  if small:
    # This project's CPU recipe (docs/PROTOCOLS.md, "CPU presets"): AdamW suits the
    # 1,800-step schedule on 2 cores better than LARS; measured in README.
    config.total_steps = 1800  # About 7.7 epochs of Fashion-MNIST at batch 256.
    config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.999,
                            weight_decay=1e-4, grad_clip_norm=0.0)
    config.schedule = dict(warmup_steps=100, end_factor=0.0)
  else:
    # Barlow Twins (Zbontar et al. 2021, Sec. 4 "Implementation details" and the
    # authors' main.py): LARS, batch 2048, lr 0.2 (weights) and 0.0048 (biases and
    # BN) x batch/256, wd 1.5e-6, 1000 epochs, 10 of warm-up, cosine to 0.001 x peak.
    config.total_steps = 1000 * 1281167 // 2048  # 1000 epochs.
    config.optimizer = dict(name="lars", lr_per_256=0.2, bias_lr_per_256=0.0048,
                            weight_decay=1.5e-6, momentum=0.9, trust_coefficient=0.001,
                            grad_clip_norm=0.0)
    config.schedule = dict(warmup_steps=10 * 1281167 // 2048, end_factor=0.001)

  # Device mesh ({axis: size}, -1 = the rest) and parameter partition rules
  # ((regex, spec) pairs, first match wins; replicated by default).
  config.mesh = dict(data=-1, fsdp=1, model=1)
  config.partition_rules = [(".*", ())]

  config.log_every = 50
  config.checkpoint = dict(every=500, keep=2, async_save=True)
  # Linear probe on frozen pre_logits of the pretraining dataset; L2 chosen on a
  # validation split carved from train (never test).
  # Few-shot ridge and k-NN on the same features (extracted once for all three).
  splits = dict(dataset=arg.dataset, train_split=data["train_split"],
                test_split=data["test_split"], max_train=0, max_test=0,
                layer="pre_logits", batch_size=1024)
  config.evals = dict(
      every=0 if small else 10000,  # 0: only at the end.
      baselines=False,  # Also probe the random-init encoder and raw pixels at step 0.
      linear_probe=dict(**splits, num_val=min(10000, data["num_train"] // 6)),
      fewshot=dict(**splits, shots=(1, 5, 10, 25), seeds=(0, 1, 2)),
      knn=dict(**splits, ks=(20, 200), temperature=0.07))
  config.allow_config_change = False  # Resume even if the workdir's config differs.

  if arg.runlocal:
    shrink_for_runlocal(config)
  return config, arg, small


def byol_views(*, rgb: bool, small: bool) -> dict:
  """BYOL's two asymmetric views (Grill et al. 2020, Table 6), as Barlow Twins uses
  them (Zbontar et al. 2021, Appendix / the authors' `Transform`): crop (0.08, 1),
  flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, blur p 1.0 /
  0.1, solarize p 0 / 0.2. On one-channel data saturation, hue and grayscale are 0
  (they are no-ops there anyway). `small`: see `small_dataset_views`."""
  view = dict(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
              jitter_prob=0.8, brightness=0.4, contrast=0.4,
              saturation=0.2 if rgb else 0.0, hue=0.1 if rgb else 0.0,
              grayscale_prob=0.2 if rgb else 0.0, blur_prob=1.0,
              blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1, solarize_prob=0.0,
              solarize_threshold=0.5)
  views = dict(view1=view, view2=dict(view, blur_prob=0.1, solarize_prob=0.2))
  return small_dataset_views(views) if small else views


def small_dataset_views(views: dict) -> dict:
  """The 28x28 / 32x32 presets change two ImageNet settings, deliberately:
  - crop scale (0.2, 1) instead of (0.08, 1): an 8% crop of a 28-pixel image is
    ~8x8 pixels, too little of the object to match the other view (the CIFAR
    recipes of solo-learn and Mixed Barlow Twins use a larger minimum for the same
    reason);
  - blur sigma (0.1, 1) instead of (0.1, 2): the kernel is 3 pixels wide at this
    size (10% of the side, made odd), and sigma 2 over 3 pixels flattens the image
    to its local mean.
  """
  return {k: dict(v, crop_scale=(0.2, 1.0), blur_sigma=(0.1, 1.0))
          for k, v in views.items()}


def shrink_for_runlocal(config) -> None:
  """`runlocal`: batch 16, 2 steps, every step logged and saved, small probes."""
  config.input.batch_size = 16
  config.total_steps = 2
  config.schedule.warmup_steps = 1
  config.log_every = 1
  config.checkpoint.every = 1
  config.evals.every = 0
  for name in ("linear_probe", "fewshot", "knn"):
    if name in config.evals:
      config.evals[name].update(max_train=256, max_test=256)
  if "linear_probe" in config.evals:
    config.evals.linear_probe.num_val = 64
  if "fewshot" in config.evals:
    config.evals.fewshot.shots = (1, 5)


def backbone(name: str, small: bool, runlocal: bool) -> tuple[str, dict]:
  """(model module, kwargs) of backbone `name`: patch 4 / CIFAR stem for the small
  datasets, and a tiny version of it for `runlocal`."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose from {sorted(MODELS)}.")
  module, model = MODELS[name]
  model = dict(model)
  if small and name.startswith("vit"):
    model["patch_size"] = 4
  if small and name.startswith("resnet"):
    model["stem"] = "cifar"
  if runlocal:
    if name == "cnn":
      model = dict(widths=(8, 16), strides=(2, 2), pool="gap", dense_dim=0)
    elif name.startswith("resnet"):
      model["width"] = 0.125
    elif name.startswith("vit"):
      model = dict(variant="tiny", patch_size=model["patch_size"],
                   pool_type=model["pool_type"], width=32, depth=1, mlp_dim=64,
                   num_heads=2)
  return module, model
