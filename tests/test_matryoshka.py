"""Matryoshka representations (Kusupati et al. 2022) as an option of the two-view
objectives: the loss on nested prefixes of pre_logits, the probe on each."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tandem.ssl import siamese
from tandem.ssl import simclr
from tandem.ssl import train

from conftest import ROOT, load_config


def test_the_loss_adds_each_prefix_and_the_full_prefix_is_the_full_projection():
  config = load_config(os.path.join(ROOT, "configs/ssl/simclr.py"), "runlocal")
  config.matryoshka_dims = (4, 8, 16)  # The runlocal CNN's pre_logits are 16 wide.
  model = simclr.make_model(config)
  images = jnp.asarray(np.random.default_rng(0).random((6, 28, 28, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), images)
  out = model.apply(variables, images)
  assert [z.shape for z in out["z_nested"]] == [out["z"].shape] * 3
  np.testing.assert_allclose(out["z_nested"][2], out["z"], rtol=1e-6)  # m = D.
  assert not np.allclose(out["z_nested"][0], out["z"])

  loss = lambda a, b: (jnp.sum((a - b) ** 2), {"x": 1.0})
  z1, z2 = jnp.ones((2, 3)), jnp.zeros((2, 3))
  n1, n2 = (jnp.full((2, 3), 2.0), jnp.ones((2, 3))), (z2, z2)
  total, metrics = siamese.with_matryoshka(loss, z1, z2, n1, n2, (1, 2))
  assert float(total) == 6.0 + 24.0 + 6.0
  assert metrics["loss_dim1"] == 24.0 and metrics["loss_dim2"] == 6.0
  assert metrics["loss_full"] == 6.0 and metrics["x"] == 1.0


def test_a_matryoshka_run_reports_the_probe_per_prefix(tiny_data_dir, tmp_path):
  config = load_config(os.path.join(ROOT, "configs/ssl/simclr.py"), "runlocal")
  config.update(data_dir=tiny_data_dir, matryoshka_dims=(4, 8))
  final = train.train(config, str(tmp_path / "run"))["final"]
  for m in (4, 8):
    assert 0.1 < final[f"linear_probe/pre_logits[:{m}]/test_top1"] <= 1.0
    assert np.isfinite(final[f"loss_dim{m}"])
  assert "linear_probe/pre_logits/test_top1" in final


def test_objectives_without_it_refuse_it(tmp_path):
  config = load_config(os.path.join(ROOT, "configs/ssl/byol.py"), "runlocal")
  config.matryoshka_dims = (4, 8)
  with pytest.raises(ValueError, match="byol does not support Matryoshka prefixes"):
    train.train(config, str(tmp_path / "run"))
  config = load_config(os.path.join(ROOT, "configs/ssl/simclr.py"), "runlocal")
  config.matryoshka_dims = (8, 4)
  with pytest.raises(ValueError, match=r"must be increasing positive prefix sizes"):
    simclr.make_model(config)
