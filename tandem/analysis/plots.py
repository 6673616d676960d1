"""Matplotlib figures for notebooks: training curves, few-shot curves, 2-D
embeddings, nearest-neighbour and text-to-image retrieval grids, CKA heatmaps,
confusion matrices, image grids, suite comparisons and one score against another.

    log = analysis.read_metrics("/tmp/bt")
    plots.training_curves(log.train, ("loss", "lr"), evals=log.evals)
    plots.embedding_2d(x, data.labels, method="tsne", class_names=data.class_names)

Every function returns a `matplotlib.figure.Figure` (left open, for the notebook to
show) and, given `path`, also saves it there as a PNG at 120 dpi. Accuracies
(few-shot, test_top1, suite bars) are drawn in percent. matplotlib, pandas and
scikit-learn are imported inside the functions, so importing this module is cheap
and chooses no matplotlib backend.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
  import pandas as pd
  from matplotlib.figure import Figure

DPI = 120
# Per-seed values and their std are noise next to the mean of a seeded evaluator.
_SEED_OR_STD = re.compile(r"_(?:seed\d+|std)$")


def _subplots(*args, **kwargs):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt.subplots(*args, layout="constrained", **kwargs)


def _finish(fig: Figure, path: str | None) -> Figure:
  if path is not None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
  return fig


def _name(label, class_names: Sequence[str] | None) -> str:
  return str(class_names[int(label)]) if class_names is not None else str(label)


def _show(ax, image) -> None:
  """One image on a bare axis: [H, W], [H, W, 1] (grayscale) or [H, W, 3]; uint8
  or float in [0, 1] (clipped)."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.dtype != np.uint8:
    image = np.clip(image, 0.0, 1.0)
  top = 255 if image.dtype == np.uint8 else 1.0
  if image.ndim == 2:
    ax.imshow(image, cmap="gray", vmin=0, vmax=top)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_visible(False)


def training_curves(train: pd.DataFrame, columns: Sequence[str] = ("loss",), *,
                    evals: pd.DataFrame | None = None,
                    path: str | None = None) -> Figure:
  """One panel per column of `train` (`read_metrics(workdir).train`) against step.

  With `evals` (`read_metrics(workdir).evals`), one more panel: every evaluation
  metric named `...test_top1...` (not its `_seed{s}` or `_std`) against step, and
  the baselines' (random init, raw pixels) as dashed horizontal lines.

  Returns the figure; a column missing from `train` raises ValueError.
  """
  columns = (columns,) if isinstance(columns, str) else tuple(columns)
  missing = [c for c in ("step", *columns) if c not in train.columns]
  if missing:
    raise ValueError(f"training_curves: no column(s) {missing} in the training "
                     f"table; available: {list(train.columns)}")
  panels = len(columns) + (evals is not None)
  fig, axes = _subplots(1, panels, figsize=(4.5 * panels, 3.5), squeeze=False)
  for ax, column in zip(axes[0], columns):
    frame = train[["step", column]].dropna()
    ax.plot(frame["step"].to_numpy(), frame[column].to_numpy())
    ax.set_xlabel("step")
    ax.set_title(column)
  if evals is not None:
    ax = axes[0, -1]
    top1 = evals[evals["name"].str.contains("test_top1", regex=False)
                 & ~evals["name"].str.contains(_SEED_OR_STD)]
    for metric, frame in top1[~top1["baseline"].astype(bool)].groupby(
        "metric", sort=False):
      frame = frame.sort_values("step")
      ax.plot(frame["step"].to_numpy(), 100 * frame["value"].to_numpy(), marker="o",
              markersize=3, label=metric)
    for metric, frame in top1[top1["baseline"].astype(bool)].groupby(
        "metric", sort=False):
      ax.axhline(100 * frame["value"].iloc[-1], linestyle="--", linewidth=1,
                 color="gray", label=metric)
    ax.set_xlabel("step")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("evaluations")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  return _finish(fig, path)


def _shots_table(results):
  """A few-shot `tandem.transfer.Result` as {shots: {"mean", "std", ...}}; other
  values unchanged."""
  if getattr(results, "evaluator", None) == "fewshot":
    return {d["shots"]: d for d in results.details.values()}
  return results


def _is_fewshot(results) -> bool:
  results = _shots_table(results)
  return (isinstance(results, Mapping) and bool(results)
          and all(isinstance(v, Mapping) and "mean" in v for v in results.values()))


def fewshot_curve(results: dict, *, path: str | None = None, label: str | None = None,
                  ax=None) -> Figure:
  """Mean few-shot test top-1 (%) against shots (log2 axis), ± std over seeds.

  `results` is what `tandem.transfer.fewshot` returns, or {shots: {"mean", "std",
  ...}} (keys may be strings, as after JSON), or {label: either} for one line per
  run.
  Draws on `ax` when given (another call's axis, to overlay runs).

  Returns the figure (`ax`'s when given); any other `results` raises ValueError.
  """
  if _is_fewshot(results):
    runs = {label: _shots_table(results)}
  elif (isinstance(results, Mapping) and results
        and all(_is_fewshot(v) for v in results.values())):
    runs = {name: _shots_table(run) for name, run in results.items()}
  else:
    raise ValueError("fewshot_curve: expected {shots: {'mean', 'std', ...}} or "
                     "{label: {shots: {'mean', 'std', ...}}}")
  if ax is None:
    fig, ax = _subplots(figsize=(5, 3.5))
  else:
    fig = ax.figure
  all_shots = set()
  for name, run in runs.items():
    shots = sorted(run, key=int)
    all_shots.update(int(s) for s in shots)
    means = np.array([run[s]["mean"] for s in shots], np.float64)
    stds = np.array([run[s].get("std", 0.0) for s in shots], np.float64)
    ax.errorbar(np.array([int(s) for s in shots]), 100 * means, yerr=100 * stds,
                marker="o", capsize=3, label=name)
  ax.set_xscale("log", base=2)
  ax.set_xticks(sorted(all_shots), [str(s) for s in sorted(all_shots)])
  ax.set_xlabel("shots per class")
  ax.set_ylabel("test top-1 (%)")
  if any(name is not None for name in runs):
    ax.legend(fontsize=8)
  return _finish(fig, path)


def embedding_2d(features, labels=None, *, method: str = "pca",
                 class_names: Sequence[str] | None = None, path: str | None = None,
                 seed: int = 0, max_points: int = 5000) -> Figure:
  """Scatter of features [N, D] (more dims are flattened) in 2-D, coloured by label.

  `method`: "pca" (projection of the centred features on their first two
  principal directions) or "tsne" (scikit-learn, initialised by PCA, perplexity
  min(30, (n - 1) / 3)). More than `max_points` points are subsampled with `seed`.

  Returns the figure, with the 2-D coordinates as `fig.coords` [n, 2] and the rows
  of `features` they belong to as `fig.indices`; another `method` raises
  ValueError.
  """
  if method not in ("pca", "tsne"):
    raise ValueError(f"embedding_2d: unknown method {method!r}; use 'pca' or 'tsne'")
  x = np.asarray(features, np.float64)
  x = x.reshape(len(x), -1)
  indices = np.arange(len(x))
  if len(x) > max_points:
    indices = np.sort(np.random.default_rng(seed).choice(len(x), max_points,
                                                         replace=False))
    x = x[indices]
  if method == "pca":
    if x.shape[1] < 2:
      raise ValueError(f"embedding_2d: PCA needs 2 or more feature dims, got "
                       f"{x.shape[1]}")
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    explained = 100 * s[:2] ** 2 / max(np.sum(s ** 2), 1e-30)
    axis_labels = [f"PC{i + 1} ({e:.1f}%)" for i, e in enumerate(explained)]
  else:
    from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
    coords = TSNE(n_components=2, init="pca", random_state=seed,
                  perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x)
    axis_labels = ["t-SNE 1", "t-SNE 2"]
  import matplotlib  # pylint: disable=g-import-not-at-top
  fig, ax = _subplots(figsize=(6, 5))
  if labels is None:
    ax.scatter(coords[:, 0], coords[:, 1], s=4, color="tab:blue")
  else:
    labels = np.asarray(labels)[indices]
    classes = np.unique(labels)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, c in enumerate(classes):
      mask = labels == c
      ax.scatter(coords[mask, 0], coords[mask, 1], s=4, color=cmap(i % cmap.N),
                 label=_name(c, class_names))
    if len(classes) <= 20:  # Beyond that colours repeat and the legend misleads.
      ax.legend(fontsize=7, markerscale=2, loc="center left",
                bbox_to_anchor=(1.0, 0.5))
  ax.set_xlabel(axis_labels[0])
  ax.set_ylabel(axis_labels[1])
  ax.set_title(f"{method.upper() if method == 'pca' else 't-SNE'} of {len(x)} points")
  fig.coords = np.asarray(coords)
  fig.indices = indices
  return _finish(fig, path)


def neighbours_grid(query_images, gallery_images, indices, *, query_labels=None,
                    gallery_labels=None, class_names: Sequence[str] | None = None,
                    path: str | None = None) -> Figure:
  """One row per query: the query image, then its k nearest gallery images.

  Images are [N, H, W] or [N, H, W, C] with C in (1, 3), uint8 or float in
  [0, 1]; `indices` [Q, k] index the gallery. With labels, titles name the class
  (via `class_names` when given), a neighbour's in green when it matches its
  query's label and red when not.

  Returns the figure; `indices` with a row count other than Q raises ValueError.
  """
  indices = np.asarray(indices)
  if indices.ndim != 2 or len(indices) != len(query_images):
    raise ValueError(f"neighbours_grid: indices must be [Q={len(query_images)}, k], "
                     f"got shape {indices.shape}")
  q, k = indices.shape
  fig, axes = _subplots(q, k + 1, figsize=(1.5 * (k + 1), 1.7 * q), squeeze=False)
  for row in range(q):
    _show(axes[row, 0], query_images[row])
    query_label = None if query_labels is None else query_labels[row]
    axes[row, 0].set_title("query" if query_label is None
                           else _name(query_label, class_names),
                           fontsize=8, fontweight="bold")
    for col, j in enumerate(indices[row], start=1):
      _show(axes[row, col], gallery_images[j])
      if gallery_labels is None:
        continue
      color = "black"
      if query_label is not None:
        color = "green" if gallery_labels[j] == query_label else "red"
      axes[row, col].set_title(_name(gallery_labels[j], class_names), fontsize=8,
                               color=color)
  return _finish(fig, path)


def retrieval_grid(queries: Sequence[str], gallery_images, indices, *,
                   hits=None, path: str | None = None) -> Figure:
  """One row per text query: the query's text, then its top-k gallery images
  (`indices` [Q, k], best first, e.g. `tandem.transfer.ranked`'s text→image).
  `hits` [Q, k] booleans (whether each image is a correct match) colour the
  frames: green when correct, red when not.

  Returns the figure; `indices` (or `hits`) of another shape raise ValueError.
  """
  indices = np.asarray(indices)
  if indices.ndim != 2 or len(indices) != len(queries):
    raise ValueError(f"retrieval_grid: indices must be [Q={len(queries)}, k], got "
                     f"shape {indices.shape}")
  if hits is not None and np.shape(hits) != indices.shape:
    raise ValueError(f"retrieval_grid: hits of shape {np.shape(hits)} for indices "
                     f"of shape {indices.shape}")
  q, k = indices.shape
  fig, axes = _subplots(q, k + 1, figsize=(1.4 * k + 2.6, 1.5 * q), squeeze=False,
                        gridspec_kw={"width_ratios": [2.2] + [1] * k})
  for row in range(q):
    axes[row, 0].axis("off")
    axes[row, 0].text(1.0, 0.5, str(queries[row]), ha="right", va="center",
                      fontsize=8, wrap=True, transform=axes[row, 0].transAxes)
    for col, j in enumerate(indices[row], start=1):
      ax = axes[row, col]
      _show(ax, gallery_images[j])
      if hits is not None:
        color = "green" if hits[row][col - 1] else "red"
        for spine in ax.spines.values():
          spine.set_visible(True)
          spine.set_color(color)
          spine.set_linewidth(2.5)
      ax.set_title(f"#{col}", fontsize=7)
  return _finish(fig, path)


def cka_heatmap(matrix, names_a: Sequence[str], names_b: Sequence[str] | None = None,
                *, path: str | None = None, title: str | None = None) -> Figure:
  """A CKA matrix (`similarity.cka_matrix`) as a heatmap on [0, 1], every cell
  annotated to 2 decimals; rows are `names_a`, columns `names_b` (default
  `names_a`).

  Returns the figure; names that do not match the matrix's shape raise ValueError.
  """
  matrix = np.asarray(matrix, np.float64)
  names_b = names_a if names_b is None else names_b
  if matrix.shape != (len(names_a), len(names_b)):
    raise ValueError(f"cka_heatmap: matrix of shape {matrix.shape} for "
                     f"{len(names_a)} x {len(names_b)} names")
  fig, ax = _subplots(figsize=(max(4.0, 0.7 * len(names_b) + 2),
                               max(3.0, 0.6 * len(names_a) + 1)))
  image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
  for i, j in np.ndindex(matrix.shape):
    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
            color="black" if matrix[i, j] > 0.5 else "white")
  ax.set_xticks(range(len(names_b)), [str(n) for n in names_b], rotation=45,
                ha="right")
  ax.set_yticks(range(len(names_a)), [str(n) for n in names_a])
  fig.colorbar(image, ax=ax, label="linear CKA")
  if title:
    ax.set_title(title)
  return _finish(fig, path)


def confusion_matrix(result, *, setting: str | None = None,
                     class_names: Sequence[str] | None = None, normalize: bool = True,
                     path: str | None = None, title: str | None = None) -> Figure:
  """A confusion matrix: true class in rows, predicted class in columns.

  `result` is a `tandem.transfer.Result` (its `setting`, optional when it has
  one; zero-shot and other predictions: build one or pass a matrix) or a [C, C]
  count matrix. With `normalize` each row is divided by its count, so a cell is
  the fraction of that class predicted as the column's (the diagonal is the
  per-class recall); every cell is annotated.

  Returns the figure; a matrix that is not square, or class names of another
  length, raise ValueError.
  """
  if hasattr(result, "confusion"):
    if title is None:
      title = result._setting(setting)  # pylint: disable=protected-access
    counts = result.confusion(setting)
  else:
    counts = np.asarray(result)
  if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
    raise ValueError(f"confusion_matrix: expected a [C, C] matrix, got shape "
                     f"{counts.shape}")
  c = len(counts)
  if class_names is not None and len(class_names) != c:
    raise ValueError(f"confusion_matrix: {len(class_names)} class names for {c} "
                     "classes")
  values = counts.astype(np.float64)
  if normalize:
    values = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
  names = [_name(i, class_names) for i in range(c)]
  fig, ax = _subplots(figsize=(max(4.0, 0.55 * c + 2), max(3.5, 0.5 * c + 1.5)))
  image = ax.imshow(values, cmap="Blues", vmin=0,
                    vmax=1 if normalize else max(values.max(), 1))
  top = values.max() if values.size else 0
  for i, j in np.ndindex(values.shape):
    text = f"{values[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
    ax.text(j, i, text, ha="center", va="center", fontsize=6,
            color="white" if values[i, j] > 0.5 * (1 if normalize else top) else "black")
  ax.set_xticks(range(c), names, rotation=45, ha="right", fontsize=7)
  ax.set_yticks(range(c), names, fontsize=7)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  fig.colorbar(image, ax=ax, label="fraction of the class" if normalize else "count")
  if title:
    ax.set_title(title)
  return _finish(fig, path)


def image_grid(rows: Mapping[str, np.ndarray], *, path: str | None = None,
               max_images: int = 8) -> Figure:
  """One row of up to `max_images` images per entry of `rows` (e.g. MAE's
  {"original", "masked", "reconstruction"}), labelled with its key; images as in
  `neighbours_grid`.

  Returns the figure; empty `rows` raises ValueError.
  """
  if not rows:
    raise ValueError("image_grid: no rows of images")
  n = min(max_images, max(len(images) for images in rows.values()))
  fig, axes = _subplots(len(rows), n, figsize=(1.4 * n + 0.6, 1.5 * len(rows)),
                        squeeze=False)
  for ax_row, (name, images) in zip(axes, rows.items()):
    for j, ax in enumerate(ax_row):
      if j < len(images):
        _show(ax, images[j])
      else:
        ax.axis("off")
    ax_row[0].set_ylabel(name, fontsize=9)
  return _finish(fig, path)


def suite_comparison(summaries: Mapping[str, dict], *, path: str | None = None,
                     evaluator: str | None = None) -> Figure:
  """Grouped bars of several checkpoints' transfer suites: one group per task, one
  bar (mean ± std over seeds, %) per checkpoint, for one evaluator.

  `summaries`: {checkpoint label: `tandem.transfer.report.summarise`'s dict}.
  `evaluator` defaults to the first column common to every summary.

  Returns the figure; an evaluator in no summary (or none in common, for the
  default) raises ValueError.
  """
  columns = {label: s["columns"] for label, s in summaries.items()}
  if evaluator is None:
    first = next(iter(columns.values()), [])
    common = [c for c in first if all(c in cols for cols in columns.values())]
    if not common:
      raise ValueError(f"suite_comparison: no evaluator common to all summaries; "
                       f"columns: {columns}")
    evaluator = common[0]
  elif not any(evaluator in cols for cols in columns.values()):
    available = sorted({c for cols in columns.values() for c in cols})
    raise ValueError(f"suite_comparison: evaluator {evaluator!r} is in no summary; "
                     f"available: {available}")
  tasks = list(dict.fromkeys(t for s in summaries.values()
                             for t, evs in s["rows"].items() if evaluator in evs))
  fig, ax = _subplots(figsize=(max(6.0, 0.5 * len(tasks) * len(summaries)), 4.5))
  width = 0.8 / len(summaries)
  for i, (label, summary) in enumerate(summaries.items()):
    cells = [summary["rows"].get(t, {}).get(evaluator, [np.nan, 0.0]) for t in tasks]
    xs = np.arange(len(tasks)) + (i - (len(summaries) - 1) / 2) * width
    ax.bar(xs, [100 * c[0] for c in cells], width, yerr=[100 * c[1] for c in cells],
           capsize=2, label=label)
  ax.set_xticks(range(len(tasks)), tasks, rotation=40, ha="right")
  ax.set_ylabel("test top-1 (%)")
  ax.set_ylim(0, 100)
  ax.set_title(evaluator)
  ax.legend(fontsize=7)
  return _finish(fig, path)


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """Ranks 1..n, ties sharing the mean of the ranks they span."""
  _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
  first = np.cumsum(counts) - counts + 1
  return (first + (counts - 1) / 2)[inverse]


def spearman(x, y) -> float:
  """Spearman's rank correlation: Pearson's correlation of the average ranks
  (scipy.stats.spearmanr's), NaN when either input is constant; inputs of
  different lengths raise ValueError."""
  x, y = np.ravel(x), np.ravel(y)
  if len(x) != len(y):
    raise ValueError(f"spearman: {len(x)} x values and {len(y)} y values")
  rx, ry = _average_ranks(x), _average_ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  denominator = np.sqrt(np.sum(rx ** 2) * np.sum(ry ** 2))
  return float(np.sum(rx * ry) / denominator) if denominator > 0 else float("nan")


def metric_vs_metric(x, y, labels: Sequence[str], *, xlabel: str, ylabel: str,
                     path: str | None = None) -> Figure:
  """One point per checkpoint, a score against another (e.g. RankMe against
  linear-probe top-1), each annotated with its label.

  Returns the figure, with Spearman's rank correlation in the title and as
  `fig.spearman`; inputs of different lengths raise ValueError.
  """
  x, y = np.ravel(x).astype(np.float64), np.ravel(y).astype(np.float64)
  if not len(x) == len(y) == len(labels):
    raise ValueError(f"metric_vs_metric: {len(x)} x, {len(y)} y and {len(labels)} "
                     "labels")
  rho = spearman(x, y)
  fig, ax = _subplots(figsize=(5, 4))
  ax.scatter(x, y)
  for xi, yi, label in zip(x, y, labels):
    ax.annotate(str(label), (xi, yi), textcoords="offset points", xytext=(4, 4),
                fontsize=8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(f"Spearman ρ = {rho:.2f} (n = {len(x)})")
  fig.spearman = rho
  return _finish(fig, path)
