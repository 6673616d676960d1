"""Sharding presets (`config.sharding`) and the resource report, on 8 fake devices."""
import json
import os

import jax
import numpy as np
import pytest

from tandem import optimizers
from tandem import parallel
from tandem import train_state
from tandem.ssl import objectives
from tandem.ssl import train

from conftest import ROOT, load_config


def _run(model, preset, devices, steps=3):
  """Losses, params and shardings of `steps` Barlow Twins steps on one fixed batch."""
  config = load_config(os.path.join(ROOT, "configs/ssl/barlow_twins.py"),
                       f"model={model},runlocal")
  # SGD: updates proportional to the gradients. (Adam would turn the float noise
  # of gradients that are zero in exact arithmetic, e.g. biases before a batch
  # norm, into full-size steps of either sign.)
  config.optimizer = dict(name="sgd", lr_per_256=0.5, momentum=0.9)
  objective = objectives.get_objective(config.objective)
  net = objective.make_model(config)
  tx, lr = optimizers.make_optimizer(config)
  init = train.make_init_fn(net, tx, config)
  mesh = parallel.make_mesh(parallel.preset_mesh(preset, config.mesh) if preset
                            else {"data": 1}, devices)
  key = jax.random.key(0, impl="rbg")
  abstract_params, abstract_state = jax.eval_shape(init, key)
  # Every parameter is sharded where the preset can (no size floor): the test.
  rules = (parallel.preset_rules(preset, abstract_params, mesh, min_size_mb=0.0)
           if preset else [(".*", ())])
  params_sharding = parallel.tree_shardings(abstract_params, rules, mesh)
  state_sharding = parallel.tree_shardings(abstract_state, rules, mesh)
  params, state = jax.jit(init, out_shardings=(params_sharding, state_sharding))(key)
  step = train_state.jit_step(
      train_state.make_step(objective.make_loss_fn(net, config), tx, lr_schedule=lr),
      mesh, params_sharding, state_sharding)
  rng = np.random.default_rng(0)
  batch = parallel.global_batch(
      {"image": rng.integers(0, 256, (16, 28, 28, 1), np.uint8),
       "label": np.arange(16) % 10}, mesh)
  lowered = step.lower(params, state, batch)
  compiled = lowered.compile()
  losses = []
  for _ in range(steps):
    params, state, metrics = compiled(params, state, batch)
    losses.append(float(metrics["loss"]))
  report = train_state.resource_report(lowered, compiled, params, state)
  return losses, jax.device_get(params), params_sharding, report


# The presets that shard arrays: fsdp on the CNN (convolutions, batch norm), fsdp
# and fsdp_tp on the ViT (the CNN's fsdp_tp is fsdp with a replicated `model` axis:
# no tensor-parallel rule matches). dp replicates: most other tests' training, and
# its ViT equals one device in tests/test_mae.py's sharded loss and gradients.
@pytest.mark.parametrize("model,presets", [("cnn", ("fsdp",)),
                                           ("vit_tiny", ("fsdp", "fsdp_tp"))])
def test_presets_on_8_devices_train_like_one_device(model, presets):
  losses, params, _, single = _run(model, "", jax.devices()[:1])
  for preset in presets:
    sharded_losses, sharded_params, shardings, report = _run(model, preset,
                                                             jax.devices())
    np.testing.assert_allclose(sharded_losses, losses, rtol=2e-4, err_msg=preset)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
                 sharded_params, params)
    specs = {parallel.path_str(p): s.spec for p, s in
             jax.tree_util.tree_flatten_with_path(shardings)[0]}
    # Parameters (and their optimizer state) spread over the devices.
    assert any(any(spec) for spec in specs.values())
    assert report["params_mb_per_device"] < 0.5 * single["params_mb_per_device"]
    assert report["opt_state_mb_per_device"] < 0.5 * single["opt_state_mb_per_device"]
    if preset == "fsdp_tp" and model == "vit_tiny":  # Megatron-style on `model`.
      for name in ("attn/query/kernel", "attn/key/kernel", "attn/value/kernel"):
        spec = next(s for n, s in specs.items() if n.endswith(name))
        assert spec[1] == "model", (name, spec)  # Heads.
      assert next(s for n, s in specs.items() if n.endswith("attn/out/kernel"))[0] \
          == "model"
      assert next(s for n, s in specs.items() if n.endswith("mlp/fc1/kernel"))[1] \
          == "model"
      assert next(s for n, s in specs.items() if n.endswith("mlp/fc2/kernel"))[0] \
          == "model"
  assert single["params"] == sum(np.size(x) for x in jax.tree.leaves(params))
  assert single["step_flops"] > 0 and single["step_temp_mb_per_device"] > 0


def test_fsdp_leaves_small_arrays_replicated_and_names_bad_presets():
  mesh = parallel.make_mesh(parallel.preset_mesh("fsdp", {}))
  params = {"big": jax.ShapeDtypeStruct((1024, 2048), np.float32),  # 8 MB
            "small": jax.ShapeDtypeStruct((64, 64), np.float32)}
  dp_mesh = parallel.make_mesh(parallel.preset_mesh("dp", {}))
  dp = parallel.tree_shardings(
      params, parallel.preset_rules("dp", params, dp_mesh, min_size_mb=0.0), dp_mesh)
  assert not any(any(s.spec) for s in dp.values())  # dp replicates everything.
  rules = parallel.preset_rules("fsdp", params, mesh, min_size_mb=4.0)
  specs = parallel.tree_shardings(params, rules, mesh)
  assert tuple(specs["big"].spec) == (None, "fsdp")  # The largest dimension.
  assert not any(specs["small"].spec)
  with pytest.raises(ValueError, match="fsdp_tp"):
    parallel.preset_mesh("zero3", {})


def test_bf16_accumulated_fsdp_tp_run_trains_resumes_and_loads(tiny_data_dir,
                                                               tmp_path, monkeypatch):
  import tandem  # pylint: disable=g-import-not-at-top
  from conftest import bt_config, sigterm_when_logged  # pylint: disable=g-import-not-at-top
  overrides = {"precision": "bfloat16", "grad_accum_steps": 2, "total_steps": 3,
               "sharding": "fsdp_tp", "fsdp_min_size_mb": 0.0}
  config = bt_config(tiny_data_dir, "model=vit_tiny,runlocal", **overrides)
  # Stopped by a SIGTERM once step 2 is logged: saved there, then resumed by the
  # same config (the same compiled step) for its last step.
  stop_signalling = sigterm_when_logged(monkeypatch, 2)
  assert train.train(config, str(tmp_path))["interrupted_at"] == 2
  stop_signalling()
  result = train.train(config, str(tmp_path))
  assert result["step"] == 3 and np.isfinite(result["final"]["loss"])
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  # Steps 1, 2, then 3 after the resume: none repeated.
  assert [r["step"] for r in records if "grad_norm" in r] == [1, 2, 3]
  model = tandem.load(str(tmp_path))
  assert model.step == 3
  params = jax.device_get(model.params)
  assert all(p.dtype == np.float32 and np.isfinite(p).all()
             for p in jax.tree.leaves(params))
  assert model.embed(np.zeros((2, 28, 28, 1), np.uint8)).shape[0] == 2
