"""Mesh construction, partition rules, FSDP-sharded training == data parallel, and
several processes training together over 127.0.0.1."""
import os
import subprocess

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import tandem
from tandem import parallel
from tandem.ssl import train
from conftest import bt_config


def test_mesh_from_config():
  mesh = parallel.make_mesh({"data": -1, "fsdp": 2})
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "model": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="Unknown mesh axes"):
    parallel.make_mesh({"batch": 8})
  with pytest.raises(ValueError, match="needs 6 devices"):
    parallel.make_mesh({"data": 3, "fsdp": 2})


def test_partition_rules_first_match_and_clear_errors():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  tree = {"encoder": {"kernel": np.zeros((8, 6)), "bias": np.zeros((6,))},
          "count": np.zeros(())}
  rules = [(r"encoder/kernel", (None, "fsdp")), (r"bias", ("fsdp", None)),
           (".*", ())]
  shardings = parallel.tree_shardings(tree, rules, mesh)
  assert shardings["encoder"]["kernel"].spec == P(None, "fsdp")
  assert shardings["encoder"]["bias"].spec == P()  # Spec longer than rank.
  assert shardings["count"].spec == P()
  with pytest.raises(ValueError, match="does not divide 6"):
    parallel.tree_shardings({"w": np.zeros((6, 3))}, [("w", ("data", None))], mesh)


def test_fsdp_sharded_training_equals_data_parallel(tiny_data_dir, tmp_path):
  plain = bt_config(tiny_data_dir)  # Data parallel over all 8 devices.
  train.train(plain, str(tmp_path / "data_parallel"))

  sharded = bt_config(tiny_data_dir, **{
      "mesh.data": 4, "mesh.fsdp": 2,
      "partition_rules": [(r"projector/.*kernel", (None, "fsdp")), (".*", ())]})
  train.train(sharded, str(tmp_path / "fsdp"))

  a = jax.device_get(tandem.load(str(tmp_path / "data_parallel")).params)
  b = jax.device_get(tandem.load(str(tmp_path / "fsdp")).params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5),
               a, b)
  # The rule matched: the projector's kernels were the ones sharded over fsdp.
  specs = parallel.tree_shardings(b, sharded.partition_rules,
                                  parallel.make_mesh(sharded.mesh))
  assert P(None, "fsdp") in {s.spec for s in jax.tree.leaves(specs["projector"])}


def test_two_processes_on_localhost_train_together(tiny_data_dir, tmp_path):
  """The multi-host path: 2 processes x 2 devices, gloo collectives over 127.0.0.1,
  then resumed by one process."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tmp_path / "run"
  proc = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "2",
       "--config", "configs/ssl/barlow_twins.py:runlocal",
       f"--config.data_dir={tiny_data_dir}", "--config.total_steps=3",
       "--workdir", str(workdir)],
      cwd=root, capture_output=True, text=True, timeout=300,
      env={**os.environ, "DEVICES_PER_PROCESS": "2"})
  assert proc.returncode == 0, proc.stdout + proc.stderr + (
      workdir / "process_1.log").read_text()
  assert "step 3/3" in proc.stdout
  model = tandem.load(str(workdir))
  assert model.step == 3
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(
      jax.device_get(model.params)))

  # One process resumes the two processes' run: the data stream, a global batch
  # number, and the arrays carry over, so 3 + 2 steps equal the same schedule run
  # by one process throughout (docs/PROTOCOLS.md, "Data order").
  single = tmp_path / "single"
  train.train(bt_config(tiny_data_dir, total_steps=3), str(single))
  for run in (workdir, single):
    train.train(bt_config(tiny_data_dir, total_steps=5, allow_config_change=True),
                str(run))
  resumed, reference = (jax.device_get(tandem.load(str(d)).params)
                        for d in (workdir, single))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               resumed, reference)
