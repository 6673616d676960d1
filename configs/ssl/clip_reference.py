r"""CLIP pretraining (image and text towers, symmetric contrastive loss), the paper's
recipe at scale.

    python -m tandem.ssl.train --config configs/ssl/clip_reference.py:dataset=coco_captions,model=vit_b \
        --workdir /tmp/clip_b

Arg keys: `dataset` (coco_captions [default], or any prepared image-text TFDS
dataset with several captions per image under "captions/text"), `model` (image
tower: vit_b [default], cnn, resnet18, resnet50, vit_tiny, vit_ti, vit_s), `text`
(text tower variant: tiny [default], B), `res` (input size, 224), `runlocal`. The CPU
recipe on captioned_shapes is configs/ssl/clip.py.

Temperature: as configs/ssl/clip.py (learned, initialised to 1/0.07, clamped to 100).

CLIP's ViT-B/32 recipe (Radford et al. 2021, Tables 19-20; docs/PROTOCOLS.md,
"CLIP"): batch 32,768, 32 epochs of 400M pairs, lr 5e-4 as is (not per 256), Adam
beta2 0.98 and eps 1e-6 for ViTs, decoupled weight decay 0.2 (PyTorch AdamW,
multiplied by the lr as optax's), 2,000 warm-up steps, cosine.

Captions: one of an image's captions is taken at random each time, byte-level
tokens up to 128 (`configs/common.py:COCO_LIKE`). Evals: image<->text Recall@K on
`val`.
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="coco_captions", model="vit_b", text="tiny", res=224,
                  runlocal=False)
  data = dict(common.COCO_LIKE, image_size=arg.res)
  config = common.base("clip", arg.dataset, data, train_split="train")
  config.input.text = dict(data["text"])
  config.model_name, config.model = common.backbone(arg.model, small_images=False,
                                                    runlocal=arg.runlocal)
  config.text_model = dict(variant=arg.text, causal=True, pool_type="eos")
  config.embed_dim = 512

  config.clip = dict(temperature_init=0.07, max_logit_scale=100.0)

  config.input.batch_size = 32768
  config.total_steps = 32 * 400_000_000 // 32768  # 32 epochs of 400M pairs.
  config.optimizer = dict(name="adamw", lr_abs=5e-4, b1=0.9, b2=0.98,
                          eps=1e-6, weight_decay=0.2, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=2000, end_factor=0.0)

  # One lightly augmented view: random resized crop (0.5, 1) and flip.
  config.aug = common.view(crop_scale=(0.5, 1.0))

  # Retrieval every 10,000 steps and at the end (no labels: no probe, no zero-shot).
  config.evals = common.image_text_evals(arg.dataset, data, every=10000)

  if arg.runlocal:
    common.shrink_for_runlocal(config)  # Also the text tower and embedding.
  return config
