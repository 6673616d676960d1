"""Test set-up: 8 fake CPU devices so multi-device sharding is tested on one CPU,
and a tiny Fashion-MNIST-format dataset so the real configs run without the full data.

The XLA flags must be set before JAX initialises its backend, hence at import time.
The suite's programs are small and compiling them takes most of its time, so they
are compiled for compile speed, not run speed: without LLVM's optimisations
(`--xla_backend_optimization_level=0`, `--xla_llvm_disable_expensive_passes`: the
same HLO, less optimised machine code; the suite takes ~30% less time from a cold
compilation cache) and with XLA:CPU's older elemental emitters instead of its
fusion emitters (`--xla_cpu_use_fusion_emitters=false`: a ViT step on 8 devices
compiles in ~25% less time). Training runs and benchmarks outside the tests set
none of these.
"""
import os

def xla_flags(devices: int) -> str:
  """XLA_FLAGS for `devices` fake CPU devices, compiled as the suite compiles
  (subprocesses the tests start too)."""
  return (f"--xla_force_host_platform_device_count={devices} "
          "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
          "--xla_cpu_use_fusion_emitters=false")


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from idx_files import write_idx  # pylint: disable=g-import-not-at-top


def fake_fashion_mnist(directory, num_train: int = 320, num_test: int = 160, seed=0):
  """Class-dependent images (a bright bar whose position encodes the label)."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in (("train", num_train), ("t10k", num_test)):
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
      images[i, 2 + 2 * label:5 + 2 * label, 4:24] = 230
    write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"), labels)
    arrays[split] = (images, labels)
  return arrays


def prepare_fake_fashion_mnist(idx_dir, data_dir, **sizes) -> str:
  """Builds `fashion_mnist` in `data_dir` with the project's builder, from
  `fake_fashion_mnist` files (`sizes`: num_train, num_test) written to `idx_dir`."""
  from tandem.data import prepare  # pylint: disable=g-import-not-at-top
  fake_fashion_mnist(str(idx_dir), **sizes)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("TANDEM_FASHION_MNIST_DIR", str(idx_dir))
    prepare.prepare("fashion_mnist", str(data_dir))
  return str(data_dir)


def prepare_tiny_captioned_shapes(data_dir) -> str:
  """Builds a small `captioned_shapes` (160/48/48 examples) in `data_dir`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tandem.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  captioned_shapes.CaptionedShapes(
      data_dir=str(data_dir), file_format="array_record",
      split_sizes={"train": 160, "validation": 48, "test": 48}).download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return str(data_dir)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
  """A real single-host SLURM cluster (tests/slurm_cluster.py), stopped at the end;
  the test is skipped, saying why, where one cannot run."""
  import slurm_cluster  # pylint: disable=g-import-not-at-top
  reason = slurm_cluster.missing_reason()
  if reason:
    pytest.skip(reason)
  cluster = slurm_cluster.Cluster(str(tmp_path_factory.mktemp("slurm"))).start()
  yield cluster
  cluster.stop()


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A data dir holding a small `fashion_mnist` built by the project's builder."""
  return prepare_fake_fashion_mnist(tmp_path_factory.mktemp("idx"),
                                    tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def image_text_setup(tmp_path_factory):
  """(workdir, data dir): a CLIP runlocal checkpoint trained on a tiny
  captioned_shapes, and a data dir with that dataset (retrieval, zero-shot) and a
  tiny Fashion-MNIST (a task with class names)."""
  data_dir = tmp_path_factory.mktemp("image_text_data")
  # 1,000 training examples: VTAB's train800 + val200 fit.
  prepare_fake_fashion_mnist(tmp_path_factory.mktemp("idx_1000"), data_dir,
                             num_train=1000, num_test=100)
  prepare_tiny_captioned_shapes(data_dir)
  workdir = tmp_path_factory.mktemp("clip")
  config = load_config(os.path.join(ROOT, "configs/ssl/clip.py"), "runlocal")
  config.data_dir = str(data_dir)
  config.evals = {}
  from tandem.ssl import train  # pylint: disable=g-import-not-at-top
  train.train(config, str(workdir))
  return str(workdir), str(data_dir)


# Tests of a minute or more from a cold compilation cache (processes started
# through SLURM, the fake gcloud, several trainings): run first, so that none
# starts last and leaves one worker running alone at the end.
SLOW_FIRST = ("test_slurm.py", "test_parallel.py", "test_tpu_pod.py", "test_sweep.py",
              "test_notebooks.py")


def pytest_collection_modifyitems(items):
  slow = lambda item: item.nodeid.split("::")[0].rsplit("/", 1)[-1] in SLOW_FIRST
  items[:] = [i for i in items if slow(i)] + [i for i in items if not slow(i)]


def pytest_configure(config):
  """A persistent XLA compilation cache: the suite compiles the same steps often."""
  del config
  import jax  # pylint: disable=g-import-not-at-top
  cache = os.environ.get("TANDEM_TEST_COMPILATION_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "tandem-xla"))
  jax.config.update("jax_compilation_cache_dir", cache)
  # Every program, also those compiling in under a second: the many small ones
  # (eager ops, evaluators) recur in every subprocess and every xdist worker.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  # Subprocesses the tests start (command-line runs, multi-process training) too.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path, arg=None):
  """`get_config(arg)` of the config file at `path` (`tandem.config_arg.load_config`,
  as the command line loads it)."""
  from tandem import config_arg  # pylint: disable=g-import-not-at-top
  return config_arg.load_config(path if arg is None else f"{path}:{arg}")


# Overrides of a run whose test is about training itself (resume, sharding, launch):
# no final evaluation (the evaluators have their own tests; each costs seconds).
# Training run as a program takes tests/bt_no_evals.py as its config instead.
NO_EVALS = {"evals": {}}
BT_NO_EVALS = "tests/bt_no_evals.py:runlocal"


def sigterm_when_logged(monkeypatch, step: int):
  """Delivers a real SIGTERM to this process while `step` is being logged (a
  preemption mid-run); returns a function that stops doing so."""
  import signal  # pylint: disable=g-import-not-at-top
  from tandem import metrics_writer  # pylint: disable=g-import-not-at-top
  original_write = metrics_writer.MetricsWriter.write

  def write_and_signal(self, logged_step, metrics):
    original_write(self, logged_step, metrics)
    if logged_step == step:
      signal.raise_signal(signal.SIGTERM)

  monkeypatch.setattr(metrics_writer.MetricsWriter, "write", write_and_signal)
  return lambda: monkeypatch.setattr(metrics_writer.MetricsWriter, "write",
                                     original_write)


def bt_config(data_dir, arg="runlocal", **overrides):
  """The Barlow Twins config on `data_dir`, with dotted-key overrides."""
  config = load_config(os.path.join(ROOT, "configs/ssl/barlow_twins.py"), arg)
  config.data_dir = data_dir
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def run_in_fresh_python(code: str, timeout: float = 300) -> None:
  """Runs `code` in a new Python process (from the checkout, JAX on CPU), for
  what an import leaves behind; fails with its stderr unless it exits 0."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]


def check_runlocal_run(config, results, workdir) -> None:
  """What every runlocal run leaves: its steps, a finite loss, a linear probe far
  above chance, the resolved config, metrics up to the last step, TensorBoard
  events, and the resources it needs (its parameter count equal to the
  checkpoint's)."""
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import tandem  # pylint: disable=g-import-not-at-top
  workdir = str(workdir)
  assert results["step"] == config.total_steps
  assert np.isfinite(results["final"]["loss"])
  # conftest's images are separable (a bar whose row is the label): even after 2
  # steps the probe is far above the 10 classes' chance (measured 0.26-0.94); a
  # probe fitted or scored on mismatched labels would sit at 0.1.
  probe = results["final"]["linear_probe/pre_logits/test_top1"]
  assert 0.2 < probe <= 1.0
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["total_steps"] == config.total_steps
  lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
  assert json.loads(lines[-1])["step"] == config.total_steps
  assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  # What the run needs per device, reported before the first step.
  resources = json.load(open(os.path.join(workdir, "resources.json")))
  assert resources["params"] == sum(
      np.size(x) for x in jax.tree.leaves(tandem.load(workdir).params))
  assert resources["params_mb_per_device"] > 0 and resources["step_flops"] > 0


def assert_same_params(workdir_a, workdir_b, rtol=1e-4, atol=1e-6):
  """The last checkpoints' parameters of two training workdirs are equal, loaded
  with `tandem.load`."""
  import jax  # pylint: disable=g-import-not-at-top
  import tandem  # pylint: disable=g-import-not-at-top
  a, b = (jax.device_get(tandem.load(str(d)).params) for d in (workdir_a, workdir_b))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol),
               a, b)


def init_objective(config):
  """(objective, model, params, model_state) of `config`, initialised (jitted:
  op by op, a ViT's init takes seconds)."""
  import jax  # pylint: disable=g-import-not-at-top
  from tandem.ssl import objectives  # pylint: disable=g-import-not-at-top
  objective = objectives.get_objective(config.objective)
  net = objective.make_model(config)
  inputs = objective.init_inputs(config)
  variables = dict(jax.jit(lambda key: net.init(key, *inputs, train=False))(
      jax.random.key(0)))
  params = variables.pop("params")
  return objective, net, params, variables


def random_batch(config, n=16, seed=0):
  """A batch of `n` random uint8 images at the config's size (labels 0..9, and
  random tokens when the config has text)."""
  rng = np.random.default_rng(seed)
  size, channels = config.input.image_size, config.input.channels
  batch = {"image": rng.integers(0, 256, (n, size, size, channels), np.uint8),
           "label": np.arange(n) % 10}
  if "text" in config.input:
    batch["text"] = rng.integers(3, 200, (n, config.input.text.max_len), np.int32)
  return batch


def toy_task_data(n_train=80, n_val=20, n_test=40, num_classes=4, dim=8, nan=False):
  """A `TaskData` whose extractor reads the label back from pixel 0 (features: a
  scaled one-hot, one noise column, zeros), optionally all NaN."""
  from tandem.transfer import protocol  # pylint: disable=g-import-not-at-top

  def split(name, n, seed):
    labels = np.arange(n) % num_classes
    images = np.zeros((n, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = labels
    images[:, 0, 1, 0] = np.random.default_rng(seed).integers(0, 255, n)
    return protocol.Split(name, images, labels)

  def extract(images, layer):
    del layer
    x = np.eye(num_classes)[images[:, 0, 0, 0]] * 4
    x = np.concatenate([x, images[:, 0, 1:2, 0] / 255.0,
                        np.zeros((len(images), dim - num_classes - 1))], 1)
    return x * np.nan if nan else x

  return protocol.TaskData("toy", num_classes, {
      "train": split("train", n_train, 0), "val": split("val", n_val, 1),
      "test": split("test", n_test, 2)}, extract, group="natural")
