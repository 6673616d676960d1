r"""DINO pretraining (Caron et al. 2021), this project's CPU recipe.

    python -m tandem.ssl.train --config configs/ssl/dino.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/dino

Arg keys: `dataset` (the CPU presets: fashion_mnist [default], cifar10_subset),
`model` (cnn [default, with global average pooling], resnet18, resnet50),
`runlocal`. Multi-crop's local crops are smaller than the images, so the backbone
must take any size (the ViTs here have learned, fixed-size position embeddings).

What is the paper's (§3.1, Appendix B; the authors' main_dino.py defaults): the
loss over (global, other crop) pairs, student temperature 0.1, teacher temperature
warmed up linearly from 0.04 to 0.07, centre momentum 0.9, the head (3-layer GELU
MLP, L2-normalised bottleneck, weight-normalised last layer with fixed norms), the
EMA teacher to momentum 1 by a cosine, evaluation of the teacher, 2 global crops of
area (0.4, 1) and local crops of area (0.05, 0.4) at 96/224 of the image side,
BYOL's colour, blur and solarize settings per crop. What is this project's CPU
schedule (docs/PROTOCOLS.md, "CPU presets"): AdamW at lr 1e-3 x batch/256 for 1,800
steps at batch 256 (the paper: 5e-4 x batch/256, 100-800 epochs), 6 local crops
(the paper 8-10), a head of 512 hidden, 64 bottleneck and K = 1024 outputs (2048,
256, 65536), base momentum 0.99 (0.996 is for hundreds of epochs), the teacher
temperature warm-up over the first 500 steps (30 epochs), the small-image blur
sigma, and no freezing of the last layer in the first epoch.
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", model="cnn", runlocal=False)
  data = common.preset(arg.dataset, common.DATASETS, None)
  config = common.base("dino", arg.dataset, data, train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)
  if arg.model == "cnn":
    config.model.pool = "gap"  # Any image size (the local crops are smaller).

  config.dino = dict(hidden_dim=512, bottleneck_dim=64, out_dim=1024,
                     student_temp=0.1, warmup_teacher_temp=0.04, teacher_temp=0.07,
                     teacher_temp_warmup_steps=500, center_momentum=0.9,
                     base_momentum=0.99, final_momentum=1.0, eval_weights="teacher")

  config.input.batch_size = 256
  config.total_steps = 1800  # About 7.7 epochs of Fashion-MNIST at batch 256.
  config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.999,
                          weight_decay=1e-4, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=100, end_factor=0.0)

  views = common.byol_views(rgb=data["channels"] == 3, small=True)
  local_size = max(8, round(data["image_size"] * 96 / 224))
  config.aug = dict(
      view1=dict(views["view1"], crop_scale=(0.4, 1.0)),
      view2=dict(views["view2"], crop_scale=(0.4, 1.0)),
      local=dict(views["view1"], crop_scale=(0.05, 0.4), blur_prob=0.5,
                 output_size=local_size),
      num_local=6)
  config.evals = common.probe_evals(arg.dataset, data, every=0)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.dino.update(hidden_dim=32, bottleneck_dim=16, out_dim=64,
                       teacher_temp_warmup_steps=1)
    config.aug.num_local = 2
  return config
