r"""SimCLR pretraining (NT-Xent over the global batch).

    python -m tandem.ssl.train --config configs/ssl/simclr.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/simclr

Arg keys (tandem/ssl/config_base.py): `dataset`, `model`, `res`, `runlocal`.
Projector 2048 -> 128 and τ = 0.2 at ImageNet scale (PROTOCOLS.md); a smaller hidden
layer on the CPU presets.
"""
from tandem.ssl import config_base


def get_config(arg=None):
  config, arg, small = config_base.get_base_config(arg, "simclr")
  config.simclr = dict(projector_dims=(1024, 128) if small else (2048, 128),
                       temperature=0.2)
  if arg.runlocal:
    config.simclr.projector_dims = (64, 32)
  return config
