r"""CLIP pretraining (image and text towers, symmetric contrastive loss).

    python -m tandem.ssl.train --config configs/ssl/clip.py:dataset=captioned_shapes \
        --workdir /tmp/clip [--config.total_steps=3000 ...]

Arg keys (tandem/ssl/image_text_config.py): `dataset` (captioned_shapes, or
fashion_mnist / cifar10_subset with class-name captions, or a prepared image-text
TFDS dataset such as coco_captions), `model` (image tower), `text` (tiny, B),
`res`, `runlocal`. Prepare captioned_shapes first:
`python -m tandem.data.prepare --dataset captioned_shapes`.

Temperature: learned logit scale exp(t), initialised to 1/temperature_init (CLIP:
1/0.07); the parameter t is clamped to [0, log max_logit_scale] (100) after every
update, as open_clip does (tandem/ssl/clip.py).

Recipe: at scale (any dataset without a CPU preset, e.g. coco_captions) CLIP's
ViT-B/32 settings, AdamW at lr 5e-4 absolute (not per 256) for batch 32,768, beta2
0.98, eps 1e-6, wd 0.2 (tandem/ssl/image_text_config.py; docs/PROTOCOLS.md).
"""
from tandem.ssl import image_text_config


def get_config(arg=None):
  config, arg, small = image_text_config.get_image_text_config(arg, "clip")
  config.clip = dict(temperature_init=0.07, max_logit_scale=100.0)
  return config
