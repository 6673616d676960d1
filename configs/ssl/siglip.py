r"""SigLIP pretraining (image and text towers, pairwise sigmoid loss).

    python -m tandem.ssl.train --config configs/ssl/siglip.py:dataset=captioned_shapes \
        --workdir /tmp/siglip [--config.total_steps=3000 ...]

Arg keys as configs/ssl/clip.py (tandem/ssl/image_text_config.py). Learned
temperature t = exp(t') with t' initialised to log(temperature_init) = log 10, and
a learned bias initialised to bias_init = -10 (Zhai et al. 2023). The loss sums
over the N² pairs and divides by N (the paper's Algorithm 1).

Recipe at scale: lr 1e-3 absolute for batch 32k, beta2 0.95, big_vision's decoupled
wd 1e-4 (0.1 in optax's convention) (tandem/ssl/image_text_config.py;
docs/PROTOCOLS.md).
"""
from tandem.ssl import image_text_config


def get_config(arg=None):
  config, arg, small = image_text_config.get_image_text_config(arg, "siglip")
  config.siglip = dict(temperature_init=10.0, bias_init=-10.0)
  return config
