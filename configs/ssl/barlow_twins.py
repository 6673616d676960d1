r"""Barlow Twins pretraining, this project's CPU recipe (the `make demo` run).

    python -m tandem.ssl.train --config configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/bt [--config.total_steps=2000 ...]

Arg keys: `dataset` (the CPU presets: fashion_mnist [default], cifar10_subset),
`model` (cnn [default], resnet18, resnet50, vit_tiny, vit_ti, vit_s, vit_b),
`runlocal` (shrinks model, batch and steps so the config runs in seconds on a CPU).
The paper's ImageNet recipe, for imagenet2012 or any other TFDS dataset, is
configs/ssl/barlow_twins_imagenet.py.

The recipe is this project's (docs/PROTOCOLS.md "CPU presets", measured in README):
AdamW, projector 1024-1024, loss x 0.1, and BYOL's views with crop scale (0.2, 1) and
blur sigma (0.1, 1) for 28/32-pixel images, for the reasons in
`configs/common.py:small_dataset_views`.

Mixed Barlow Twins (tandem/ssl/barlow_twins.py) is off by default. The authors'
CIFAR-10 recipe (Bandara et al. 2023, their `main.py` defaults for cifar10) is
mixup_loss_scale 4 with lambda = 1/128 and no 0.1 loss scale:

    --config.barlow_twins.mixup_loss_scale=4 --config.barlow_twins.lambd=0.0078125 \
        --config.barlow_twins.loss_scale=1.0

Switching on only `mixup_loss_scale=4` keeps this preset's lambda = 0.0051 and loss
scale 0.1 (the README's Mixed Barlow Twins number was measured that way): the
regulariser is then weighted 4 x 0.0051 instead of 4/128, and the whole loss x 0.1.
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", model="cnn", runlocal=False)
  data = common.preset(arg.dataset, common.DATASETS,
                       "configs/ssl/barlow_twins_imagenet.py")
  config = common.base("barlow_twins", arg.dataset, data,
                       train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)

  # Objective: lambda = 0.0051 (Zbontar et al. 2021); a 1024-1024 projector and the
  # loss x 0.1 (solo-learn's CIFAR scale) for the small CNN.
  config.barlow_twins = dict(
      projector_dims=(1024, 1024), lambd=0.0051, loss_scale=0.1,
      mixup_loss_scale=0.0,  # > 0: Mixed Barlow Twins' regulariser (off: 0).
      mixup_beta=1.0)  # Mixing coefficient alpha ~ Beta(mixup_beta, mixup_beta).

  # Optimiser: AdamW suits the 1,800-step schedule on 2 cores better than LARS
  # (docs/PROTOCOLS.md, "CPU presets"; measured in README).
  config.input.batch_size = 256
  config.total_steps = 1800  # About 7.7 epochs of Fashion-MNIST at batch 256.
  config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.999,
                          weight_decay=1e-4, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=100, end_factor=0.0)

  # Augmentations (tandem.data.augment): BYOL's asymmetric views, which Barlow Twins
  # uses, with the small-image crop scale and blur sigma.
  config.aug = common.byol_views(rgb=data["channels"] == 3, small=True)

  # Linear probe, few-shot and k-NN on frozen pre_logits, at the end of training.
  config.evals = common.probe_evals(arg.dataset, data, every=0)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.barlow_twins.projector_dims = (64, 64)
  return config
