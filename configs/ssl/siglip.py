r"""SigLIP pretraining (image and text towers, pairwise sigmoid loss), this project's
CPU recipe.

    python -m tandem.ssl.train --config configs/ssl/siglip.py:dataset=captioned_shapes \
        --workdir /tmp/siglip [--config.total_steps=3000 ...]

Arg keys, data, captions and evals as configs/ssl/clip.py. SigLIP's own recipe at
scale is configs/ssl/siglip_reference.py.

Learned temperature t = exp(t') with t' initialised to log(temperature_init) = log
10, and a learned bias initialised to bias_init = -10 (Zhai et al. 2023). The loss
sums over the N² pairs and divides by N (the paper's Algorithm 1).
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="captioned_shapes", model="cnn", text="tiny",
                  runlocal=False)
  data = common.preset(arg.dataset, common.IMAGE_TEXT_DATASETS,
                       "configs/ssl/siglip_reference.py")
  config = common.base("siglip", arg.dataset, data, train_split="train")
  config.input.text = dict(data["text"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)
  config.text_model = dict(variant=arg.text, causal=True, pool_type="eos")
  config.embed_dim = 128

  config.siglip = dict(temperature_init=10.0, bias_init=-10.0)

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
