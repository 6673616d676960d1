"""The periodic evaluators on their own, next to scikit-learn on the same features.

    python bench/evaluators.py [--json FILE]           # Fashion-MNIST, 60,000 / 10,000

Features: Fashion-MNIST's training and test images (the prepared TFDS dataset)
through the fixed random ReLU layer 784 -> 512 of bench/linear_probe.py (real
labels, dense non-negative features like a CNN's pooled `pre_logits`). For the
feature extractor itself, `--checkpoint WORKDIR` times `tandem.load(WORKDIR).embed`
on the same images (images/s, first call with compilation and a repeat).

Compared (tandem's first call includes compiling; the repeat does not):
1. k-NN: `tandem.transfer.knn` (temperature-weighted cosine votes, k = 20,
   T = 0.07, big_vision/DINO's) against `sklearn.neighbors.KNeighborsClassifier(
   n_neighbors=20, metric="cosine", algorithm="brute", weights=exp(-d/T),
   n_jobs=-1)`: the same vote, since the cosine distance d = 1 - similarity. Their
   predictions must agree (ties aside).
2. Few-shot: `tandem.transfer.fewshot` (closed-form ridge through one
   eigendecomposition per few-shot set, the L2 strength chosen among 27 on held-out
   training examples; shots 1/5/10/25, 3 seeds) against the same protocol written
   with `sklearn.linear_model.RidgeClassifier(alpha=l2, fit_intercept=False)`, one
   fit per L2, on the same whitened few-shot sets with the same bias column: the
   chosen L2 and the test top-1 must agree.
3. The linear probe is bench/linear_probe.py's (README, "Transfer evaluation").
The load average is printed with the timings: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tandem import host_malloc  # pylint: disable=g-import-not-at-top
host_malloc.use_tcmalloc()  # As the training programs run (may re-execute).

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from linear_probe import random_relu_features  # pylint: disable=g-import-not-at-top
import report  # pylint: disable=g-import-not-at-top


def _timed(fn, *args, **kwargs):
  start = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - start


def bench_knn(train_x, train_y, test_x, test_y, k=20, temperature=0.07):
  from sklearn.neighbors import KNeighborsClassifier
  from tandem import transfer
  from tandem.transfer import neighbors
  _, first_s = _timed(transfer.knn, train_x, train_y, test_x, test_y, ks=(k,),
                          temperature=temperature)
  ours, ours_s = _timed(transfer.knn, train_x, train_y, test_x, test_y, ks=(k,),
                        temperature=temperature)
  clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                             weights=lambda d: np.exp(-d / temperature), n_jobs=-1)
  start = time.perf_counter()
  theirs = clf.fit(train_x, train_y).predict(test_x)
  sk_s = time.perf_counter() - start
  ours_pred = np.asarray(ours.predictions[neighbors.result_name(k, temperature)])
  return {"evaluator": f"knn k={k} T={temperature:g}",
          "tandem_first_s": first_s, "tandem_s": ours_s, "sklearn_s": sk_s,
          "speedup": sk_s / ours_s, "tandem_top1": float(np.mean(ours_pred == test_y)),
          "sklearn_top1": float(np.mean(theirs == test_y)),
          "agreement": float(np.mean(ours_pred == theirs))}


def _sklearn_fewshot(train_x, train_y, test_x, test_y, shots, seeds, num_classes):
  """The few-shot protocol of tandem/transfer/ridge.py, one sklearn fit per L2."""
  from sklearn.linear_model import RidgeClassifier
  from tandem.transfer import ridge
  out = {}
  for s in shots:
    per_seed = []
    for seed in seeds:
      chosen = ridge.draw_shots(train_y, s, num_classes, seed)
      rest = np.setdiff1d(np.arange(len(train_y)), chosen)
      heldout = np.sort(np.random.default_rng([seed, 1]).permutation(rest)[
          :ridge.DEFAULT_NUM_HELDOUT])
      x = np.asarray(train_x[chosen], np.float64)
      mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True) + 1e-5
      prep = lambda z: ridge._prepare(np.asarray(z, np.float64), mean, std)  # pylint: disable=protected-access,cell-var-from-loop
      x, x_held, x_test = prep(x), prep(train_x[heldout]), prep(test_x)
      scores, fits = {}, {}
      for l2 in ridge.DEFAULT_L2_GRID:
        fits[l2] = RidgeClassifier(alpha=l2, fit_intercept=False).fit(
            x, train_y[chosen])
        scores[l2] = float(np.mean(fits[l2].predict(x_held) == train_y[heldout]))
      best = max(scores, key=lambda l2: (scores[l2], l2))  # pylint: disable=cell-var-from-loop
      per_seed.append((best, float(np.mean(fits[best].predict(x_test) == test_y))))
    out[s] = per_seed
  return out


def bench_fewshot(train_x, train_y, test_x, test_y, shots=(1, 5, 10, 25),
                  seeds=(0, 1, 2)):
  from tandem import transfer
  num_classes = int(train_y.max()) + 1
  _, first_s = _timed(transfer.fewshot, train_x, train_y, test_x, test_y,
                      shots=shots, seeds=seeds)
  ours, ours_s = _timed(transfer.fewshot, train_x, train_y, test_x, test_y,
                        shots=shots, seeds=seeds)
  theirs, sk_s = _timed(_sklearn_fewshot, train_x, train_y, test_x, test_y, shots,
                        seeds, num_classes)
  same_l2, top1 = True, {}
  for s in shots:
    detail = ours.details[f"fewshot_{s}shot"]
    ours_l2 = list(detail["l2"])
    same_l2 &= ours_l2 == [l2 for l2, _ in theirs[s]]
    top1[s] = (float(detail["mean"]), float(np.mean([t for _, t in theirs[s]])))
  return {"evaluator": f"few-shot ridge, shots {'/'.join(map(str, shots))}, "
                       f"{len(seeds)} seeds, 27 L2s",
          "tandem_first_s": first_s, "tandem_s": ours_s, "sklearn_s": sk_s,
          "speedup": sk_s / ours_s, "same_l2": bool(same_l2),
          "top1 (tandem, sklearn)": {str(s): v for s, v in top1.items()}}


def bench_features(checkpoint, images):
  import tandem
  model = tandem.load(checkpoint)
  _, first_s = _timed(model.embed, images)
  _, repeat_s = _timed(model.embed, images)
  return {"evaluator": f"features: {model.config.model_name} pre_logits",
          "images": len(images), "first_s": first_s, "repeat_s": repeat_s,
          "images_per_s": len(images) / repeat_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--checkpoint", default=None,
                      help="A workdir: also time its feature extraction.")
  parser.add_argument("--json", default=None, help="Append the records here.")
  args = parser.parse_args()

  from tandem.data import input_pipeline
  train_images, train_y = input_pipeline.load_arrays("fashion_mnist", "train",
                                                     data_dir=args.data_dir)
  test_images, test_y = input_pipeline.load_arrays("fashion_mnist", "test",
                                                   data_dir=args.data_dir)
  train_x = random_relu_features(train_images, args.dim)
  test_x = random_relu_features(test_images, args.dim)
  print(f"features: {train_x.shape} train, {test_x.shape} test; load average "
        f"{os.getloadavg()[0]:.2f}")
  records = [bench_knn(train_x, train_y, test_x, test_y),
             bench_fewshot(train_x, train_y, test_x, test_y)]
  if args.checkpoint:
    records.append(bench_features(args.checkpoint, test_images))
  print(f"load average after: {os.getloadavg()[0]:.2f}")
  for r in records:
    print(json.dumps(r))
  report.append(args.json, "evaluators", records)


if __name__ == "__main__":
  main()
