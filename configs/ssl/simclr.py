r"""SimCLR pretraining (NT-Xent over the global batch).

    python -m tandem.ssl.train --config configs/ssl/simclr.py:dataset=fashion_mnist,model=cnn \
        --workdir /tmp/simclr

Arg keys (tandem/ssl/config_base.py): `dataset`, `model`, `res`, `runlocal`.

SimCLR's own recipe (Chen et al. 2020, "A Simple Framework for Contrastive Learning
of Visual Representations"; docs/PROTOCOLS.md, "SimCLR"):
- views: the same distribution for both (Appendix A): random resized crop (0.08, 1)
  and flip 0.5; colour jitter with strength s = 1, i.e. brightness, contrast,
  saturation 0.8 and hue 0.2, applied with p 0.8; grayscale with p 0.2; Gaussian
  blur with p 0.5, sigma in (0.1, 2), kernel 10% of the side; no solarize.
  Brightness is torchvision's multiplicative factor (the TF code adds a delta).
- ImageNet: LARS, lr 0.3 x batch/256 (linear scaling, Sec. 2.3; the square-root
  rule 0.075 x sqrt(batch) of Appendix B.1 is not used), weight decay 1e-6, biases
  and batch-norm parameters excluded from LARS adaptation and weight decay at the
  same lr; batch 4096; 1000 epochs (the linear-evaluation results, Sec. 6) with 10
  epochs of linear warm-up, cosine decay (Sec. 2.3, Appendix B.9).
- projector 2048 -> 128 (a 2-layer MLP on ResNet-50's 2048-d features), tau = 0.1
  (Table 5, the best with l2-normalised embeddings at batch 4096).

CPU presets (fashion_mnist, cifar10_subset) differ on purpose: AdamW with this
project's CPU schedule (config_base: lr 1e-3 x batch/256, 1,800 steps at batch 256;
LARS's large rates are tuned for hundreds of epochs), a 1024-wide projector and
tau = 0.2, and the small-image changes to crop scale and blur sigma stated in
`config_base.small_dataset_views`.
"""
from tandem.ssl import config_base


def simclr_views(*, rgb: bool, small: bool) -> dict:
  """SimCLR's views (Appendix A), identical for both: BYOL's view 1 (same crop,
  flip, jitter and grayscale probabilities, blur sigma) with colour jitter strength
  1 and blur p 0.5 (tests/test_recipes.py pins every value)."""
  view = dict(config_base.byol_views(rgb=rgb, small=small)["view1"],
              brightness=0.8, contrast=0.8, saturation=0.8 if rgb else 0.0,
              hue=0.2 if rgb else 0.0, blur_prob=0.5)
  return dict(view1=view, view2=dict(view))


def get_config(arg=None):
  config, arg, small = config_base.get_base_config(arg, "simclr")
  config.aug = simclr_views(rgb=config.input.channels == 3, small=small)
  config.simclr = dict(projector_dims=(1024, 128) if small else (2048, 128),
                       temperature=0.2 if small else 0.1)
  if not small:
    epoch = 1281167 // 4096
    config.input.batch_size = 4096
    config.total_steps = 1000 * epoch
    config.optimizer = dict(name="lars", lr_per_256=0.3, bias_lr_per_256=0.3,
                            weight_decay=1e-6, momentum=0.9, trust_coefficient=0.001,
                            grad_clip_norm=0.0)
    config.schedule = dict(warmup_steps=10 * epoch, end_factor=0.0)
  if arg.runlocal:
    config.input.batch_size = 16
    config.total_steps = 2
    config.schedule.warmup_steps = 1
    config.simclr.projector_dims = (64, 32)
  return config
