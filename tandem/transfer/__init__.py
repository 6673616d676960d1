"""Transfer evaluators on frozen features, callable on any arrays from a notebook:

    tandem.transfer.fewshot(train_x, train_y, test_x, test_y, shots=(1, 5), seeds=(0,))
    tandem.transfer.linear_probe(train_x, train_y, test_x, test_y)
    tandem.transfer.knn(train_x, train_y, test_x, test_y, ks=(20, 200))

All three return a `tandem.transfer.Result` (`results.py`): the test top-1 of each
setting, its predictions and confusion matrix, the protocol's choices, and the
k-NN neighbours or the probe's classifier. For CLIP/SigLIP embeddings
(`Pretrained.embed_images` / `embed_texts`): `class_embeddings` and
`zeroshot_classify` (also a `Result`), `recall_at_k` and `ranked` (retrieval).

These are the array forms of the evaluators `tandem.transfer.ridge` (few-shot),
`probe` (linear probe) and `neighbors` (k-NN), whose `evaluate_task` the suite
runner and the evaluations inside pretraining call (`protocol.py`). Each name is
imported from its module on first use, so importing a NumPy-only module such as
`tandem.transfer.label_free` does not import JAX.
"""
import importlib

_MODULE_OF = {"knn": "neighbors", "linear_probe": "probe", "fewshot": "ridge",
              "Result": "results", "LinearClassifier": "results",
              "class_embeddings": "zeroshot", "zeroshot_classify": "zeroshot",
              "recall_at_k": "retrieval", "ranked": "retrieval"}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
  if name in _MODULE_OF:
    return getattr(importlib.import_module(f"tandem.transfer.{_MODULE_OF[name]}"),
                   name)
  try:  # A submodule not imported yet: tandem.transfer.probe, ...
    return importlib.import_module(f"tandem.transfer.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"tandem.transfer.{name}":
      raise
  raise AttributeError(f"module 'tandem.transfer' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_MODULE_OF])
