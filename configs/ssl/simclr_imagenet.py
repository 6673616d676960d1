r"""SimCLR pretraining (NT-Xent over the global batch), the paper's ImageNet recipe.

    python -m tandem.ssl.train --config configs/ssl/simclr_imagenet.py:model=resnet50 \
        --workdir /tmp/simclr_r50

Arg keys: `dataset` (imagenet2012 [default], or any prepared TFDS image dataset; its
inputs get ImageNet's statistics), `model` (resnet50 [default], the paper's; cnn,
resnet18, vit_tiny, vit_ti, vit_s, vit_b), `res` (input size, 224), `runlocal`. The
CPU recipe on Fashion-MNIST / CIFAR-10 is configs/ssl/simclr.py.

SimCLR's own recipe (Chen et al. 2020, "A Simple Framework for Contrastive Learning
of Visual Representations"; docs/PROTOCOLS.md, "SimCLR"):
- views: the same distribution for both (Appendix A): random resized crop (0.08, 1)
  and flip 0.5; colour jitter with strength s = 1, i.e. brightness, contrast,
  saturation 0.8 and hue 0.2, applied with p 0.8; grayscale with p 0.2; Gaussian
  blur with p 0.5, sigma in (0.1, 2), kernel 10% of the side; no solarize.
  Brightness is torchvision's multiplicative factor (the TF code adds a delta).
- LARS, lr 0.3 x batch/256 (linear scaling, Sec. 2.3; the square-root rule
  0.075 x sqrt(batch) of Appendix B.1 is not used), weight decay 1e-6, biases and
  batch-norm parameters excluded from LARS adaptation and weight decay at the same
  lr; batch 4096; 1000 epochs (the linear-evaluation results, Sec. 6) with 10 epochs
  of linear warm-up, cosine decay (Sec. 2.3, Appendix B.9).
- projector 2048 -> 128 (a 2-layer MLP on ResNet-50's 2048-d features), tau = 0.1
  (Table 5, the best with l2-normalised embeddings at batch 4096).
"""
from configs import common
from tandem.config_arg import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="imagenet2012", model="resnet50", res=224, runlocal=False)
  data = dict(common.IMAGENET, image_size=arg.res)
  config = common.base("simclr", arg.dataset, data, train_split=data["train_split"])
  config.model_name, config.model = common.backbone(arg.model, small_images=False,
                                                    runlocal=arg.runlocal)

  config.simclr = dict(projector_dims=(2048, 128), temperature=0.1)

  epoch = 1281167 // 4096  # Steps per epoch at batch 4096.
  config.input.batch_size = 4096
  config.total_steps = 1000 * epoch
  config.optimizer = dict(name="lars", lr_per_256=0.3, bias_lr_per_256=0.3,
                          weight_decay=1e-6, momentum=0.9, trust_coefficient=0.001,
                          grad_clip_norm=0.0)
  config.schedule = dict(warmup_steps=10 * epoch, end_factor=0.0)

  config.aug = common.simclr_views(rgb=data["channels"] == 3, small=False)

  # Linear probe, few-shot and k-NN on frozen pre_logits every 10,000 steps and at
  # the end.
  config.evals = common.probe_evals(arg.dataset, data, every=10000)

  if arg.runlocal:
    common.shrink_for_runlocal(config)
    config.simclr.projector_dims = (64, 32)
  return config
