"""Shared parts of the image-text configs (CLIP, SigLIP): datasets with captions,
the two towers, optimiser and evals. Each config in configs/ssl/ adds its own block.

`get_image_text_config(arg, objective)` -> (config, parsed arg, small). Arg keys:
`dataset` (captioned_shapes [default], fashion_mnist or cifar10_subset with class-
name captions, or any prepared TFDS image-text dataset such as coco_captions),
`model` (image tower: cnn, resnet18, resnet50, vit_tiny, vit_ti, vit_s, vit_b),
`text` (text tower variant: tiny, B), `res`, `runlocal`.

Captions: captioned_shapes has its own ("two small red circles left of one large
blue square", at most 67 bytes); labelled datasets are captioned with CLIP-style class-name templates
(tandem/data/captions.py); coco_captions-like datasets take one of an image's
captions ("captions/text") at random each time. Byte-level tokens by default; set
`--config.input.text.tokenizer=sentencepiece:/path/to/model` for a SentencePiece
model. Captions longer than `max_len` tokens are cut and counted
(`data/captions_truncated` in the metrics).

Evals: zero-shot top-1 (class-name prompts averaged per class) and image<->text
Recall@K on held-out data, plus the linear probe of the image tower. On
captioned_shapes, zero-shot runs on the `test` split, whose every image shows a
colour-shape composition held out of training; retrieval runs on `validation`.
"""
import ml_collections

from tandem.config_arg import parse_arg
from tandem.ssl import config_base

DATASETS = {
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
    "fashion_mnist": dict(
        **{k: config_base.DATASETS["fashion_mnist"][k]
           for k in ("image_size", "channels", "mean", "std", "num_train")},
        text=dict(feature="", tokenizer="bytes", max_len=48),
        probe=dict(train_split="train", test_split="test"),
        zeroshot=dict(split="test", templates=()), retrieval=None),
    "cifar10_subset": dict(
        **{k: config_base.DATASETS["cifar10_subset"][k]
           for k in ("image_size", "channels", "mean", "std", "num_train")},
        text=dict(feature="", tokenizer="bytes", max_len=48),
        probe=dict(train_split="train", test_split="test"),
        zeroshot=dict(split="test", templates=()), retrieval=None),
}
# Any other dataset: real images with several captions each (coco_captions-like).
OTHER = dict(channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
             num_train=118287,
             text=dict(feature="captions/text", tokenizer="bytes", max_len=128),
             probe=None, zeroshot=None,
             retrieval=dict(split="val", text_feature="captions/text"))


def get_image_text_config(arg, objective: str):
  """Returns (config, parsed arg, whether the dataset is a small CPU preset)."""
  arg = parse_arg(arg, dataset="captioned_shapes", model="cnn", text="tiny", res=224,
                  runlocal=False)
  small = arg.dataset in DATASETS
  data = DATASETS.get(arg.dataset, dict(OTHER, image_size=arg.res))
  config = ml_collections.ConfigDict()
  config.objective = objective
  config.seed = 0

  config.dataset = arg.dataset
  config.data_dir = ""  # "" -> $TANDEM_DATA_DIR or ~/tensorflow_datasets.
  config.train_split = "train"
  config.input = dict(image_size=data["image_size"], channels=data["channels"],
                      mean=data["mean"], std=data["std"],
                      batch_size=256 if small else 32768, text=dict(data["text"]))

  config.model_name, config.model = config_base.backbone(arg.model, small,
                                                         arg.runlocal)
  config.text_model = dict(variant=arg.text, causal=True, pool_type="eos")
  config.embed_dim = 128 if small else 512

  # One lightly augmented view. None for captioned_shapes: a flip would swap
  # "left of" and "right of", a crop could cut shapes out of the count.
  if arg.dataset == "captioned_shapes":
    config.aug = None
  else:
    config.aug = dict(crop_scale=(0.5, 1.0), crop_ratio=(3 / 4, 4 / 3),
                      flip_prob=0.5, jitter_prob=0.0, brightness=0.0, contrast=0.0,
                      saturation=0.0, hue=0.0, grayscale_prob=0.0, blur_prob=0.0,
                      blur_sigma=(0.1, 2.0), blur_kernel_frac=0.1, solarize_prob=0.0,
                      solarize_threshold=0.5)

  if small:  # Sized for 2 CPU cores: ~4 epochs of captioned_shapes' 20,000 pairs.
    config.input.batch_size = 128
    config.total_steps = 600
    config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.98,
                            weight_decay=1e-4, grad_clip_norm=0.0)
    config.schedule = dict(warmup_steps=50, end_factor=0.0)
  elif objective == "siglip":
    # SigLIP (Zhai et al. 2023, Sec. 4): batch 32k, lr 1e-3 and weight decay 1e-4,
    # beta2 0.95 for stable large-batch training. big_vision's weight decay is
    # decoupled from the lr (big_vision/optax.py adds wd x params after the lr
    # scale), optax's adamw multiplies it by the lr: 1e-4 / 1e-3 = 0.1 here.
    # Warm-up: CLIP's 2,000 steps (not a SigLIP paper value).
    config.total_steps = 32 * 400_000_000 // 32768
    config.optimizer = dict(name="adamw", lr_abs=1e-3, b1=0.9, b2=0.95,
                            eps=1e-8, weight_decay=0.1, grad_clip_norm=0.0)
    config.schedule = dict(warmup_steps=2000, end_factor=0.0)
  else:
    # CLIP's ViT-B/32 recipe (Radford et al. 2021, Tables 19-20): batch 32,768,
    # 32 epochs of 400M pairs, lr 5e-4 as is (not per 256), Adam beta2 0.98 and
    # eps 1e-6 for ViTs, decoupled weight decay 0.2 (PyTorch AdamW, multiplied by
    # the lr as optax's), 2,000 warm-up steps, cosine.
    config.total_steps = 32 * 400_000_000 // 32768
    config.optimizer = dict(name="adamw", lr_abs=5e-4, b1=0.9, b2=0.98,
                            eps=1e-6, weight_decay=0.2, grad_clip_norm=0.0)
    config.schedule = dict(warmup_steps=2000, end_factor=0.0)

  config.mesh = dict(data=-1, fsdp=1, model=1)
  config.partition_rules = [(".*", ())]
  config.log_every = 50
  config.checkpoint = dict(every=500, keep=2, async_save=True)

  config.evals = dict(every=0 if small else 10000, baselines=False)
  if data["probe"]:
    config.evals.linear_probe = dict(
        dataset=arg.dataset, train_split=data["probe"]["train_split"],
        test_split=data["probe"]["test_split"],
        num_val=min(10000, data["num_train"] // 6), max_train=0, max_test=0,
        layer="pre_logits", batch_size=1024)
  if data["zeroshot"]:
    config.evals.zeroshot = dict(dataset=arg.dataset, **data["zeroshot"],
                                 max_examples=0, batch_size=1024)
  if data["retrieval"]:
    config.evals.retrieval = dict(dataset=arg.dataset, **data["retrieval"],
                                  max_examples=5000, batch_size=1024)
  config.allow_config_change = False

  if arg.runlocal:
    config_base.shrink_for_runlocal(config)
    config.embed_dim = 16
    config.text_model = dict(width=32, depth=1, mlp_dim=64, num_heads=2, variant=None,
                             causal=True, pool_type="eos")
    for name in ("zeroshot", "retrieval"):
      if name in config.evals:
        config.evals[name].max_examples = 64
  return config, arg, small
