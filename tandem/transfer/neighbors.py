"""Weighted k-nearest-neighbour classification on frozen features (DINO-style).

Train and test features are L2-normalised; each test example takes the k training
examples of highest cosine similarity s_i and gives class c the vote
Σ_{i in top-k, y_i = c} exp(s_i / T); the prediction is the class with the most vote.
The weighting and T = 0.07 are Wu et al. 2018 (instance discrimination, CVPR;
their lemniscate.pytorch main.py runs `kNN(..., 200, args.nce_t)`, `--nce-t 0.07`).
DINO (Caron et al. 2021, facebookresearch/dino eval_knn.py, `knn_classifier`) uses
the same rule with `--temperature 0.07` and `--nb_knn 10 20 100 200` ("20 is usually
working the best"). Defaults here: T = 0.07 and k = 20 and 200; top-1 only.
Nothing is fitted, so nothing is selected: the training split is the whole labelled
pool (train+val in the suite). Similarities and top-k run jitted on device in
fixed-size test chunks. Exact ties between similarities are broken by
`jax.lax.top_k`'s order (lower training index first).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tandem import parallel
from tandem.transfer import protocol
from tandem.transfer import results

DEFAULT_KS = (20, 200)
DEFAULT_TEMPERATURE = 0.07


def _normalise(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("ks",))
def _predict_chunk(train_x, train_onehot, test_x, temperature, ks: tuple):
  sim = jnp.einsum("td,nd->tn", test_x, train_x,
                   precision=jax.lax.Precision.HIGHEST)
  top_sim, top_idx = jax.lax.top_k(sim, max(ks))
  weights = jnp.exp(top_sim / temperature)
  neighbour_labels = train_onehot[top_idx]  # [T, kmax, C]
  preds = []
  for k in ks:
    votes = jnp.einsum("tk,tkc->tc", weights[:, :k], neighbour_labels[:, :k])
    preds.append(jnp.argmax(votes, axis=-1))
  return {"predictions": jnp.stack(preds, axis=1), "neighbours": top_idx,
          "similarities": top_sim}


def _neighbours(train_x, train_y, test_x, *, ks: tuple, temperature: float,
                num_classes: int, chunk_size: int = 1024) -> dict[str, np.ndarray]:
  """{"predictions": [N_test, len(ks)], "neighbours", "similarities": [N_test, max k]}."""
  train_y = np.asarray(train_y)
  if len(train_y) < max(ks) or min(ks) < 1:
    raise ValueError(f"k-NN with k={max(ks)} needs at least {max(ks)} training "
                     f"examples; got {len(train_y)}.")
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  train = _normalise(jnp.asarray(train_x, jnp.float32))
  onehot = jax.nn.one_hot(jnp.asarray(train_y), num_classes, dtype=jnp.float32)
  return parallel.batched_map(
      lambda chunk: _predict_chunk(train, onehot, _normalise(jnp.asarray(chunk)),
                                   jnp.float32(temperature), ks),
      np.asarray(test_x, np.float32), chunk_size)


def knn_predict(train_x, train_y, test_x, *, ks: Sequence[int] = DEFAULT_KS,
                temperature: float = DEFAULT_TEMPERATURE, num_classes: int | None = None,
                chunk_size: int = 1024) -> dict[int, np.ndarray]:
  """{k: predicted labels [N_test]} for every k."""
  ks = tuple(int(k) for k in ks)
  num_classes = num_classes or int(np.max(train_y)) + 1
  preds = _neighbours(train_x, train_y, test_x, ks=ks, temperature=temperature,
                      num_classes=num_classes, chunk_size=chunk_size)["predictions"]
  return {k: preds[:, i] for i, k in enumerate(ks)}


def knn(train_x, train_y, test_x, test_y, *, ks: Sequence[int] = DEFAULT_KS,
        temperature: float = DEFAULT_TEMPERATURE,
        num_classes: int | None = None) -> results.Result:
  """Temperature-weighted cosine k-NN of features given as arrays: a
  `tandem.transfer.Result` with the test top-1 and predictions of every k (settings
  `knn_k{k}_T{temperature}`), and every test example's `neighbours` (training
  indices, nearest first) and their cosine `similarities`, [N_test, max(ks)]."""
  protocol.check_finite(np.asarray(train_x), "knn: train features")
  protocol.check_finite(np.asarray(test_x), "knn: test features")
  test_y = np.asarray(test_y)
  ks = tuple(int(k) for k in ks)
  num_classes = num_classes or int(max(np.max(train_y), test_y.max())) + 1
  out = _neighbours(train_x, train_y, test_x, ks=ks, temperature=temperature,
                    num_classes=num_classes)
  names = [result_name(k, temperature) for k in ks]
  preds = {name: out["predictions"][:, i] for i, name in enumerate(names)}
  return results.Result(
      "knn", {name: float(np.mean(p == test_y)) for name, p in preds.items()},
      preds, test_y, num_classes,
      {name: {"k": k, "temperature": temperature} for name, k in zip(names, ks)},
      neighbours=out["neighbours"], similarities=out["similarities"])


def result_name(k: int, temperature: float = DEFAULT_TEMPERATURE) -> str:
  return f"knn_k{k}_T{temperature:g}"


def evaluate_task(data, block, model=None) -> list[dict]:
  """Suite protocol: neighbours from the task's train+val, scored on test."""
  layer = block.get("layer", "pre_logits")
  ks = tuple(block.get("ks", DEFAULT_KS))
  temperature = float(block.get("temperature", DEFAULT_TEMPERATURE))
  pool = len(data.trainval.labels)
  usable = tuple(k for k in ks if k <= pool)
  records = [{"evaluator": result_name(k, temperature),
              "skipped": f"k={k} exceeds the {pool} training examples."}
             for k in ks if k > pool]
  if usable:
    scores = knn(data.features("trainval", layer), data.trainval.labels,
                 data.features("test", layer), data.test.labels, ks=usable,
                 temperature=temperature, num_classes=data.num_classes).top1
    records += [{"evaluator": result_name(k, temperature), "metric": "test_top1",
                 "value": scores[result_name(k, temperature)], "k": k,
                 "temperature": temperature,
                 "layer": layer, "protocol": "cosine k-NN, exp(s/T)-weighted votes,"
                 " neighbours from train+val"} for k in usable]
  return records
