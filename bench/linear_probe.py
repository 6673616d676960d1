"""Linear-probe speed and accuracy: tandem's jitted solver against scikit-learn.

    python bench/linear_probe.py                      # 60,000 x 512, Fashion-MNIST labels
    python bench/linear_probe.py --sklearn_protocol   # also time sklearn on the whole sweep

Features: Fashion-MNIST's 60,000 training and 10,000 test images (the prepared
TFDS dataset) through a fixed random ReLU layer 784 -> 512 (seed 0): real labels,
512 dense non-negative features like a CNN's pooled `pre_logits`. `--checkpoint`
uses a pretrained backbone's `pre_logits` instead.

Compared, on the same standardised float32 features:
1. One fit at a fixed L2 (the strength our sweep picks): tandem's `fit_logistic_
   regression` (its default tolerance, max |∇| <= 2e-5) against
   `sklearn.linear_model.LogisticRegression(solver="lbfgs")` with its default
   tol=1e-4 (L-BFGS-B's gtol: max |projected ∇| <= 1e-4 on the same objective),
   the equivalent C = 1 / (2 · l2 · N) (sklearn minimises C·Σ CE + ½‖W‖², we
   minimise mean CE + l2·‖W‖²) and `max_iter` large enough to converge (checked:
   it warns otherwise). Reported: wall-clock seconds (tandem: median of
   `--repeats` runs after a warm-up call, so without compilation, which is
   reported separately), iterations, test top-1, and both solutions' objective
   evaluated in float64 (lower is closer to the common optimum).
2. The whole probe protocol (L2 sweep on a validation split carved from train,
   refit on train+val): `linear_probe(...)`, first call (with compilation) and a
   repeat; with `--sklearn_protocol` the same sweep with sklearn fits (no warm
   starts, as a researcher would write it).
The machine's load average is printed with the timings: on a shared machine both
sides slow down, so compare ratios from the same run.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def random_relu_features(images: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
  x = images.reshape(len(images), -1).astype(np.float32) / 255.0
  w = np.random.default_rng(seed).normal(size=(x.shape[1], dim)).astype(np.float32)
  return np.maximum(x @ (w / np.sqrt(x.shape[1])), 0.0)


def load_features(args):
  from tandem.data import input_pipeline
  train_images, train_y = input_pipeline.load_arrays("fashion_mnist", "train",
                                                     data_dir=args.data_dir)
  test_images, test_y = input_pipeline.load_arrays("fashion_mnist", "test",
                                                   data_dir=args.data_dir)
  if args.checkpoint:
    import tandem
    model = tandem.load(args.checkpoint)
    return (model.embed(train_images), train_y, model.embed(test_images), test_y)
  return (random_relu_features(train_images, args.dim), train_y,
          random_relu_features(test_images, args.dim), test_y)


def sklearn_fit(x, y, l2: float, max_iter: int):
  from sklearn.linear_model import LogisticRegression
  clf = LogisticRegression(C=1.0 / (2.0 * l2 * len(x)), solver="lbfgs",
                           max_iter=max_iter, tol=1e-4)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    clf.fit(x, y)
  converged = not any("converge" in str(w.message).lower() for w in caught)
  return clf, converged


def objective(w, b, x, y, l2: float) -> float:
  """Mean cross-entropy + l2·‖w‖², in float64."""
  w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
  z = x.astype(np.float64) @ w + b
  z -= z.max(axis=1, keepdims=True)
  ce = np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]
  return float(ce.mean() + l2 * np.sum(w * w))


def load() -> str:
  return "load average %.2f %.2f %.2f" % os.getloadavg()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--checkpoint", default=None)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5, help="Timed tandem fits.")
  parser.add_argument("--sklearn_max_iter", type=int, default=1000)
  parser.add_argument("--sklearn_protocol", action="store_true")
  args = parser.parse_args()

  import jax
  from tandem.transfer import lbfgs
  from tandem.transfer import probe

  train_x, train_y, test_x, test_y = load_features(args)
  print(f"features: train {train_x.shape}, test {test_x.shape}, "
        f"devices {jax.devices()}, {os.cpu_count()} CPUs; {load()}")
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  train_s, test_s = (train_x - mean) / std, (test_x - mean) / std
  num_classes = int(train_y.max()) + 1

  # 1. The protocol picks the L2 that the single fits then use.
  t = time.perf_counter()
  result = probe.linear_probe(train_x, train_y, test_x, test_y)
  first_s = time.perf_counter() - t
  t = time.perf_counter()
  result = probe.linear_probe(train_x, train_y, test_x, test_y)
  probe_s = time.perf_counter() - t
  chosen = result.details["linear_probe"]
  print(f"tandem probe (sweep {len(probe.DEFAULT_L2_GRID)} L2 + refit): {probe_s:.2f} s "
        f"({first_s:.2f} s first call, with compilation), test top-1 "
        f"{result.accuracy:.4f}, l2 {chosen['l2']:g}, refit iterations "
        f"{chosen['iterations']}; {load()}")
  l2 = chosen["l2"]

  t = time.perf_counter()
  (w, b), iters = lbfgs.fit_logistic_regression(train_s, train_y, num_classes, l2)
  jax.block_until_ready(w)
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    (w, b), iters = lbfgs.fit_logistic_regression(train_s, train_y, num_classes, l2)
    jax.block_until_ready(w)
    times.append(time.perf_counter() - t)
  fit_s = float(np.median(times))
  acc = lbfgs.accuracy((w, b), test_s, test_y)
  ours = objective(w, b, train_s, train_y, l2)
  print(f"tandem one fit at l2={l2:g}: {fit_s:.3f} s (median of {args.repeats}; "
        f"min {min(times):.3f}, max {max(times):.3f}; first call {compile_s:.2f} s "
        f"with compilation), {iters} iterations, test top-1 {acc:.4f}; {load()}")

  t = time.perf_counter()
  clf, converged = sklearn_fit(train_s, train_y, l2, args.sklearn_max_iter)
  sk_s = time.perf_counter() - t
  sk_acc = float(np.mean(clf.predict(test_s) == test_y))
  theirs = objective(clf.coef_.T, clf.intercept_, train_s, train_y, l2)
  print(f"sklearn lbfgs one fit at C={1 / (2 * l2 * len(train_s)):.4g}: {sk_s:.2f} s,"
        f" {int(clf.n_iter_[0])} iterations (converged={converged}),"
        f" test top-1 {sk_acc:.4f}; {load()}")
  print(f"objective (float64): tandem {ours:.8f}, sklearn {theirs:.8f} "
        f"(tandem {ours - theirs:+.2e})")
  print(f"one fit: tandem is {sk_s / fit_s:.1f}x faster, test top-1 "
        f"{acc - sk_acc:+.4f}")

  if args.sklearn_protocol:
    rng = np.random.default_rng(0)
    val = rng.permutation(len(train_x))[:10000]
    fit = np.setdiff1d(np.arange(len(train_x)), val)
    t = time.perf_counter()
    scores = {}
    for l2_value in probe.DEFAULT_L2_GRID:
      clf, ok = sklearn_fit(train_s[fit], train_y[fit], l2_value, args.sklearn_max_iter)
      scores[l2_value] = float(np.mean(clf.predict(train_s[val]) == train_y[val]))
      print(f"  sklearn l2={l2_value:g}: {int(clf.n_iter_[0])} iterations "
            f"(converged={ok}), val top-1 {scores[l2_value]:.4f}", flush=True)
    best = max(scores, key=lambda v: (scores[v], v))
    clf, _ = sklearn_fit(train_s, train_y, best, args.sklearn_max_iter)
    sk_protocol_s = time.perf_counter() - t
    sk_protocol_acc = float(np.mean(clf.predict(test_s) == test_y))
    print(f"sklearn probe (same sweep + refit): {sk_protocol_s:.2f} s, test top-1 "
          f"{sk_protocol_acc:.4f}, l2 {best:g}; {load()}")
    print(f"probe: tandem is {sk_protocol_s / probe_s:.1f}x faster "
          f"({sk_protocol_s / first_s:.1f}x counting compilation), test top-1 "
          f"{result.accuracy - sk_protocol_acc:+.4f}")


if __name__ == "__main__":
  main()
