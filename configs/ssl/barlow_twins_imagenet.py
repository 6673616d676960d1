r"""Barlow Twins pretraining, the paper's ImageNet recipe.

    python -m tandem.ssl.train --config configs/ssl/barlow_twins_imagenet.py:model=resnet50 \
        --workdir /tmp/bt_r50

Arg keys: `dataset` (imagenet2012 [default], or any prepared TFDS image dataset; its
inputs get ImageNet's statistics), `model` (resnet50 [default], the paper's; cnn,
resnet18, vit_tiny, vit_ti, vit_s, vit_b), `res` (input size, 224), `runlocal`
(shrinks model, batch and steps so the config runs in seconds on a CPU). The CPU
recipe on Fashion-MNIST / CIFAR-10 is configs/ssl/barlow_twins.py.

Zbontar et al. 2021, Sec. 4 "Implementation details" and the authors' main.py
(docs/PROTOCOLS.md, "Barlow Twins"): projector 8192-8192-8192, lambda = 0.0051, LARS
at lr 0.2 (weights) and 0.0048 (biases, BN) x batch/256, batch 2048, wd 1.5e-6,
1000 epochs; BYOL's asymmetric augmentations (`configs/common.py:byol_views`).
Mixed Barlow Twins: see configs/ssl/barlow_twins.py.
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="imagenet2012", model="resnet50", res=224,
                  runlocal=False)
  data = dict(common.IMAGENET, image_size=arg.res)
  config = common.base("barlow_twins", arg.dataset, data,
                       train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=False,
                                                    runlocal=arg.runlocal)

  config.barlow_twins = dict(
      projector_dims=(8192, 8192, 8192), lambd=0.0051, loss_scale=1.0,
      mixup_loss_scale=0.0,  # > 0: Mixed Barlow Twins' regulariser (off: 0).
      mixup_beta=1.0)  # Mixing coefficient alpha ~ Beta(mixup_beta, mixup_beta).

  # LARS, batch 2048, lr 0.2 (weights) and 0.0048 (biases and BN) x batch/256,
  # wd 1.5e-6 (the paper; the reference code's default is 1e-6), 1000 epochs, 10 of
  # warm-up, cosine to 0.001 x peak.
  config.input.batch_size = 2048
  config.total_steps = 1000 * 1281167 // 2048  # 1000 epochs.
  config.optimizer = dict(name="lars", lr_per_256=0.2, bias_lr_per_256=0.0048,
                          weight_decay=1.5e-6, momentum=0.9, trust_coefficient=0.001,
                          grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=10 * 1281167 // 2048, end_factor=0.001)

  # BYOL's asymmetric views (Grill et al. 2020, Table 6), as Barlow Twins uses them.
  config.aug = common.byol_views(rgb=data["channels"] == 3, small=False)

  # Linear probe, few-shot and k-NN on frozen pre_logits every 10,000 steps and at
  # the end.
  config.evals = common.probe_evals(arg.dataset, data, every=10000)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.barlow_twins.projector_dims = (64, 64)
  return config
