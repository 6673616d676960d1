"""Every notebook in notebooks/ runs headless (nbclient, a fresh IPython kernel)
on runlocal checkpoints made here (Barlow Twins; CLIP for image_text.ipynb), pointed at them through its parameters'
environment variables; any error in any cell fails the test, and each must finish
within a minute."""
import os
import time

import nbclient
import nbformat
import pytest

from tandem.ssl import train
from conftest import ROOT, bt_config

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks"))
                   if f.endswith(".ipynb"))


@pytest.fixture(scope="module")
def checkpoints(tiny_data_dir, tmp_path_factory):
  """Two 4-step Barlow Twins CNN runs with different seeds (one architecture)."""
  workdirs = []
  for seed in (0, 1):
    path = tmp_path_factory.mktemp(f"bt_seed{seed}")
    config = bt_config(tiny_data_dir, "runlocal,model=cnn", total_steps=4, seed=seed)
    config.evals.linear_probe.baselines = True
    train.train(config, str(path))
    workdirs.append(str(path))
  return workdirs


def test_notebooks_are_stored_without_outputs():
  assert {"analyse_checkpoint.ipynb", "compare_checkpoints.ipynb",
          "image_text.ipynb"} <= set(NOTEBOOKS)
  for name in NOTEBOOKS:
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    for cell in notebook.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless(name, tmp_path, monkeypatch, request):
  if name == "image_text.ipynb":  # A CLIP checkpoint on a tiny captioned_shapes.
    clip_workdir, data_dir = request.getfixturevalue("image_text_setup")
    monkeypatch.setenv("TANDEM_CLIP_WORKDIR", clip_workdir)
  else:  # Barlow Twins checkpoints on a tiny Fashion-MNIST.
    checkpoints = request.getfixturevalue("checkpoints")
    data_dir = request.getfixturevalue("tiny_data_dir")
    monkeypatch.setenv("TANDEM_WORKDIR", checkpoints[0])
    monkeypatch.setenv("TANDEM_WORKDIRS", ",".join(checkpoints))
  monkeypatch.setenv("TANDEM_DATA_DIR", data_dir)
  monkeypatch.setenv("TANDEM_DATASET", "fashion_mnist")
  monkeypatch.setenv("TANDEM_MAX_EXAMPLES", "0")
  monkeypatch.setenv("TANDEM_FEATURE_CACHE", str(tmp_path / "features"))
  monkeypatch.setenv("OMP_NUM_THREADS", "1")  # t-SNE's threads on a busy 2-core box.
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  start = time.time()
  nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  seconds = time.time() - start
  assert seconds < 60, f"{name} took {seconds:.0f} s"
  outputs = [o for cell in notebook.cells if cell.cell_type == "code"
             for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), name  # Plots drawn.
  text = "".join(o.get("text", "") for o in outputs)
  if name == "compare_checkpoints.ipynb":  # Same architecture: the path was walked.
    assert "error barrier:" in text, text
  elif name == "image_text.ipynb":
    assert "zero-shot top-1" in text, text
  else:
    assert "linear probe" in text, text
