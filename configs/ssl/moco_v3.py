r"""MoCo v3 pretraining (Chen, Xie and He 2021), this project's CPU recipe.

    python -m tandem.ssl.train --config configs/ssl/moco_v3.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/moco_v3

Arg keys: `dataset` (the CPU presets: fashion_mnist [default], cifar10_subset),
`model` (cnn [default], resnet18, resnet50, vit_tiny, vit_ti, vit_s, vit_b),
`runlocal`.

What is the paper's: the symmetrised InfoNCE over the global batch scaled by 2τ with
τ = 0.2 (the ViT setting, Table 9), the EMA teacher from momentum 0.99 rising to 1
by a cosine (§4), a 3-layer projector ending in an affine-free BatchNorm and a
2-layer predictor (§4), BYOL's views (§4). What is this project's CPU schedule
(docs/PROTOCOLS.md, "CPU presets"), as the other objectives': AdamW at lr 1e-3 x
batch/256 for 1,800 steps at batch 256 (the paper: AdamW 1.5e-4 x batch/256 for
ViTs, LARS for ResNets, 100-300 epochs at batch 4096), 1024-wide hidden layers and
128-d outputs instead of 4096/256, and the small-image crop scale and blur sigma.
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", model="cnn", runlocal=False)
  data = common.preset(arg.dataset, common.DATASETS, None)
  config = common.base("moco_v3", arg.dataset, data, train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)

  config.moco_v3 = dict(projector_dims=(1024, 1024, 128), predictor_dims=(1024, 128),
                        temperature=0.2, base_momentum=0.99, final_momentum=1.0)

  config.input.batch_size = 256
  config.total_steps = 1800  # About 7.7 epochs of Fashion-MNIST at batch 256.
  config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.999,
                          weight_decay=1e-4, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=100, end_factor=0.0)

  config.aug = common.byol_views(rgb=data["channels"] == 3, small=True)
  config.evals = common.probe_evals(arg.dataset, data, every=0)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.moco_v3.projector_dims = (64, 64, 32)
    config.moco_v3.predictor_dims = (64, 32)
  return config
