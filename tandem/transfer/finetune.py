"""Fine-tuning a pretrained backbone with a new linear head: full, head, norm, LoRA.

The backbone is the `encoder` sub-tree of an objective's params (and batch stats),
built by `tandem.models.get_model(config.model_name, **config.model)` as in
`features.py`; a fresh linear head on its `pre_logits` is zero-initialised (BiT,
Kolesnikov et al. 2020). Images are uint8 of any size, given the pretraining
preprocessing: resized to `config.input.image_size`, converted to its channels,
scaled to [0, 1] and normalised with its mean/std.

Modes (`mode`), selected with an optax mask (`optax.multi_transform`: trainable
leaves get momentum SGD, frozen ones `optax.set_to_zero`, so they carry no optimiser
state; the step also stops their gradients, so no backward pass is spent on them,
and passes them through unchanged, so they stay bit-identical):
  * `full`: everything trains.
  * `head`: only the head; the backbone runs in eval mode (running batch-norm
    statistics, left untouched): SGD on frozen features.
  * `norm`: normalisation-layer scales and biases (BatchNorm/LayerNorm/GroupNorm,
    found by module name with `norm_pattern`: `bn`, `ln`, `*_bn1`, `*_norm`,
    `BatchNorm_0`, ...) plus the head. The backbone runs in train mode, so batch-norm
    layers also re-estimate their statistics on the new data (as when training
    "BatchNorm and only BatchNorm", Frankle et al. 2021).
  * `lora`: LoRA (Hu et al. 2021) on every dense kernel of the backbone: 2-D Dense
    kernels, and flax attention's 3-D DenseGeneral kernels taken as the 2-D map they
    are, (in, heads·head_dim) for query/key/value [in, heads, head_dim] and
    (heads·head_dim, out) for `out` [heads, head_dim, out]. Convolution kernels are
    not adapted (so a ResNet has nothing to adapt and is refused). Purely functional:
    a separate trainable tree holds `lora_a` [in, r] (normal / sqrt(in)) and `lora_b`
    [r, out] (zeros) next to each adapted kernel's module path, and W + (alpha/r)·A·B
    is merged into the kernel before `model.apply`; the model code is unchanged and at
    initialisation the merged backbone equals the pretrained one exactly. Default
    r = 4, alpha = r (scale 1; Hu et al. set alpha to the first r tried and do not
    tune it). Base kernels, norms and batch-norm statistics stay frozen (eval mode).
`train_backbone_mode` (None: the mode's default above) overrides whether the backbone
runs in train mode (batch statistics, running-average updates, dropout).

Schedule: BiT-HyperRule (Kolesnikov et al. 2020, and big_transfer's
`bit_hyperrule.py`), every value overridable in the config:
  * SGD, momentum 0.9, no weight decay (BiT uses none); base lr 0.003 per 512
    examples, scaled linearly with the batch (Goyal et al. 2017; the scaling is ours,
    BiT always uses 512).
  * batch 512, clipped to the dataset size and rounded down to a multiple of the
    mesh's batch shards.
  * steps: 500 below 20k examples, 10k below 500k, else 20k.
  * linear warm-up from 0 over 100 steps (below 20k examples) or 500 (big_transfer's
    code); with `steps` overridden, the same fraction of the steps (20%, 5%, 2.5%).
  * lr ×0.1 at 30%, 60% and 90% of the steps (the paper; big_transfer's code decays
    the 500-step schedule at 200/300/400 instead).
  * augmentation, on device inside the jitted step (`tandem.data.augment`):
    torchvision-style random resized crop with area in `crop_scale` (0.64..1: the
    smallest crop is BiT's 128 of 160 pixels) and aspect in [3/4, 4/3], resized back
    to the input size, and a horizontal flip. `crop` and `flip` switch them off for
    tasks where they change the label (BiT: orientations, positions; e.g. VTAB's
    structured tasks). Evaluation uses the whole image.
  * not done: BiT's MixUp (alpha 0.1 from 20k examples) and its 160/128 resizing; we
    keep the pretraining resolution.

Steps are jitted with explicit in/out shardings on a `tandem.parallel` mesh (the one
passed in, else `config.mesh`): the batch is split over the batch axes, params and
optimiser state placed by the config's partition rules (`partition_rules`, else the
pretraining config's). A non-finite loss raises `NonFiniteLossError` naming the
first bad step (checked every `check_every` steps and at the end); no number from a
diverged run is ever returned.

`evaluate_task` is VTAB-1k's protocol (Zhai et al. 2019): the lr is chosen from
`lr_per_512_grid` by val top-1 after training on `train` (inside `TaskData.selection()`, so
test is out of reach), then the model is retrained on `trainval` and scored once on
test. Sweep and final run share one schedule: steps from the HyperRule at the size of
trainval, the batch clipped to the size of train; grid ties go to the earlier value.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tandem import models
from tandem import parallel
from tandem import train_state
from tandem.data import augment
from tandem.data import preprocess
from tandem.transfer import features
from tandem.transfer import protocol

MODES = ("full", "head", "norm", "lora")
BIT_BATCH = 512  # The batch BiT's lr is given for.
DECAY_AT = (0.3, 0.6, 0.9)  # Fractions of the steps where the lr drops ×0.1.
# BiT-HyperRule: (datasets smaller than, steps, warm-up steps).
_HYPERRULE = ((20_000, 500, 100), (500_000, 10_000, 500), (float("inf"), 20_000, 500))
# Keys of `config.evals.finetune` that say what to evaluate on, not how to train.
_EVAL_KEYS = ("module", "dataset", "train_split", "test_split", "max_train",
              "max_test", "num_val", "every", "seed", "layer")


NonFiniteLossError = train_state.NonFiniteLossError


def default_config() -> ml_collections.ConfigDict:
  """Fine-tuning settings; None means "from the BiT-HyperRule" or "mode default"."""
  return ml_collections.ConfigDict(dict(
      mode="full",  # full | head | norm | lora.
      steps=None,  # None: 500 / 10k / 20k by dataset size.
      lr_per_512=0.003,  # Base lr per 512 examples: the peak is × batch/512.
      lr_per_512_grid=(),  # Swept on val by `evaluate_task`; empty: (lr_per_512,).
      batch_size=BIT_BATCH,  # Clipped to the dataset size.
      warmup_steps=None,  # None: 100 / 500 (or that fraction of `steps`).
      decay_at=DECAY_AT,
      momentum=0.9,
      weight_decay=0.0,  # Towards zero, on every trainable parameter.
      crop=True,  # Random resized crop (off for positional labels).
      crop_scale=(0.64, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
      flip=True,  # Horizontal flip (off for orientation labels).
      lora_rank=4,
      lora_alpha=None,  # None: = lora_rank (scale 1).
      norm_pattern=r"(^|[/_])(bn|ln|norm|batchnorm|layernorm|groupnorm)(_?\d+)?"
                   r"/(scale|bias)$",  # Case-insensitive, on "encoder/.../scale".
      train_backbone_mode=None,  # None: True for full and norm, False otherwise.
      partition_rules=None,  # None: the pretraining config's.
      eval_batch_size=256,
      check_every=50,  # Steps between non-finite checks (a host sync each).
  ))


def resolve_config(ft_config=None) -> ml_collections.ConfigDict:
  """`default_config()` updated with the given fields; unknown fields are refused."""
  config = default_config().to_dict()
  if ft_config is not None:
    given = (ft_config.to_dict() if isinstance(ft_config, ml_collections.ConfigDict)
             else dict(ft_config))
    unknown = sorted(set(given) - set(config))
    if unknown:
      raise ValueError(f"Unknown fine-tuning config fields {unknown}; fields: "
                       f"{sorted(config)}.")
    config.update(given)
  if config["mode"] not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {config['mode']!r}.")
  return ml_collections.ConfigDict(config)


# ------------------------------------------------------------------------ schedule


def hyperrule(num_examples: int) -> dict:
  """BiT-HyperRule steps, warm-up and decay steps for a dataset of that size."""
  for limit, steps, warmup in _HYPERRULE:
    if num_examples < limit:
      return dict(steps=steps, warmup_steps=warmup,
                  decay_steps=decay_steps(steps, DECAY_AT))
  raise AssertionError("unreachable")


def decay_steps(steps: int, fractions=DECAY_AT) -> tuple[int, ...]:
  return tuple(int(round(f * steps)) for f in fractions)


def lr_schedule(peak: float, warmup_steps: int, decays) -> optax.Schedule:
  """Linear warm-up from 0 to `peak`, then ×0.1 at each step in `decays`."""
  scales = {}
  for step in decays:  # Relative to the end of warm-up; coinciding decays compound.
    at = max(int(step) - warmup_steps, 0)
    scales[at] = scales.get(at, 1.0) * 0.1
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup_steps),
       optax.piecewise_constant_schedule(peak, scales)], [warmup_steps])


def plan(num_examples: int, ft, batch_shards: int = 1) -> dict:
  """The resolved steps, warm-up, decays, batch and peak lr for `num_examples`."""
  rule = hyperrule(num_examples)
  steps = rule["steps"] if ft.steps is None else int(ft.steps)
  warmup = (int(round(steps * rule["warmup_steps"] / rule["steps"]))
            if ft.warmup_steps is None else int(ft.warmup_steps))
  batch = min(int(ft.batch_size), num_examples)
  batch = max(batch_shards, batch // batch_shards * batch_shards)
  return dict(steps=steps, warmup_steps=warmup,
              decay_steps=decay_steps(steps, ft.decay_at), batch_size=batch,
              peak_lr=float(ft.lr_per_512) * batch / BIT_BATCH)


# ----------------------------------------------------------- parameters and masks


def trainable_mask(params, mode: str, norm_pattern: str):
  """True for the leaves of {"encoder", "head", ["lora"]} that `mode` trains."""
  norm = re.compile(norm_pattern, re.IGNORECASE)

  def trainable(path, _):
    name = parallel.path_str(path)
    if not name.startswith("encoder/"):
      return True  # The head and the LoRA factors.
    return mode == "full" or (mode == "norm" and norm.search(name) is not None)

  return jax.tree_util.tree_map_with_path(trainable, params)


def lora_shape(path: tuple, shape) -> tuple[int, int] | None:
  """(in, out) of a kernel LoRA adapts (a dense kernel), else None (convs, biases)."""
  if path[-1] != "kernel" or len(shape) not in (2, 3):
    return None
  if len(shape) == 2:
    return tuple(shape)
  # flax attention: query/key/value [in, heads, head_dim]; out [heads, head_dim, out].
  if path[-2] == "out":
    return shape[0] * shape[1], shape[2]
  return shape[0], shape[1] * shape[2]


def init_lora(encoder_params, rank: int, seed: int) -> dict:
  """{module path: {"lora_a": [in, r] normal/sqrt(in), "lora_b": [r, out] zeros}}."""
  rng = np.random.default_rng(seed)
  lora = {}
  for path, kernel in sorted(traverse_util.flatten_dict(encoder_params).items()):
    shape = lora_shape(path, np.shape(kernel))
    if shape is not None:
      fan_in, fan_out = shape
      lora[path[:-1] + ("lora_a",)] = (rng.standard_normal((fan_in, rank)) /
                                       np.sqrt(fan_in)).astype(np.float32)
      lora[path[:-1] + ("lora_b",)] = np.zeros((rank, fan_out), np.float32)
  return traverse_util.unflatten_dict(lora)


def merge_lora(encoder_params, lora, scale: float):
  """The encoder params with W + scale·A·B in place of every adapted kernel W."""
  flat = traverse_util.flatten_dict(encoder_params)
  factors = traverse_util.flatten_dict(lora)
  for path, kernel in flat.items():
    if lora_shape(path, kernel.shape) is not None:
      a, b = factors[path[:-1] + ("lora_a",)], factors[path[:-1] + ("lora_b",)]
      delta = jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
      flat[path] = kernel + (scale * delta).reshape(kernel.shape).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


def _plain(tree):
  """Nested plain dicts (FrozenDicts, e.g. from older checkpoints, become dicts)."""
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def init_params(pretrain_config, variables, num_classes: int, ft, seed: int = 0):
  """(params, model_state): {"encoder", "head", ["lora"]} and the backbone's stats."""
  variables = _plain(variables)
  params = variables.get("params", {})
  if "encoder" not in params:
    raise ValueError("variables must be a whole pretrained model's {'params': ..., "
                     "**model_state} with the backbone under params['encoder']; got "
                     f"params keys {sorted(params)}.")
  backbone = features.encoder_variables(
      params, {k: v for k, v in variables.items() if k != "params"})
  model = models.get_model(pretrain_config.model_name,
                           **pretrain_config.model.to_dict())
  size, channels = pretrain_config.input.image_size, pretrain_config.input.channels
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), backbone,
                       jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32))
  width = out["pre_logits"].shape[-1]
  encoder = backbone.pop("params")
  params = {"encoder": encoder,
            "head": {"kernel": np.zeros((width, num_classes), np.float32),
                     "bias": np.zeros((num_classes,), np.float32)}}
  if ft.mode == "lora":
    if int(ft.lora_rank) < 1:
      raise ValueError(f"lora_rank must be at least 1, got {ft.lora_rank}.")
    params["lora"] = init_lora(encoder, int(ft.lora_rank), seed)
    if not params["lora"]:
      raise ValueError("mode=lora adapts dense kernels only, and this backbone has "
                       "none (convolutions are not adapted); use mode=norm or full.")
  return params, backbone


# -------------------------------------------------------------------------- steps


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything the jitted functions depend on besides arrays (hashable)."""
  model_name: str
  model_kwargs: tuple
  mode: str
  train_backbone: bool
  norm_pattern: str
  lora_scale: float
  aug: tuple | None
  mean: tuple
  std: tuple
  momentum: float
  weight_decay: float

  @property
  def model(self):
    return models.get_model(self.model_name, **dict(self.model_kwargs))


def _make_static(pretrain_config, ft) -> _Static:
  aug = None
  if ft.crop or ft.flip:
    view = dict(augment.IDENTITY, flip_prob=0.5 if ft.flip else 0.0,
                crop_scale=tuple(ft.crop_scale) if ft.crop else (1.0, 1.0),
                crop_ratio=tuple(ft.crop_ratio) if ft.crop else (1.0, 1.0))
    aug = parallel.hashable(view)
  train_backbone = ft.train_backbone_mode
  if train_backbone is None:
    train_backbone = ft.mode in ("full", "norm")
  alpha = ft.lora_rank if ft.lora_alpha is None else ft.lora_alpha
  return _Static(
      model_name=pretrain_config.model_name,
      model_kwargs=parallel.hashable(pretrain_config.model.to_dict()), mode=ft.mode,
      train_backbone=bool(train_backbone), norm_pattern=ft.norm_pattern,
      lora_scale=float(alpha) / float(ft.lora_rank), aug=aug,
      mean=tuple(pretrain_config.input.mean), std=tuple(pretrain_config.input.std),
      momentum=float(ft.momentum), weight_decay=float(ft.weight_decay))


def make_optimizer(mask, lr, momentum: float, weight_decay: float):
  """Momentum SGD on the trainable leaves; frozen ones get zero updates, no state.

  `mask`: a bool tree, or a function of the params returning one."""
  train = optax.sgd(lr, momentum=momentum)
  if weight_decay:
    train = optax.chain(optax.add_decayed_weights(weight_decay), train)
  to_labels = lambda m: jax.tree.map(lambda t: "train" if t else "frozen", m)
  labels = ((lambda params: to_labels(mask(params))) if callable(mask)
            else to_labels(mask))
  return optax.multi_transform({"train": train, "frozen": optax.set_to_zero()},
                               labels)


def _forward(static: _Static, params, model_state, x, *, train: bool, rng=None):
  """(logits, new model state) of normalised float images."""
  encoder = params["encoder"]
  if "lora" in params:
    encoder = merge_lora(encoder, params["lora"], static.lora_scale)
  variables = {"params": encoder, **model_state}
  rngs = {"dropout": rng} if rng is not None else None
  if train and model_state:
    out, model_state = static.model.apply(variables, x, train=True, rngs=rngs,
                                          mutable=list(model_state))
  else:
    out = static.model.apply(variables, x, train=train, rngs=rngs)
  feats = out["pre_logits"].astype(jnp.float32)
  head = params["head"]
  return feats @ head["kernel"] + head["bias"], _plain(model_state)


@functools.lru_cache(maxsize=8)
def _step_fn(static: _Static):
  """The fine-tuning update (`train_state.make_step`): batches are {"image",
  "label", "lr"}; the rate comes in the batch so that a sweep compiles once."""

  def loss_fn(params, model_state, batch, rng):
    aug_rng, dropout_rng = jax.random.split(rng)
    x = batch["image"].astype(jnp.float32) / 255.0
    if static.aug is not None:
      x = augment.augment_view(aug_rng, x, dict(static.aug))
    x = preprocess.normalize(x, static.mean, static.std)
    logits, model_state = _forward(static, params, model_state, x,
                                   train=static.train_backbone, rng=dropout_rng)
    loss = optax.losses.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()
    return loss, ({}, model_state)

  trainable = lambda params: trainable_mask(params, static.mode, static.norm_pattern)
  tx = lambda batch: make_optimizer(trainable, batch["lr"], static.momentum,
                                    static.weight_decay)
  return train_state.make_step(loss_fn, tx, trainable=trainable)


@functools.partial(jax.jit, static_argnums=0)
def _predict(static: _Static, params, model_state, images):
  x = preprocess.normalize(images.astype(jnp.float32) / 255.0, static.mean,
                           static.std)
  return _forward(static, params, model_state, x, train=False)[0]


# --------------------------------------------------------------------- fine-tuning


def _batches(num_examples: int, batch_size: int, seed: int):
  """Index batches from a stream of shuffled epochs (every example once per epoch)."""
  rng = np.random.default_rng(seed)
  stream = np.zeros((0,), np.int64)
  while True:
    while len(stream) < batch_size:
      stream = np.concatenate([stream, rng.permutation(num_examples)])
    yield stream[:batch_size]
    stream = stream[batch_size:]


@dataclasses.dataclass
class FineTuned:
  """A fine-tuned backbone + head: `predict`, `accuracy` and what was trained.

  `params` is {"encoder", "head", ["lora"]} (LoRA factors unmerged) and
  `model_state` the backbone's batch statistics; `losses` holds (step, loss) at
  every non-finite check.
  """
  params: Any
  model_state: Any
  trainable_params: int
  mode: str
  steps: int
  lr_per_512: float  # Base lr per 512 examples.
  peak_lr: float  # lr_per_512 × batch / 512, the rate after warm-up.
  batch_size: int
  warmup_steps: int
  decay_steps: tuple
  losses: list
  _static: _Static = dataclasses.field(repr=False)
  _input: Any = dataclasses.field(repr=False)
  _mesh: Any = dataclasses.field(repr=False)
  _eval_batch_size: int = dataclasses.field(repr=False)

  def predict(self, images: np.ndarray) -> np.ndarray:
    """Logits [N, num_classes] of uint8 images (any size and channel count)."""
    return parallel.batched_map(
        lambda chunk: _predict(self._static, self.params, self.model_state, chunk),
        features.prepare_images(images, self._input), self._eval_batch_size,
        mesh=self._mesh, empty_shape=(0, self.params["head"]["bias"].shape[0]))

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy on uint8 images and int labels."""
    predictions = np.argmax(self.predict(images), axis=-1)
    return float(np.mean(predictions == np.asarray(labels)))

  def backbone_variables(self) -> dict:
    """The backbone's variables, with LoRA merged into its kernels."""
    encoder = self.params["encoder"]
    if "lora" in self.params:
      encoder = merge_lora(encoder, self.params["lora"], self._static.lora_scale)
    return {"params": encoder, **self.model_state}


def finetune(pretrain_config, variables, train_images: np.ndarray,
             train_labels: np.ndarray, num_classes: int, *, ft_config=None,
             mesh=None, seed: int = 0) -> FineTuned:
  """Fine-tunes the backbone of `variables` with a new head on the given images.

  `variables`: the whole pretrained model's {"params": ..., **model_state} (as the
  pretraining loop passes to evaluators); the backbone is `params["encoder"]`.
  `ft_config`: fields of `default_config()` to change. Raises `NonFiniteLossError`
  if the loss becomes NaN or Inf.
  """
  ft = resolve_config(ft_config)
  images = features.prepare_images(train_images, pretrain_config.input)
  labels = np.asarray(train_labels).astype(np.int32)
  if len(images) != len(labels) or not len(images):
    raise ValueError(f"Need as many labels as images (and some): {len(images)} "
                     f"images, {len(labels)} labels.")
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"Labels must be in [0, {num_classes}), got "
                     f"[{labels.min()}, {labels.max()}].")

  # --- Mesh and schedule ------------------------------------------------------------
  if mesh is None:
    mesh = parallel.make_mesh(pretrain_config.get("mesh", None) or {"data": -1})
  p = plan(len(images), ft, parallel.batch_shards(mesh))
  lr_fn = lr_schedule(p["peak_lr"], p["warmup_steps"], p["decay_steps"])
  lrs = np.asarray(jax.jit(jax.vmap(lr_fn))(jnp.arange(p["steps"])), np.float32)

  # --- Params, mask, optimizer -----------------------------------------------------
  static = _make_static(pretrain_config, ft)
  params, model_state = init_params(pretrain_config, variables, num_classes, ft, seed)
  mask = trainable_mask(params, ft.mode, ft.norm_pattern)
  sizes = zip(jax.tree.leaves(params), jax.tree.leaves(mask))
  trainable = sum(int(np.size(x)) for x, t in sizes if t)
  if ft.mode == "norm" and not any(jax.tree.leaves(mask["encoder"])):
    raise ValueError(f"mode=norm found no normalisation parameters matching "
                     f"{ft.norm_pattern!r} in the backbone.")
  tx = make_optimizer(mask, 0.0, static.momentum, static.weight_decay)

  # --- Sharding ---------------------------------------------------------------------
  rules = ft.partition_rules or pretrain_config.get("partition_rules", None) or [
      (".*", ())]
  params_sharding = parallel.tree_shardings(params, rules, mesh)
  # Copies, never aliases of the caller's arrays, as the step donates its inputs
  # (`jax.device_put(..., may_alias=False)` still aliases one shard in jax 0.10).
  # Arrays already on the mesh's devices (pretraining's periodic evals, possibly
  # across processes) are copied by a jitted identity; others (`tandem.load` puts
  # them on one device, which that copy would refuse) through host memory.
  def copy(tree, sharding):
    on_mesh = all(isinstance(x, jax.Array) and x.sharding.device_set == s.device_set
                  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sharding)))
    if on_mesh:
      return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=sharding)(tree)
    return jax.device_put(jax.tree.map(lambda x: np.array(x, copy=True), tree),
                          sharding)
  params = copy(params, params_sharding)
  model_state = copy(model_state, parallel.tree_shardings(model_state, rules, mesh))

  make_state = lambda params, model_state: train_state.create(params, tx,
                                                              model_state, seed)
  state_sharding = parallel.tree_shardings(
      jax.eval_shape(make_state, params, model_state), rules, mesh)
  state = jax.jit(make_state, out_shardings=state_sharding)(params, model_state)
  batch_sharding = parallel.batch_sharding(mesh)

  # --- Step and loop ----------------------------------------------------------------
  train_step = train_state.jit_step(
      _step_fn(static), mesh, params_sharding, state_sharding,
      dict(image=batch_sharding, label=batch_sharding,
           lr=parallel.replicated(mesh)))
  batches = _batches(len(images), p["batch_size"], seed)
  losses = []
  for step in range(p["steps"]):
    idx = next(batches)
    batch = dict(image=parallel.host_to_global(images[idx], batch_sharding),
                 label=parallel.host_to_global(labels[idx], batch_sharding),
                 lr=lrs[step])
    params, state, metrics = train_step(params, state, batch)
    if (step + 1) % ft.check_every == 0 or step + 1 == p["steps"]:
      train_state.check_finite(state, (
          f"Fine-tuning ({ft.mode}, lr_per_512 {ft.lr_per_512}, {p['steps']} steps) "
          "diverged; no result is reported for a diverged run. Lower `lr_per_512`, "
          "or check the checkpoint for NaN/Inf."))
      losses.append((step + 1, float(metrics["loss"])))

  return FineTuned(
      params=params, model_state=state["model_state"], trainable_params=trainable,
      mode=ft.mode, steps=p["steps"], lr_per_512=float(ft.lr_per_512), peak_lr=p["peak_lr"],
      batch_size=p["batch_size"], warmup_steps=p["warmup_steps"],
      decay_steps=p["decay_steps"], losses=losses, _static=static,
      _input=pretrain_config.input, _mesh=mesh,
      _eval_batch_size=int(ft.eval_batch_size))


# ------------------------------------------------------------------------ protocol


def load_data(settings, config, data_dir: str, *, mesh=None,
              **kwargs) -> protocol.TaskData:
  """Inside pretraining: the block's task, val a fifth of train unless `num_val`."""
  del mesh  # The model's.
  from tandem.transfer import periodic  # pylint: disable=g-import-not-at-top
  train = periodic.load_split(settings.dataset, settings.train_split, data_dir,
                              config.input.image_size, config.input.channels,
                              settings.get("max_train", 0), config.seed)[1]
  return periodic.load_task(settings, config, data_dir,
                            num_val=max(1, len(train) // 5), **kwargs)


def evaluate_task(task_data: protocol.TaskData, settings, model) -> list[dict]:
  """VTAB-1k: lr chosen on val (train → val), retrain on trainval, test top-1.

  `settings`: fields of `default_config()`, besides the keys that say what to
  evaluate on (`_EVAL_KEYS`); `model`: the pretrained `protocol.Model`."""
  ft = resolve_config({k: v for k, v in dict(settings).items()
                       if k not in _EVAL_KEYS})
  pretrain_config, variables = model.config, model.variables
  mesh, seed = model.mesh, model.seed
  grid = tuple(float(lr) for lr in ft.lr_per_512_grid) or (float(ft.lr_per_512),)
  with task_data.selection():
    train, val = task_data.train, task_data.val
    # One schedule for the sweep and the final run: steps from trainval's size,
    # the batch clipped to train's.
    steps = hyperrule(len(train.labels) + len(val.labels))["steps"]
    ft.steps = steps if ft.steps is None else ft.steps
    ft.batch_size = min(int(ft.batch_size), len(train.labels))
    run = functools.partial(finetune, pretrain_config, variables,
                            num_classes=task_data.num_classes, mesh=mesh, seed=seed)
    val_top1 = {}
    for lr in grid:
      tuned = run(train.images, train.labels,
                  ft_config=dict(ft.to_dict(), lr_per_512=lr))
      val_top1[lr] = tuned.accuracy(val.images, val.labels)
      del tuned
    best = max(grid, key=lambda lr: val_top1[lr])  # Ties: the earlier value.
  trainval = task_data.trainval
  tuned = run(trainval.images, trainval.labels, ft_config=dict(ft.to_dict(), lr_per_512=best))
  test = task_data.test
  return [{
      "evaluator": f"finetune_{ft.mode}",
      "metric": "test_top1",
      "value": tuned.accuracy(test.images, test.labels),
      "val_top1": val_top1[best],
      "lr_per_512": best,
      "steps": tuned.steps,
      "trainable_params": tuned.trainable_params,
      "protocol": (
          f"{ft.mode} fine-tuning, zero-init linear head on pre_logits; base lr per "
          f"512 from {list(grid)} chosen by val top-1 after training on train, "
          f"retrained on train+val, test top-1; SGD momentum {ft.momentum}, batch "
          f"{tuned.batch_size}, {tuned.steps} steps, warm-up {tuned.warmup_steps}, "
          f"lr x0.1 at {list(tuned.decay_steps)}, crop={ft.crop} flip={ft.flip}"),
  }]
