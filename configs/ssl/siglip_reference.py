r"""SigLIP pretraining (image and text towers, pairwise sigmoid loss), the paper's
recipe at scale.

    python -m tandem.ssl.train --config configs/ssl/siglip_reference.py:dataset=coco_captions,model=vit_b \
        --workdir /tmp/siglip_b

Arg keys, data, captions and evals as configs/ssl/clip_reference.py; temperature
and bias as configs/ssl/siglip.py. The CPU recipe on captioned_shapes is
configs/ssl/siglip.py.

SigLIP (Zhai et al. 2023, Sec. 4; docs/PROTOCOLS.md, "SigLIP"): batch 32k, lr 1e-3
absolute and weight decay 1e-4, beta2 0.95 for stable large-batch training.
big_vision's weight decay is decoupled from the lr (big_vision/optax.py adds wd x
params after the lr scale), optax's adamw multiplies it by the lr: 1e-4 / 1e-3 =
0.1 here. Warm-up: CLIP's 2,000 steps (not a SigLIP paper value).
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="coco_captions", model="vit_b", text="tiny", res=224,
                  runlocal=False)
  data = dict(common.COCO_LIKE, image_size=arg.res)
  config = common.base("siglip", arg.dataset, data, train_split="train")
  config.input.text = dict(data["text"])
  config.model_name, config.model = common.backbone(arg.model, small_images=False,
                                                    runlocal=arg.runlocal)
  config.text_model = dict(variant=arg.text, causal=True, pool_type="eos")
  config.embed_dim = 512

  config.siglip = dict(temperature_init=10.0, bias_init=-10.0)

  config.input.batch_size = 32768
  config.total_steps = 32 * 400_000_000 // 32768  # CLIP's 32 epochs of 400M pairs.
  config.optimizer = dict(name="adamw", lr_abs=1e-3, b1=0.9, b2=0.95,
                          eps=1e-8, weight_decay=0.1, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=2000, end_factor=0.0)

  # One lightly augmented view: random resized crop (0.5, 1) and flip.
  config.aug = common.view(crop_scale=(0.5, 1.0))

  # Retrieval every 10,000 steps and at the end (no labels: no probe, no zero-shot).
  config.evals = common.image_text_evals(arg.dataset, data, every=10000)

  if arg.runlocal:
    common.shrink_for_runlocal(config)  # Also the text tower and embedding.
  return config
