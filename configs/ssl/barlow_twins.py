r"""Barlow Twins pretraining.

    python -m tandem.ssl.train --config configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/bt [--config.total_steps=2000 ...]

Arg keys (tandem/ssl/config_base.py): `dataset`, `model`, `res`, `runlocal`.

The CPU default (fashion_mnist + cnn) is the `make demo` recipe (this project's,
docs/PROTOCOLS.md "CPU presets": AdamW, projector 1024-1024, loss x 0.1, and BYOL's
views with crop scale (0.2, 1) and blur sigma (0.1, 1) for 28/32-pixel images, for the
reasons in `config_base.small_dataset_views`). Any other dataset
gets the paper's ImageNet recipe (Zbontar et al. 2021, Sec. 4; docs/PROTOCOLS.md,
"Barlow Twins"): projector 8192-8192-8192, lambda = 0.0051, LARS at lr 0.2 (weights)
and 0.0048 (biases, BN) x batch/256, batch 2048, wd 1.5e-6, 1000 epochs; BYOL's
asymmetric augmentations (config_base.byol_views).

Mixed Barlow Twins (tandem/ssl/barlow_twins.py) is off by default. The authors'
CIFAR-10 recipe (Bandara et al. 2023, their `main.py` defaults for cifar10) is
mixup_loss_scale 4 with lambda = 1/128 and no 0.1 loss scale:

    --config.barlow_twins.mixup_loss_scale=4 --config.barlow_twins.lambd=0.0078125 \
        --config.barlow_twins.loss_scale=1.0

Switching on only `mixup_loss_scale=4` keeps this preset's lambda = 0.0051 and loss
scale 0.1 (the README's Mixed Barlow Twins number was measured that way): the
regulariser is then weighted 4 x 0.0051 instead of 4/128, and the whole loss x 0.1.
"""
from tandem.ssl import config_base


def get_config(arg=None):
  config, arg, small = config_base.get_base_config(arg, "barlow_twins")
  config.barlow_twins = dict(
      projector_dims=(1024, 1024) if small else (8192, 8192, 8192),
      lambd=0.0051, loss_scale=0.1 if small else 1.0,
      mixup_loss_scale=0.0,  # > 0: Mixed Barlow Twins' regulariser (off: 0).
      mixup_beta=1.0)  # Mixing coefficient alpha ~ Beta(mixup_beta, mixup_beta).
  if arg.runlocal:
    config.barlow_twins.projector_dims = (64, 64)
  return config
