"""Fine-tuning: masks train exactly their parameters, counts, learning, sharding,
the VTAB selection protocol, divergence and the BiT-HyperRule schedule."""
from flax import traverse_util
import jax
import numpy as np
import pytest

from configs.ssl import barlow_twins
from tandem import models
from tandem import parallel
from tandem.transfer import features
from tandem.transfer import finetune
from tandem.transfer import periodic
from tandem.transfer import protocol

NUM_CLASSES = 4
# Few steps, no augmentation (its compilation is the slow part on CPU): the tests
# that share these settings and shapes share one compiled step.
FAST = dict(steps=6, batch_size=32, lr_per_512=2.0, crop=False, flip=False, lora_rank=2)


def _pretrained(model: str, model_kwargs=None, seed=0):
  """A 16x16 one-channel config and random "pretrained" whole-model variables."""
  config = barlow_twins.get_config(f"runlocal,dataset=fashion_mnist,model={model}")
  config.input.image_size = 16
  if model_kwargs:
    config.model = model_kwargs
  backbone = models.get_model(config.model_name, **config.model.to_dict())
  # rbg: XLA:CPU compiles the init much faster than with threefry (see train.py).
  variables = backbone.init(jax.random.key(seed, impl="rbg"),
                            np.zeros((2, 16, 16, 1), np.float32))
  whole = {"params": {"encoder": variables["params"], "projector": {}}}
  if "batch_stats" in variables:
    whole["batch_stats"] = {"encoder": variables["batch_stats"]}
  return config, whole


@pytest.fixture(scope="module")
def cnn():
  # Hand-countable: conv 3·3·1·4 = 36, bn 2·4 = 8, conv 3·3·4·8 = 288, bn 16,
  # flatten 4·4·8 = 128 -> dense 128·16 = 2048, bn 32: 2,428 backbone parameters.
  return _pretrained("cnn", dict(widths=(4, 8), strides=(2, 2), pool="flatten",
                                 dense_dim=16))


def bars(n: int, seed: int):
  """Class = row of a bright horizontal bar on noise (4 classes, 16x16 uint8)."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % NUM_CLASSES
  images = rng.integers(0, 60, (n, 16, 16), dtype=np.uint8)
  for i, label in enumerate(labels):
    images[i, 1 + 4 * label:3 + 4 * label, 2:14] = 230
  return images, labels


HEAD = 16 * NUM_CLASSES + NUM_CLASSES  # 68
NORMS = {("stage1_bn1", "scale"), ("stage1_bn1", "bias"), ("stage2_bn1", "scale"),
         ("stage2_bn1", "bias"), ("dense_bn", "scale"), ("dense_bn", "bias")}
COUNTS = {
    "full": 2428 + HEAD,
    "head": HEAD,
    "norm": 8 + 16 + 32 + HEAD,
    "lora": 128 * 2 + 2 * 16 + HEAD,  # Only `dense` is a dense kernel; rank 2.
}


def _flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.mark.parametrize("mode", finetune.MODES)
def test_each_mode_trains_exactly_its_parameters(cnn, mode):
  config, variables = cnn
  before = jax.tree.map(np.array, variables)
  images, labels = bars(64, 0)
  tuned = finetune.finetune(config, variables, images, labels, NUM_CLASSES,
                            ft_config=dict(FAST, mode=mode))
  assert tuned.trainable_params == COUNTS[mode]

  old, new = _flat(before["params"]["encoder"]), _flat(tuned.params["encoder"])
  changed = {k for k in old if not np.array_equal(old[k], new[k])}
  assert changed == {"full": set(old), "head": set(), "norm": NORMS,
                     "lora": set()}[mode]
  assert np.abs(np.asarray(tuned.params["head"]["kernel"])).max() > 0
  old, new = _flat(before["batch_stats"]["encoder"]), _flat(tuned.model_state)
  stats_changed = {k for k in old
                   if not np.array_equal(old[k], new[("batch_stats",) + k])}
  # Eval-mode backbone (head, lora): running statistics are left untouched.
  assert bool(stats_changed) == (mode in ("full", "norm"))
  if mode == "lora":
    lora = _flat(tuned.params["lora"])
    assert set(lora) == {("dense", "lora_a"), ("dense", "lora_b")}
    assert np.abs(lora["dense", "lora_b"]).max() > 0
    initial_a = _flat(finetune.init_lora(before["params"]["encoder"], 2, seed=0))
    assert not np.array_equal(lora["dense", "lora_a"], initial_a["dense", "lora_a"])
  # The caller's variables are neither changed nor donated.
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array,
                                                                   variables))


def test_frozen_parameters_have_no_optimizer_state(cnn):
  config, variables = cnn
  ft = finetune.resolve_config(dict(mode="norm"))
  params, _ = finetune.init_params(config, variables, NUM_CLASSES, ft)
  mask = finetune.trainable_mask(params, ft.mode, ft.norm_pattern)
  state = finetune.make_optimizer(mask, 0.1, 0.9, 0.0).init(params)
  assert sum(np.size(x) for x in jax.tree.leaves(state)) == COUNTS["norm"]


def test_lora_counts_attention_kernels_and_starts_at_the_pretrained_model():
  config, variables = _pretrained("vit_tiny")  # width 32, 2 heads, mlp 64, depth 1.
  tuned = finetune.finetune(config, variables, *bars(8, 0), NUM_CLASSES,
                            ft_config=dict(FAST, mode="lora", steps=0))
  # query/key/value [32, 2, 16] and out [2, 16, 32] act as 32x32 maps: 2·(32+32)
  # each; mlp fc1 32x64 and fc2 64x32: 2·(32+64) each. Head 32·4 + 4.
  assert tuned.trainable_params == 4 * 128 + 2 * 192 + 32 * NUM_CLASSES + NUM_CLASSES
  out = tuned.params["lora"]["Transformer"]["block00"]["attn"]["out"]
  assert out["lora_a"].shape == (32, 2) and out["lora_b"].shape == (2, 32)
  images = bars(8, 1)[0]
  pretrained = features.encoder_variables(variables["params"], {})
  np.testing.assert_array_equal(
      features.extract(tuned.backbone_variables(), images, config),
      features.extract(pretrained, images, config))


def test_full_finetuning_learns_a_separable_task(cnn):
  config, variables = cnn
  tuned = finetune.finetune(config, variables, *bars(128, 0), NUM_CLASSES,
                            ft_config=dict(FAST, steps=30, flip=True, lr_per_512=1.0))
  images, labels = bars(64, 1)
  assert tuned.accuracy(images, labels) > 0.9
  # Prediction pads to fixed-size batches: a short batch gets the same logits.
  logits = tuned.predict(images)
  assert logits.shape == (64, NUM_CLASSES)
  np.testing.assert_allclose(tuned.predict(images[:5]), logits[:5], rtol=1e-5,
                             atol=1e-5)


def test_eight_devices_match_one(cnn):
  config, variables = cnn
  images, labels = bars(64, 0)
  ft = dict(FAST, steps=3, warmup_steps=0, decay_at=(), crop=True, flip=True,
            lr_per_512=1.0)
  results = []
  mesh8 = parallel.make_mesh({"data": -1}, jax.devices()[:8])
  # Variables as `tandem.load` gives them (committed to one device, copied onto the
  # mesh through the host), and already replicated on the mesh (as in pretraining's
  # periodic evals: a jitted copy).
  on_one = jax.device_put(variables, jax.devices()[0])
  on_mesh = jax.device_put(variables, parallel.replicated(mesh8))
  for devices, start in ((jax.devices()[:1], on_one), (jax.devices()[:8], on_one),
                         (jax.devices()[:8], on_mesh)):
    mesh = parallel.make_mesh({"data": -1}, devices)
    tuned = finetune.finetune(config, start, images, labels, NUM_CLASSES,
                              ft_config=ft, mesh=mesh)
    results.append(jax.tree.map(np.asarray, (tuned.params, tuned.model_state)))
  assert len(jax.devices()) == 8
  for other in results[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 results[0], other)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)),
                         results[0][0]["encoder"], variables["params"]["encoder"])
  assert all(jax.tree.leaves(changed))  # The backbone did train.


class _SpyTask(protocol.TaskData):
  """Records which splits are read, and whether inside `selection()`."""

  def split(self, name):
    self.reads = getattr(self, "reads", []) + [(name, self._selecting)]
    return super().split(name)


def test_evaluate_task_selects_lr_on_val_without_touching_test(cnn):
  config, variables = cnn
  splits = {name: protocol.Split(name, *bars(n, seed)) for name, n, seed in
            (("train", 64, 0), ("val", 32, 1), ("test", 32, 2))}
  task = _SpyTask("bars", NUM_CLASSES, splits)
  # lr 0 leaves the zero head at zero: val top-1 = 1/4. The good lr comes second,
  # so only a choice by val score (ties go to the earlier value) picks it.
  record, = finetune.evaluate_task(
      task, dict(FAST, steps=20, lr_per_512_grid=(0.0, 1.0)),
      protocol.Model(config, variables))
  assert ("test", True) not in task.reads and ("test", False) in task.reads
  assert record["lr_per_512"] == 1.0 and record["val_top1"] > 0.9, record
  assert record["value"] > 0.9
  assert record["evaluator"] == "finetune_full" and record["metric"] == "test_top1"
  assert record["steps"] == 20 and record["trainable_params"] == COUNTS["full"]
  assert "val" in record["protocol"]


def test_nonfinite_loss_raises_naming_the_step(cnn):
  config, variables = cnn
  broken = jax.tree.map(np.array, variables)
  broken["params"]["encoder"]["dense"]["kernel"][0, 0] = np.nan
  with pytest.raises(finetune.NonFiniteLossError, match="non-finite at step 0"):
    finetune.finetune(config, broken, *bars(64, 0), NUM_CLASSES,
                      ft_config=dict(FAST, mode="head"))


@pytest.mark.parametrize("n, steps, warmup, decays", [
    (1000, 500, 100, (150, 300, 450)),
    (50_000, 10_000, 500, (3000, 6000, 9000)),
    (1_000_000, 20_000, 500, (6000, 12_000, 18_000)),
])
def test_bit_hyperrule_schedule(n, steps, warmup, decays):
  plan = finetune.plan(n, finetune.resolve_config())
  assert (plan["steps"], plan["warmup_steps"], plan["decay_steps"]) == (
      steps, warmup, decays)
  batch = min(512, n)
  assert plan["batch_size"] == batch
  peak = 0.003 * batch / 512
  assert plan["peak_lr"] == pytest.approx(peak)
  lr = finetune.lr_schedule(peak, warmup, decays)
  at = [0, warmup // 2, warmup, decays[0] - 1, decays[0], decays[1], decays[2],
        steps - 1]
  np.testing.assert_allclose(
      [float(lr(s)) for s in at],
      [0, peak / 2, peak, peak, peak / 10, peak / 100, peak / 1000, peak / 1000],
      rtol=1e-5)


def test_overrides_scale_the_schedule_and_clip_the_batch():
  ft = finetune.resolve_config(dict(steps=40, batch_size=512))
  plan = finetune.plan(100, ft, batch_shards=8)
  assert plan["warmup_steps"] == 8  # The HyperRule's 20% below 20k examples.
  assert plan["decay_steps"] == (12, 24, 36)
  assert plan["batch_size"] == 96  # 100 examples, rounded down to 8 shards.
  with pytest.raises(ValueError, match="Unknown fine-tuning config"):
    finetune.resolve_config(dict(learning_rate=0.1))


def test_evaluator_runs_from_the_pretraining_config(cnn, tiny_data_dir):
  config, variables = cnn
  config = config.copy_and_resolve_references()
  config.evals = dict(finetune=dict(
      dataset="fashion_mnist", train_split="train", test_split="test",
      max_train=64, max_test=32, num_val=32, every=0,
      **dict(FAST, mode="full", steps=20)))
  evals = periodic.PeriodicEvals(config, data_dir=tiny_data_dir)
  metrics, images = evals.run(evals.due(config.total_steps), 0, variables)
  assert not images
  assert set(metrics) == {"finetune_full/test_top1", "finetune_full/val_top1",
                          "finetune_full/lr_per_512"}
  # conftest's images are separable (a bar whose row is the label): far above the
  # 10 classes' chance, scored on exactly max_test and num_val examples.
  test_top1, val_top1 = (metrics[f"finetune_full/{s}_top1"] for s in ("test", "val"))
  assert test_top1 > 0.5 and val_top1 > 0.3, metrics
  assert (32 * test_top1).is_integer() and (32 * val_top1).is_integer()
  assert metrics["finetune_full/lr_per_512"] == FAST["lr_per_512"]
