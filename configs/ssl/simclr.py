r"""SimCLR pretraining (NT-Xent over the global batch), this project's CPU recipe.

    python -m tandem.ssl.train --config configs/ssl/simclr.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/simclr

Arg keys: `dataset` (the CPU presets: fashion_mnist [default], cifar10_subset),
`model` (cnn [default], resnet18, resnet50, vit_tiny, vit_ti, vit_s, vit_b),
`runlocal`. SimCLR's own ImageNet recipe (Chen et al. 2020) is
configs/ssl/simclr_imagenet.py.

The CPU presets differ from the paper on purpose (docs/PROTOCOLS.md, "CPU presets"):
AdamW with this project's CPU schedule (lr 1e-3 x batch/256, 1,800 steps at batch
256; LARS's large rates are tuned for hundreds of epochs), a 1024-wide projector and
tau = 0.2, and the small-image changes to crop scale and blur sigma stated in
`configs/common.py:small_dataset_views`. The views are otherwise SimCLR's
(Appendix A; `configs/common.py:simclr_views`).
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="fashion_mnist", model="cnn", runlocal=False)
  data = common.preset(arg.dataset, common.DATASETS, "configs/ssl/simclr_imagenet.py")
  config = common.base("simclr", arg.dataset, data, train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=True,
                                                    runlocal=arg.runlocal)

  config.simclr = dict(projector_dims=(1024, 128), temperature=0.2)

  # This project's CPU schedule, as Barlow Twins' CPU preset.
  config.input.batch_size = 256
  config.total_steps = 1800  # About 7.7 epochs of Fashion-MNIST at batch 256.
  config.optimizer = dict(name="adamw", lr_per_256=1e-3, b1=0.9, b2=0.999,
                          weight_decay=1e-4, grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=100, end_factor=0.0)

  # SimCLR's views (the same for both), with the small-image crop scale and blur.
  config.aug = common.simclr_views(rgb=data["channels"] == 3, small=True)

  # Linear probe, few-shot and k-NN on frozen pre_logits, at the end of training.
  config.evals = common.probe_evals(arg.dataset, data, every=0)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.simclr.projector_dims = (64, 32)
  return config
