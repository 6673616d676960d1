r"""Barlow Twins pretraining.

    python -m tandem.ssl.train --config configs/ssl/barlow_twins.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/bt [--config.total_steps=2000 ...]

Arg keys (tandem/ssl/config_base.py): `dataset`, `model`, `res`, `runlocal`.

The CPU default (fashion_mnist + cnn) is the `make demo` recipe; the ImageNet-scale
reference settings of PROTOCOLS.md apply with `model=resnet50` and the `lars`
optimizer (projector 8192-8192-8192, lr 0.2 / 0.0048 per 256, wd 1.5e-6).

Mixed Barlow Twins (tandem/ssl/barlow_twins.py) is off by default; switch it on with
`--config.barlow_twins.mixup_loss_scale=4` (the authors' CIFAR-10 value; the term is
weighted by mixup_loss_scale x lambd).
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
