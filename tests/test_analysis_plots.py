"""Notebook figures: each returns a Figure, saves a PNG when given a path, and draws
the numbers it was given (training columns, few-shot means, PCA against an SVD
projection, CKA annotations, suite means); `spearman` against hand-computed ranks
and scipy; bad input raises a ValueError that names the problem."""
import subprocess
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.container import BarContainer  # pylint: disable=wrong-import-position
from matplotlib.figure import Figure  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import pandas as pd  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

from tandem.analysis import plots  # pylint: disable=wrong-import-position


@pytest.fixture(autouse=True)
def close_figures():
  yield
  plt.close("all")


def check_saved(fig, path):
  assert isinstance(fig, Figure)
  assert path.exists() and path.stat().st_size > 0
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def image_axes(fig):
  return [ax for ax in fig.axes if ax.images]


def test_import_is_light():
  code = ("import sys; import tandem.analysis.plots; "
          "print(sorted(m for m in ('jax', 'tensorflow_datasets', 'grain', 'absl', "
          "'matplotlib', 'pandas', 'sklearn') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]"


def train_table():
  return pd.DataFrame({"step": [10, 20, 30, 40], "loss": [4.0, 3.0, 2.5, 2.25],
                       "lr": [0.1, 0.2, 0.2, 0.1]})


def test_training_curves(tmp_path):
  train = train_table()
  fig = plots.training_curves(train, ("loss", "lr"), path=tmp_path / "t.png")
  check_saved(fig, tmp_path / "t.png")
  assert len(fig.axes) == 2
  line, = fig.axes[0].lines
  np.testing.assert_array_equal(line.get_xdata(), train.step)
  np.testing.assert_array_equal(line.get_ydata(), train.loss)


def test_training_curves_with_evals():
  rows = [(100, "linear_probe/encoder/test_top1", False, 0.5),
          (200, "linear_probe/encoder/test_top1", False, 0.7),
          (200, "fewshot/encoder/fewshot_5shot_test_top1_seed0", False, 0.6),
          (200, "fewshot/encoder/fewshot_5shot_test_top1_std", False, 0.01),
          (200, "knn/encoder/top1", False, 0.9),
          (0, "linear_probe/init/test_top1", True, 0.3)]
  evals = pd.DataFrame(
      [{"step": s, "metric": m, "evaluator": m.split("/")[0], "layer": m.split("/")[1],
        "name": m.split("/")[2], "value": v, "baseline": b} for s, m, b, v in rows])
  fig = plots.training_curves(train_table(), evals=evals)
  assert len(fig.axes) == 2
  ax = fig.axes[1]
  probe, baseline = ax.lines
  assert probe.get_label() == "linear_probe/encoder/test_top1"
  np.testing.assert_allclose(probe.get_ydata(), [50.0, 70.0])
  assert baseline.get_linestyle() == "--"
  assert baseline.get_label() == "linear_probe/init/test_top1"
  np.testing.assert_allclose(baseline.get_ydata(), [30.0, 30.0])


def test_training_curves_missing_column():
  with pytest.raises(ValueError, match=r"images_per_sec.*available.*'loss'"):
    plots.training_curves(train_table(), ("loss", "images_per_sec"))


FEWSHOT = {1: {"mean": 0.2, "std": 0.05, "top1": [0.15, 0.25]},
           5: {"mean": 0.5, "std": 0.0, "top1": [0.5, 0.5]},
           10: {"mean": 0.625, "std": 0.025, "top1": [0.6, 0.65]}}


def test_fewshot_curve(tmp_path):
  fig = plots.fewshot_curve(FEWSHOT, path=tmp_path / "f.png")
  check_saved(fig, tmp_path / "f.png")
  ax, = fig.axes
  line = ax.containers[0].lines[0]
  np.testing.assert_array_equal(line.get_xdata(), [1, 5, 10])
  np.testing.assert_allclose(line.get_ydata(), [20.0, 50.0, 62.5])
  assert ax.get_xscale() == "log"


def test_fewshot_curve_several_runs():
  other = {str(s): {**v, "mean": v["mean"] / 2} for s, v in FEWSHOT.items()}
  fig = plots.fewshot_curve({"bt": FEWSHOT, "mae": other})
  ax, = fig.axes
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["bt", "mae"]
  np.testing.assert_allclose(ax.containers[1].lines[0].get_ydata(),
                             [10.0, 25.0, 31.25])
  with pytest.raises(ValueError, match="shots"):
    plots.fewshot_curve({"bt": {1: 0.5}})


def test_fewshot_curve_and_confusion_matrix_take_an_evaluator_result(tmp_path):
  from tandem.transfer import results  # pylint: disable=g-import-not-at-top
  labels = np.array([0, 0, 0, 1, 1, 2])
  fewshot = results.Result(
      "fewshot", {"fewshot_1shot": 0.2, "fewshot_5shot": 0.5},
      {"fewshot_1shot": np.zeros((2, 6), int),
       "fewshot_5shot": np.array([[0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2]])},
      labels, 3, {"fewshot_1shot": {"shots": 1, **FEWSHOT[1]},
                  "fewshot_5shot": {"shots": 5, **FEWSHOT[5]}})
  ax, = plots.fewshot_curve(fewshot).axes
  np.testing.assert_allclose(ax.containers[0].lines[0].get_ydata(), [20.0, 50.0])
  # Both seeds' predictions, rows by true class: class 0 (6 examples) was
  # predicted 0 three times and 1 three times.
  fig = plots.confusion_matrix(fewshot, setting="fewshot_5shot",
                               class_names=["a", "b", "c"], path=tmp_path / "c.png")
  check_saved(fig, tmp_path / "c.png")
  image = image_axes(fig)[0].images[0].get_array()
  np.testing.assert_allclose(image, [[0.5, 0.5, 0], [0, 0.75, 0.25], [0, 0, 1]])
  assert image_axes(fig)[0].get_title() == "fewshot_5shot"
  counts = plots.confusion_matrix(fewshot.confusion("fewshot_5shot"), normalize=False)
  assert [t.get_text() for t in counts.axes[0].texts][:3] == ["3", "3", "0"]
  with pytest.raises(ValueError, match="name one of"):
    plots.confusion_matrix(fewshot)
  with pytest.raises(ValueError, match="2 class names for 3"):
    plots.confusion_matrix(fewshot.confusion("fewshot_1shot"), class_names=["a", "b"])


def test_retrieval_grid_rows_are_queries_and_frames_mark_hits(tmp_path):
  gallery = np.arange(5 * 4 * 4).reshape(5, 4, 4).astype(np.uint8)
  fig = plots.retrieval_grid(["a red circle", "two squares"], gallery,
                             [[4, 0, 2], [1, 3, 0]],
                             hits=[[True, False, False], [False, False, True]],
                             path=tmp_path / "r.png")
  check_saved(fig, tmp_path / "r.png")
  axes = np.array(fig.axes).reshape(2, 4)
  assert axes[0, 0].texts[0].get_text() == "a red circle" and not axes[0, 0].images
  np.testing.assert_array_equal(axes[0, 1].images[0].get_array(), gallery[4])
  np.testing.assert_array_equal(axes[1, 3].images[0].get_array(), gallery[0])
  green, red = (0.0, 0.5019607843137255, 0.0, 1.0), (1.0, 0.0, 0.0, 1.0)
  assert axes[0, 1].spines["top"].get_edgecolor() == green
  assert axes[0, 2].spines["top"].get_edgecolor() == red
  with pytest.raises(ValueError, match=r"\[Q=2, k\]"):
    plots.retrieval_grid(["a", "b"], gallery, [[0, 1]])
  with pytest.raises(ValueError, match="hits of shape"):
    plots.retrieval_grid(["a"], gallery, [[0, 1]], hits=[[True]])


def test_embedding_2d_pca_is_an_svd_projection(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 1.0, 0.5, 0.1])
  labels = rng.integers(0, 3, size=200)
  fig = plots.embedding_2d(x, labels, class_names=["a", "b", "c"],
                           path=tmp_path / "e.png")
  check_saved(fig, tmp_path / "e.png")
  centred = x - x.mean(0)
  _, _, vt = np.linalg.svd(centred)
  expected = centred @ vt[:2].T
  assert fig.coords.shape == (200, 2)
  for j in range(2):
    sign = np.sign(fig.coords[0, j] * expected[0, j])
    np.testing.assert_allclose(fig.coords[:, j], sign * expected[:, j], atol=1e-9)
  legend = fig.axes[0].get_legend()
  assert [t.get_text() for t in legend.get_texts()] == ["a", "b", "c"]


def test_embedding_2d_subsamples_and_tsne():
  threadpoolctl = pytest.importorskip("threadpoolctl")  # scikit-learn's dependency.
  x = np.random.default_rng(1).normal(size=(80, 5))
  # One OpenMP thread: on a shared, busy CPU more make t-SNE several times slower.
  with threadpoolctl.threadpool_limits(1, user_api="openmp"):
    fig = plots.embedding_2d(x, np.arange(80) % 4, method="tsne", max_points=60)
  assert fig.coords.shape == (60, 2)
  assert np.all(np.isfinite(fig.coords))
  assert len(np.unique(fig.indices)) == 60
  with pytest.raises(ValueError, match="unknown method 'umap'"):
    plots.embedding_2d(x, method="umap")


@pytest.mark.parametrize("shape", [(6, 8, 8), (6, 8, 8, 1), (6, 8, 8, 3)])
def test_neighbours_grid(tmp_path, shape):
  images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
  labels = np.array([0, 1, 0, 1, 0, 1])
  indices = np.array([[2, 3, 4], [1, 3, 5]])
  fig = plots.neighbours_grid(images[:2], images, indices, query_labels=labels[:2],
                              gallery_labels=labels, class_names=["cat", "dog"],
                              path=tmp_path / "n.png")
  check_saved(fig, tmp_path / "n.png")
  assert len(image_axes(fig)) == 2 * (3 + 1)
  first_row = fig.axes[:4]
  assert [ax.get_title() for ax in first_row] == ["cat", "cat", "dog", "cat"]
  assert [ax.title.get_color() for ax in first_row[1:]] == ["green", "red", "green"]
  with pytest.raises(ValueError, match="indices"):
    plots.neighbours_grid(images[:2], images, indices[:1])


def test_cka_heatmap(tmp_path):
  matrix = np.array([[1.0, 0.4567], [0.123, 0.9]])
  fig = plots.cka_heatmap(matrix, ["block1", "block2"], ["l1", "l2"], title="CKA",
                          path=tmp_path / "c.png")
  check_saved(fig, tmp_path / "c.png")
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.texts] == ["1.00", "0.46", "0.12", "0.90"]
  assert [t.get_text() for t in ax.get_xticklabels()] == ["l1", "l2"]
  assert ax.images[0].get_clim() == (0, 1)
  assert len(fig.axes) == 2  # The colorbar.


def test_image_grid(tmp_path):
  rng = np.random.default_rng(0)
  rows = {"original": rng.random((10, 8, 8, 3)),
          "masked": rng.integers(0, 256, (10, 8, 8), dtype=np.uint8),
          "reconstruction": rng.random((3, 8, 8, 1))}
  fig = plots.image_grid(rows, max_images=4, path=tmp_path / "g.png")
  check_saved(fig, tmp_path / "g.png")
  assert len(fig.axes) == 3 * 4
  assert len(image_axes(fig)) == 4 + 4 + 3
  assert [fig.axes[4 * i].get_ylabel() for i in range(3)] == list(rows)


def summary(rows):
  columns = list(dict.fromkeys(ev for evs in rows.values() for ev in evs))
  return {"columns": columns, "rows": rows, "groups": {}, "overall": {}}


SUMMARIES = {
    "bt": summary({"cifar10": {"linear_probe": [0.8, 0.01, 3], "knn": [0.7, 0.0, 1]},
                   "dtd": {"linear_probe": [0.5, 0.02, 3]}}),
    "mae": summary({"cifar10": {"knn": [0.6, 0.0, 1], "linear_probe": [0.75, 0.0, 1]},
                    "dtd": {"linear_probe": [0.45, 0.0, 1]}}),
}


def test_suite_comparison(tmp_path):
  fig = plots.suite_comparison(SUMMARIES, path=tmp_path / "s.png")
  check_saved(fig, tmp_path / "s.png")
  ax, = fig.axes
  assert ax.get_title() == "linear_probe"
  bars = [c for c in ax.containers if isinstance(c, BarContainer)]
  heights = [[p.get_height() for p in c.patches] for c in bars]
  np.testing.assert_allclose(heights, [[80.0, 50.0], [75.0, 45.0]])
  knn = plots.suite_comparison(SUMMARIES, evaluator="knn").axes[0]
  bars = [c for c in knn.containers if isinstance(c, BarContainer)]
  np.testing.assert_allclose([[p.get_height() for p in c.patches] for c in bars],
                             [[70.0], [60.0]])


def test_suite_comparison_unknown_evaluator():
  with pytest.raises(ValueError, match=r"'fewshot' is in no summary.*'knn'"):
    plots.suite_comparison(SUMMARIES, evaluator="fewshot")


def test_spearman():
  assert plots.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert plots.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  # Ties: x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4): centred dot 4.5 over
  # sqrt(4.5 * 5).
  assert plots.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(
      4.5 / np.sqrt(4.5 * 5.0))
  assert np.isnan(plots.spearman([1, 1, 1], [1, 2, 3]))
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 5, 30), rng.integers(0, 5, 30) + rng.integers(0, 2, 30)
  assert plots.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
  with pytest.raises(ValueError, match="3 x values and 2 y values"):
    plots.spearman([1, 2, 3], [1, 2])


def test_metric_vs_metric(tmp_path):
  fig = plots.metric_vs_metric([10.0, 30.0, 20.0], [0.5, 0.7, 0.8], ["a", "b", "c"],
                               xlabel="RankMe", ylabel="linear probe",
                               path=tmp_path / "m.png")
  check_saved(fig, tmp_path / "m.png")
  assert fig.spearman == pytest.approx(0.5)
  ax, = fig.axes
  assert "0.50" in ax.get_title()
  assert [t.get_text() for t in ax.texts] == ["a", "b", "c"]
