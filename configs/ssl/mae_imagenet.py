r"""MAE pretraining (masked patches, pixel reconstruction; tandem/ssl/mae.py), the
paper's ImageNet recipe.

    python -m tandem.ssl.train --config configs/ssl/mae_imagenet.py:model=vit_b \
        --workdir /tmp/mae_b16

Arg keys: `dataset` (imagenet2012 [default], or any prepared TFDS image dataset; its
inputs get ImageNet's statistics), `model` (a ViT: vit_b [default], vit_tiny, vit_ti,
vit_s), `res` (input size, 224), `runlocal`. The CPU recipe on Fashion-MNIST /
CIFAR-10 is configs/ssl/mae.py.

The reference recipe (He et al. 2022, Table 8; docs/PROTOCOLS.md, "MAE"): mask 0.75,
norm_pix_loss, decoder 512 wide, 8 deep, 16 heads; AdamW beta = (0.9, 0.95), wd 0.05,
lr 1.5e-4 x batch/256 (batch 4096), 800 epochs with 40 of warm-up, cosine; crop
scale (0.2, 1) + flip; fixed sin-cos position embeddings in the encoder too.
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="imagenet2012", model="vit_b", res=224,
                  runlocal=False)
  if arg.model not in common.VITS:
    raise ValueError(f"MAE needs a ViT encoder: model must be one of "
                     f"{', '.join(common.VITS)}; got model={arg.model!r}.")
  data = dict(common.IMAGENET, image_size=arg.res)
  config = common.base("mae", arg.dataset, data, train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=False,
                                                    runlocal=arg.runlocal)
  config.model.posemb = "sincos2d"

  config.mae = dict(mask_ratio=0.75, norm_pix_loss=True,
                    decoder=dict(width=512, depth=8, mlp_dim=2048, num_heads=16))

  # He et al. 2022, Table 8: base lr 1.5e-4 x batch/256, AdamW (0.9, 0.95), wd 0.05,
  # batch 4096, 800 epochs with 40 of warm-up, cosine.
  config.input.batch_size = 4096
  config.total_steps = 800 * 1281167 // 4096
  config.optimizer = dict(name="adamw", lr_per_256=1.5e-4, b1=0.9, b2=0.95,
                          weight_decay=0.05, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=40 * 1281167 // 4096, end_factor=0.0)

  # One view: random resized crop (0.2, 1) + flip, no colour ops (tandem.data.augment).
  config.aug = common.view(crop_scale=(0.2, 1.0))

  # Linear probe, few-shot, k-NN and reconstructions of validation images every
  # 10,000 steps and at the end.
  config.evals = common.probe_evals(arg.dataset, data, every=10000)
  config.evals.reconstruction = dict(every=10000, module="tandem.ssl.mae",
                                     dataset=arg.dataset, split=data["test_split"],
                                     num_images=8)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.mae.decoder = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
  return config
