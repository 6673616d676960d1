r"""MAE pretraining (masked patches, pixel reconstruction; tandem/ssl/mae.py).

    python -m tandem.ssl.train --config configs/ssl/mae.py:dataset=fashion_mnist \
        --workdir /tmp/mae
    python -m tandem.ssl.train --config configs/ssl/mae.py:dataset=imagenet2012,model=vit_b \
        --workdir /tmp/mae_b16

Arg keys (tandem/ssl/config_base.py): `dataset`, `model` (a ViT: vit_tiny, the
default, vit_ti, vit_s, vit_b), `res`, `runlocal`.

ImageNet: the reference recipe (docs/PROTOCOLS.md): mask 0.75, norm_pix_loss, decoder 512
wide, 8 deep, 16 heads; AdamW β = (0.9, 0.95), wd 0.05, lr 1.5e-4 × batch/256 (batch
4096), 800 epochs with 40 of warm-up, cosine; crop scale (0.2, 1) + flip; fixed
sin-cos position embeddings in the encoder too.

CPU presets (fashion_mnist, cifar10_subset): vit_tiny (96 wide, 4 deep, patch 4,
mean-pooled tokens) and a 64-wide, 2-deep decoder, same mask, loss and optimiser,
with a higher base learning rate for the short schedule (SMALL below).
"""
from tandem.ssl import config_base

SUPPORTED_MODELS = tuple(m for m in config_base.MODELS if m.startswith("vit"))

# The CPU recipe at batch 256: 1200 steps (5.1 epochs of Fashion-MNIST; measured 215
# images/s, 24 min, on 2 CPU cores shared with other jobs), base lr per 256 examples
# 10x the reference's for the short schedule, 100 warm-up steps.
SMALL = dict(total_steps=1200, lr_per_256=1.5e-3, warmup_steps=100,
             decoder=dict(width=64, depth=2, mlp_dim=256, num_heads=2))


def get_config(arg=None):
  config, arg, small = config_base.get_base_config(arg, "mae", default_model="vit_tiny")
  if arg.model not in SUPPORTED_MODELS:
    raise ValueError(f"MAE needs a ViT encoder: model must be one of "
                     f"{', '.join(SUPPORTED_MODELS)}; got model={arg.model!r}.")
  config.model.posemb = "sincos2d"
  config.mae = dict(mask_ratio=0.75, norm_pix_loss=True,
                    decoder=dict(width=512, depth=8, mlp_dim=2048, num_heads=16))
  # One view: random resized crop + flip, no colour ops (tandem.data.augment).
  config.aug = dict(crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
                    jitter_prob=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
                    hue=0.0, grayscale_prob=0.0, blur_prob=0.0, blur_sigma=(0.1, 2.0),
                    blur_kernel_frac=0.1, solarize_prob=0.0, solarize_threshold=0.5)
  # He et al. 2022, Table 8: base lr 1.5e-4 x batch/256, AdamW (0.9, 0.95), wd 0.05.
  config.optimizer = dict(name="adamw", lr_per_256=1.5e-4, b1=0.9, b2=0.95,
                          weight_decay=0.05, grad_clip_norm=0.0)
  if small:
    config.total_steps = SMALL["total_steps"]
    config.optimizer.lr_per_256 = SMALL["lr_per_256"]
    config.schedule = dict(warmup_steps=SMALL["warmup_steps"], end_factor=0.0)
    config.mae.decoder = dict(SMALL["decoder"])
  else:
    config.input.batch_size = 4096
    config.total_steps = 800 * 1281167 // 4096
    config.schedule = dict(warmup_steps=40 * 1281167 // 4096, end_factor=0.0)

  data = config.evals.linear_probe
  config.evals.reconstruction = dict(module="tandem.ssl.mae", dataset=data.dataset,
                                     split=data.test_split, num_images=8)
  if arg.runlocal:  # config_base shrank the rest; undo the recipe's sizes above.
    config.input.batch_size = 16
    config.total_steps = 2
    config.schedule.warmup_steps = 1
    config.mae.decoder = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
  return config
