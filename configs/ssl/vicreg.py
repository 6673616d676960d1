r"""VICReg pretraining (Bardes et al. 2022), this project's CPU recipe.

    python -m tandem.ssl.train --config configs/ssl/vicreg.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/vicreg

Arg keys: `dataset` (the CPU presets: fashion_mnist [default], cifar10_subset),
`model` (cnn [default], resnet18, resnet50, vit_tiny, vit_ti, vit_s, vit_b),
`runlocal`.

What is the paper's: the loss and its coefficients λ = μ = 25, ν = 1 (§4.3), the
expander of BatchNorm'd hidden layers, BYOL's views (§4.1 uses them). What is this
project's CPU schedule (docs/PROTOCOLS.md, "CPU presets"), as Barlow Twins':
AdamW at lr 1e-3 x batch/256 for 1,800 steps at batch 256 instead of LARS for
1000 epochs, a 1024-1024 expander instead of 8192-8192-8192, and the small-image
crop scale and blur sigma.
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", model="cnn", runlocal=False)
  data = common.preset(arg.dataset, common.DATASETS, None)
  config = common.base("vicreg", arg.dataset, data, train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)

  config.vicreg = dict(projector_dims=(1024, 1024), sim_coeff=25.0, std_coeff=25.0,
                       cov_coeff=1.0)

  config.input.batch_size = 256
  config.total_steps = 1800  # About 7.7 epochs of Fashion-MNIST at batch 256.
  config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.999,
                          weight_decay=1e-4, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=100, end_factor=0.0)

  config.aug = common.byol_views(rgb=data["channels"] == 3, small=True)
  config.evals = common.probe_evals(arg.dataset, data, every=0)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.vicreg.projector_dims = (64, 64)
  return config
