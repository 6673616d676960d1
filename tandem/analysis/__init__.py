"""Analysis of checkpoints, for notebooks: loaders, label-free and label-based
representation metrics, similarity, weight-space tools and plots.

    from tandem import analysis
    model = analysis.load("/tmp/bt")                     # latest checkpoint
    data = analysis.load_dataset("fashion_mnist", "test", max_examples=2000)
    x = analysis.features(model, data)                   # cached on disk
    analysis.rankme(x), analysis.logme(x, data.labels)
    log = analysis.read_metrics("/tmp/bt")               # .train, .evals tables

Every name below is imported from its module on first use, so `import
tandem.analysis` stays cheap and imports neither absl flags, TFDS nor grain.
Modules: `runs` (checkpoints and metrics.jsonl), `data` (dataset splits),
`feature_cache` (features cached on disk), `reconstruction` (MAE),
`augmentation` (the run's two views), `representation` (RankMe, alpha-ReQ,
alignment, uniformity, collapse, NC1, LogME, H-score), `similarity` (CKA, nearest
neighbours), `weights` (interpolation, task arithmetic, TIES), `plots`
(matplotlib figures).
"""
import importlib

_EXPORTS = {
    "runs": ("steps", "load", "load_steps", "load_runs", "read_metrics",
             "Metrics"),
    "data": ("load_dataset", "Dataset"),
    "feature_cache": ("features",),
    "reconstruction": ("reconstruct",),
    "augmentation": ("views",),
    "representation": ("rankme", "eigenspectrum", "alpha_req", "alignment",
                       "uniformity", "collapse_stats", "label_free_metrics", "nc1",
                       "logme", "hscore"),
    "similarity": ("linear_cka", "hsic_unbiased", "minibatch_cka", "cka_matrix",
                   "nearest_neighbours"),
    "weights": ("interpolate", "interpolation_path", "loss_barrier", "task_vector",
                "task_arithmetic", "ties_merge"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
_MODULES = (*_EXPORTS, "plots")

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
  if name in _MODULE_OF:
    module = importlib.import_module(f"tandem.analysis.{_MODULE_OF[name]}")
    return getattr(module, name)
  if name in _MODULES:
    return importlib.import_module(f"tandem.analysis.{name}")
  raise AttributeError(f"module 'tandem.analysis' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_MODULE_OF, *_MODULES])
