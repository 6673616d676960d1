r"""MAE pretraining (masked patches, pixel reconstruction; tandem/ssl/mae.py), this
project's CPU recipe.

    python -m tandem.ssl.train --config configs/ssl/mae.py:dataset=fashion_mnist \
        --workdir /tmp/mae

Arg keys: `dataset` (the CPU presets: fashion_mnist [default], cifar10_subset),
`model` (a ViT: vit_tiny [default], vit_ti, vit_s, vit_b), `runlocal`. The paper's
ImageNet recipe is configs/ssl/mae_imagenet.py.

vit_tiny (96 wide, 4 deep, patch 4, mean-pooled tokens) and a 64-wide, 2-deep
decoder; the paper's mask, loss and optimiser (configs/ssl/mae_imagenet.py), with a
higher base learning rate for the short schedule (docs/PROTOCOLS.md, "CPU presets").
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", model="vit_tiny", runlocal=False)
  if arg.model not in common.VITS:
    raise ValueError(f"MAE needs a ViT encoder: model must be one of "
                     f"{', '.join(common.VITS)}; got model={arg.model!r}.")
  data = common.preset(arg.dataset, common.DATASETS, "configs/ssl/mae_imagenet.py")
  config = common.base("mae", arg.dataset, data, train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)
  config.model.posemb = "sincos2d"  # Fixed sin-cos position embeddings (as MAE's).

  # The paper's mask and loss (He et al. 2022); a small decoder for 49 patches.
  config.mae = dict(mask_ratio=0.75, norm_pix_loss=True,
                    decoder=dict(width=64, depth=2, mlp_dim=256, num_heads=2))

  # The paper's optimiser (AdamW (0.9, 0.95), wd 0.05) at batch 256 for 1200 steps
  # (5.1 epochs of Fashion-MNIST; measured 215 images/s, 24 min, on 2 CPU cores
  # shared with other jobs), base lr per 256 examples 10x the reference's 1.5e-4 for
  # the short schedule, 100 warm-up steps.
  config.input.batch_size = 256
  config.total_steps = 1200
  config.optimizer = dict(name="adamw", lr_per_256=1.5e-3, b1=0.9, b2=0.95,
                          weight_decay=0.05, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=100, end_factor=0.0)

  # One view: random resized crop (0.2, 1) + flip, no colour ops (tandem.data.augment).
  config.aug = common.view(crop_scale=(0.2, 1.0))

  # Linear probe, few-shot, k-NN and reconstructions of test images, at the end.
  config.evals = common.probe_evals(arg.dataset, data, every=0)
  config.evals.reconstruction = dict(every=0, module="tandem.ssl.mae",
                                     dataset=arg.dataset, split=data["test_split"],
                                     num_images=8)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.mae.decoder = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
  return config
