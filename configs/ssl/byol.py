r"""BYOL pretraining (Grill et al. 2020), this project's CPU recipe.

    python -m tandem.ssl.train --config configs/ssl/byol.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/byol

Arg keys: `dataset` (the CPU presets: fashion_mnist [default], cifar10_subset),
`model` (cnn [default], resnet18, resnet50, vit_tiny, vit_ti, vit_s, vit_b),
`runlocal`.

What is the paper's: the symmetrised loss, a predictor on the student only, the
EMA teacher with a cosine momentum schedule to 1 (§3.2, Appendix J), BYOL's
asymmetric views (Appendix B; `configs/common.py:byol_views`), projector and
predictor MLPs with one BatchNorm'd hidden layer. What is this project's CPU
schedule (docs/PROTOCOLS.md, "CPU presets"), as the other objectives' presets:
AdamW at lr 1e-3 x batch/256 for 1,800 steps at batch 256 instead of LARS for
300-1000 epochs, 1024-wide hidden layers and 128-d outputs instead of 4096/256,
the small-image crop scale and blur sigma, and a base momentum of 0.99, which
solo-learn's CIFAR recipe uses for short schedules (the paper's 0.996 is for
ImageNet's 300+ epochs: over 1,800 steps the teacher would barely move).
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", model="cnn", runlocal=False)
  data = common.preset(arg.dataset, common.DATASETS, None)
  config = common.base("byol", arg.dataset, data, train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)

  # Objective: projector and predictor (hidden, out); teacher momentum 0.99 -> 1.
  config.byol = dict(projector_dims=(1024, 128), predictor_dims=(1024, 128),
                     base_momentum=0.99, final_momentum=1.0)

  config.input.batch_size = 256
  config.total_steps = 1800  # About 7.7 epochs of Fashion-MNIST at batch 256.
  config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.999,
                          weight_decay=1e-4, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=100, end_factor=0.0)

  config.aug = common.byol_views(rgb=data["channels"] == 3, small=True)
  config.evals = common.probe_evals(arg.dataset, data, every=0)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.byol.projector_dims = (64, 32)
    config.byol.predictor_dims = (64, 32)
  return config
