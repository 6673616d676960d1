"""What the configs in configs/ssl/ share: dataset presets, backbones, augmentation
views, the evaluator blocks, the run plumbing (mesh, checkpoints, logging) and the
`runlocal` shrink.

Plain values and small functions that return plain dicts, big_vision style: each
recipe file (configs/ssl/NAME.py: this project's CPU recipe on the dataset presets;
configs/ssl/NAME_imagenet.py, NAME_reference.py: the paper's recipe) states its own
objective block, optimiser, batch, steps, schedule, augmentations and evals, and
takes only these shared parts from here. Nothing here imports the library (loading
a config never imports JAX): configs import `from configs import common` and the
arg parser `tandem.config_arg.parse_arg`.
"""
import ml_collections

# --- Datasets -------------------------------------------------------------------

# The CPU presets (docs/PROTOCOLS.md, "CPU presets"): stored size, channels,
# normalisation statistics, splits.
DATASETS = {
    "fashion_mnist": dict(image_size=28, channels=1, mean=(0.2860,), std=(0.3530,),
                          num_classes=10, train_split="train", test_split="test",
                          num_train=60000),
    "cifar10_subset": dict(image_size=32, channels=3, mean=(0.4914, 0.4822, 0.4465),
                           std=(0.2470, 0.2435, 0.2616), num_classes=10,
                           train_split="train", test_split="test", num_train=5085),
}
# The reference recipes' datasets (imagenet2012 or any other TFDS image dataset):
# ImageNet's statistics, at the `res` the config arg gives.
IMAGENET = dict(channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                num_classes=1000, train_split="train", test_split="validation",
                num_train=1281167)

# Image-text CPU presets. Captions: captioned_shapes has its own ("two small red
# circles left of one large blue square", at most 67 bytes); the labelled datasets
# are captioned with CLIP-style class-name templates (tandem/data/captions.py).
IMAGE_TEXT_DATASETS = {
    "captioned_shapes": dict(
        image_size=32, channels=3, mean=(0.062, 0.059, 0.058),
        std=(0.242, 0.236, 0.233), num_train=20000,
        text=dict(feature="caption", tokenizer="bytes", max_len=72),
        # Probe labels: the composition (colour shape) of the first group; the test
        # split holds only held-out compositions, so the probe is scored on
        # validation.
        probe=dict(train_split="train", test_split="validation"),
        zeroshot=dict(split="test", templates=("one small {}", "one large {}")),
        retrieval=dict(split="validation", text_feature="caption")),
    **{name: dict(
        **{k: DATASETS[name][k]
           for k in ("image_size", "channels", "mean", "std", "num_train")},
        text=dict(feature="", tokenizer="bytes", max_len=48),
        probe=dict(train_split="train", test_split="test"),
        zeroshot=dict(split="test", templates=()), retrieval=None)
       for name in ("fashion_mnist", "cifar10_subset")},
}
# The image-text reference recipes' datasets: real images with several captions
# each (coco_captions-like); one of an image's captions ("captions/text") is taken at
# random each time. No class labels: no probe and no zero-shot.
COCO_LIKE = dict(channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 num_train=118287,
                 text=dict(feature="captions/text", tokenizer="bytes", max_len=128),
                 probe=None, zeroshot=None,
                 retrieval=dict(split="val", text_feature="captions/text"))


def preset(dataset: str, presets: dict, reference_config: str | None) -> dict:
  """`presets[dataset]`, or a ValueError naming the reference config to use (None:
  the objective has no reference recipe here yet)."""
  if dataset not in presets and reference_config is None:
    raise ValueError(
        f"dataset={dataset!r} has no CPU preset in this config (presets: "
        f"{', '.join(presets)}), and this objective has no reference recipe for "
        "other datasets yet.")
  if dataset not in presets:
    raise ValueError(
        f"dataset={dataset!r} has no CPU preset in this config (presets: "
        f"{', '.join(presets)}). For the paper's recipe on any TFDS dataset use "
        f"--config {reference_config}:dataset={dataset}")
  return presets[dataset]


# --- Backbones ------------------------------------------------------------------

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
VITS = tuple(m for m in MODELS if m.startswith("vit"))


def backbone(name: str, *, small_images: bool, runlocal: bool) -> tuple[str, dict]:
  """(model module, kwargs) of backbone `name`: patch 4 / CIFAR stem for 28- and
  32-pixel images (`small_images`), and a tiny version of it for `runlocal`."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose from {sorted(MODELS)}.")
  module, model = MODELS[name]
  model = dict(model)
  if small_images and name.startswith("vit"):
    model["patch_size"] = 4
  if small_images and name.startswith("resnet"):
    model["stem"] = "cifar"
  if runlocal:
    if name == "cnn":
      model = dict(widths=(8, 16), strides=(2, 2), pool="gap", dense_dim=0)
    elif name.startswith("resnet"):
      model["width"] = 0.125
      if model["depth"] < 50:  # Basic blocks: every stage, one block each.
        model["depth"] = 10
    elif name.startswith("vit"):
      model = dict(variant="tiny", patch_size=model["patch_size"],
                   pool_type=model["pool_type"], width=32, depth=1, mlp_dim=64,
                   num_heads=2)
  return module, model


# --- Augmentations (tandem.data.augment reads these 14 keys per view) ------------

# A random resized crop with Inception's area and aspect ranges, a horizontal flip
# with p 0.5, every colour op, blur and solarize off: each recipe's view is this
# with its own changes (`view(...)`).
CROP_FLIP = dict(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
                 jitter_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                 hue=0.0, grayscale_prob=0.0, blur_prob=0.0, blur_sigma=(0.1, 2.0),
                 blur_kernel_frac=0.1, solarize_prob=0.0, solarize_threshold=0.5)


def view(**changes) -> dict:
  """`CROP_FLIP` with `changes` (an unknown key is an error)."""
  unknown = sorted(set(changes) - set(CROP_FLIP))
  if unknown:
    raise ValueError(f"Unknown augmentation keys {unknown}; keys: {list(CROP_FLIP)}.")
  return dict(CROP_FLIP, **changes)


def byol_views(*, rgb: bool, small: bool) -> dict:
  """BYOL's two asymmetric views (Grill et al. 2020, Table 6), as Barlow Twins uses
  them (Zbontar et al. 2021, Appendix / the authors' `Transform`): crop (0.08, 1),
  flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, blur p 1.0 /
  0.1, solarize p 0 / 0.2. On one-channel data saturation, hue and grayscale are 0
  (they are no-ops there anyway). `small`: see `small_dataset_views`."""
  view1 = view(jitter_prob=0.8, brightness=0.4, contrast=0.4,
               saturation=0.2 if rgb else 0.0, hue=0.1 if rgb else 0.0,
               grayscale_prob=0.2 if rgb else 0.0, blur_prob=1.0)
  views = dict(view1=view1, view2=dict(view1, blur_prob=0.1, solarize_prob=0.2))
  return small_dataset_views(views) if small else views


def simclr_views(*, rgb: bool, small: bool) -> dict:
  """SimCLR's views (Chen et al. 2020, Appendix A), identical for both: BYOL's view 1
  (same crop, flip, jitter and grayscale probabilities, blur sigma) with colour
  jitter strength s = 1, i.e. brightness, contrast, saturation 0.8 and hue 0.2, and
  blur p 0.5; no solarize (tests/test_recipes.py pins every value). Brightness is
  torchvision's multiplicative factor (the TF code adds a delta)."""
  one = dict(byol_views(rgb=rgb, small=small)["view1"],
             brightness=0.8, contrast=0.8, saturation=0.8 if rgb else 0.0,
             hue=0.2 if rgb else 0.0, blur_prob=0.5)
  return dict(view1=one, view2=dict(one))


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


# --- Config skeleton and evals --------------------------------------------------

def base(objective: str, dataset: str, data: dict, *, train_split: str) -> \
    ml_collections.ConfigDict:
  """The fields every pretraining run has that are not part of a recipe: seed,
  dataset and input statistics (the recipe sets `input.batch_size`), device mesh,
  partition rules, logging and checkpoint cadence."""
  config = ml_collections.ConfigDict()
  config.objective = objective
  config.seed = 0
  config.dataset = dataset
  config.data_dir = ""  # "" -> $TANDEM_DATA_DIR or ~/tensorflow_datasets.
  config.train_split = train_split
  config.input = dict(image_size=data["image_size"], channels=data["channels"],
                      mean=data["mean"], std=data["std"], batch_size=0)
  # Device mesh ({axis: size}, -1 = the rest) and parameter partition rules
  # ((regex, spec) pairs, first match wins; replicated by default).
  # Compute precision: "float32", or "bfloat16" for matmuls, convolutions and
  # activations with float32 parameters, statistics and losses
  # (`tandem.models.compute_dtype`).
  config.precision = "float32"
  # Sharding: a preset ("dp", "fsdp", "fsdp_tp": tandem.parallel.preset_mesh and
  # preset_rules; FSDP shards parameters of at least fsdp_min_size_mb), or "" for
  # the mesh and rules below.
  config.sharding = ""
  # > 1: each batch in that many micro-batches, with the whole batch's loss and
  # gradient (tandem.train_state.accumulate; batch-norm statistics per micro-batch).
  config.grad_accum_steps = 1
  config.fsdp_min_size_mb = 4.0
  config.mesh = dict(data=-1, fsdp=1, model=1)
  config.partition_rules = [(".*", ())]
  config.log_every = 50
  # The last `keep` checkpoints are kept; with keep_every > 0 also every one whose
  # step is a multiple of it (a trajectory for notebooks; tandem.analysis.steps).
  config.checkpoint = dict(every=500, keep=2, keep_every=0, async_save=True)
  config.allow_config_change = False  # Resume even if the workdir's config differs.
  # Matryoshka representations (Kusupati et al. 2022): the loss also on these nested
  # prefixes of pre_logits, e.g. (8, 16, 32, 64, 128, 256), and the linear probe on
  # each (barlow_twins, simclr and vicreg; tandem/ssl/siamese.py). () = off.
  config.matryoshka_dims = ()
  return config


def probe_evals(dataset: str, data: dict, *, every: int) -> dict:
  """Linear probe on frozen pre_logits of the pretraining dataset (L2 chosen on a
  validation split carved from train, never test), few-shot ridge and k-NN on the
  same features (extracted once for all), and the label-free scores (RankMe,
  alpha-ReQ, uniformity, collapse) of 10000 of its training examples. `every`:
  steps between evaluations (0: only at the end of training)."""
  splits = dict(dataset=dataset, train_split=data["train_split"],
                test_split=data["test_split"], max_train=0, max_test=0,
                layer="pre_logits", batch_size=1024)
  return dict(
      linear_probe=dict(
          every=every,
          # True: also probe the random-init encoder and raw pixels at step 0.
          baselines=False,
          # Also probe these prefixes of the layer (its first m dimensions); ():
          # config.matryoshka_dims.
          prefixes=(),
          **splits, num_val=min(10000, data["num_train"] // 6)),
      fewshot=dict(every=every, **splits, shots=(1, 5, 10, 25), seeds=(0, 1, 2)),
      knn=dict(every=every, **splits, ks=(20, 200), temperature=0.07),
      # Its own 10000 images (seeded): cheap enough to run more often than the probes.
      label_free=dict(every=every, **{**splits, "max_train": 10000}))


def image_text_evals(dataset: str, data: dict, *, every: int) -> dict:
  """Zero-shot top-1 (class-name prompts averaged per class) and image<->text
  Recall@K on held-out data, plus the linear probe of the image tower, as far as
  the dataset has labels and captions. On captioned_shapes, zero-shot runs on the
  `test` split, whose every image shows a colour-shape composition held out of
  training; retrieval runs on `validation`."""
  evals = {}
  if data["probe"]:
    evals["linear_probe"] = probe_evals(dataset, dict(data, **data["probe"]),
                                        every=every)["linear_probe"]
  if data["zeroshot"]:
    evals["zeroshot"] = dict(every=every, dataset=dataset, **data["zeroshot"],
                             max_examples=0, batch_size=1024)
  if data["retrieval"]:
    evals["retrieval"] = dict(every=every, dataset=dataset, **data["retrieval"],
                              max_examples=5000, batch_size=1024)
  return evals


def shrink_for_runlocal(config) -> None:
  """`runlocal`: batch 16, 2 steps, every step logged and saved, evals only at the
  end on small subsets; image-text configs also get a tiny text tower and embedding.
  Recipes shrink their own heads (projectors, decoders) after calling this."""
  config.input.batch_size = 16
  config.total_steps = 2
  config.schedule.warmup_steps = 1
  config.log_every = 1
  config.checkpoint.every = 1
  for block in config.evals.values():
    block.every = 0
  for name in ("linear_probe", "fewshot", "knn", "label_free"):
    if name in config.evals:
      config.evals[name].update(max_train=256, max_test=256)
  if "linear_probe" in config.evals:
    config.evals.linear_probe.num_val = 64
  if "fewshot" in config.evals:
    config.evals.fewshot.shots = (1, 5)
  for name in ("zeroshot", "retrieval"):
    if name in config.evals:
      config.evals[name].max_examples = 64
  if "text_model" in config:
    config.embed_dim = 16
    config.text_model = dict(width=32, depth=1, mlp_dim=64, num_heads=2, variant=None,
                             causal=True, pool_type="eos")
