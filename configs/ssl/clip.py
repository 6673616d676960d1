r"""CLIP pretraining (image and text towers, symmetric contrastive loss), this
project's CPU recipe.

    python -m tandem.ssl.train --config configs/ssl/clip.py:dataset=captioned_shapes \
        --workdir /tmp/clip [--config.total_steps=3000 ...]

Arg keys: `dataset` (the CPU presets: captioned_shapes [default], or fashion_mnist /
cifar10_subset with class-name captions), `model` (image tower: cnn [default],
resnet18, resnet50, vit_tiny, vit_ti, vit_s, vit_b), `text` (text tower variant:
tiny [default], B), `runlocal`. Prepare captioned_shapes first:
`python -m tandem.data.prepare --dataset captioned_shapes`. CLIP's own recipe at
scale, on coco_captions or another image-text TFDS dataset, is
configs/ssl/clip_reference.py.

Temperature: learned logit scale exp(t), initialised to 1/temperature_init (CLIP:
1/0.07); the parameter t is clamped to [0, log max_logit_scale] (100) after every
update, as open_clip does (tandem/ssl/clip.py).

Captions (`configs/common.py:IMAGE_TEXT_DATASETS`): captioned_shapes has its own;
labelled datasets are captioned with CLIP-style class-name templates
(tandem/data/captions.py). Byte-level tokens by default; set
`--config.input.text.tokenizer=sentencepiece:/path/to/model` for a SentencePiece
model. Captions longer than `max_len` tokens are cut and counted
(`data/captions_truncated` in the metrics).

Evals (`configs/common.py:image_text_evals`): zero-shot top-1 and image<->text
Recall@K on held-out data, plus the linear probe of the image tower.
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="captioned_shapes", model="cnn", text="tiny",
                  runlocal=False)
  data = common.preset(arg.dataset, common.IMAGE_TEXT_DATASETS,
                       "configs/ssl/clip_reference.py")
  config = common.base("clip", arg.dataset, data, train_split="train")
  config.input.text = dict(data["text"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)
  config.text_model = dict(variant=arg.text, causal=True, pool_type="eos")
  config.embed_dim = 128

  config.clip = dict(temperature_init=0.07, max_logit_scale=100.0)

  # Sized for 2 CPU cores: ~4 epochs of captioned_shapes' 20,000 pairs
  # (docs/PROTOCOLS.md, "CPU presets").
  config.input.batch_size = 128
  config.total_steps = 600
  config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.98,
                          weight_decay=1e-4, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=50, end_factor=0.0)

  # One lightly augmented view. None for captioned_shapes: a flip would swap
  # "left of" and "right of", a crop could cut shapes out of the count.
  config.aug = (None if arg.dataset == "captioned_shapes"
                else common.view(crop_scale=(0.5, 1.0)))

  # Zero-shot, retrieval and the linear probe, as far as the dataset allows, at the
  # end of training.
  config.evals = common.image_text_evals(arg.dataset, data, every=0)

  if arg.runlocal:
    common.shrink_for_runlocal(config)  # Also the text tower and embedding.
  return config
