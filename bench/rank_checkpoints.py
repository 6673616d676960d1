r"""Do label-free scores rank checkpoints as a linear probe does?

    python bench/rank_checkpoints.py --workdirs DIR1,DIR2,... \
        [--dataset fashion_mnist] [--max_train 10000] [--max_test 5000] [--json FILE]

For each pretraining workdir (its latest checkpoint): features of `max_train`
training and `max_test` test images (seeded subsets; `tandem.analysis.features`,
cached on disk), then
  * label-free, on the training features: RankMe (Garrido et al. 2023), α-ReQ
    (Agrawal et al. 2022), SimSiam's normalised std (Chen & He 2021);
  * with the training labels, no probe trained: LogME (You et al. 2021);
  * the linear probe (`tandem.transfer.linear_probe`: L2 chosen on a val split
    carved from train, test top-1).
Prints one row per checkpoint and the Spearman correlation of each score with
the probe's accuracy (`tandem.analysis.plots.spearman`; α-ReQ enters negated,
since a slower decay is the better sign in its paper).
"""
import argparse
import json
import os
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tandem  # pylint: disable=g-import-not-at-top,wrong-import-position
from tandem import analysis  # pylint: disable=wrong-import-position
from tandem.analysis import plots  # pylint: disable=wrong-import-position

SCORES = ("rankme", "neg_alpha_req", "normalized_std", "logme")


def score(model, train, test) -> dict:
  x_train, x_test = analysis.features(model, train), analysis.features(model, test)
  free = analysis.collapse_stats(x_train)
  probe = tandem.transfer.linear_probe(x_train, train.labels, x_test, test.labels,
                                       num_val=len(x_train) // 5)
  return {"objective": model.config.objective, "model": model.config.model_name,
          "step": model.step, "dim": x_train.shape[1],
          "rankme": free["rankme"], "neg_alpha_req": -analysis.alpha_req(x_train),
          "normalized_std": free["normalized_std"],
          "logme": analysis.logme(x_train, train.labels),
          "linear_probe": probe.accuracy}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdirs", required=True, help="Comma-separated workdirs.")
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--max_train", type=int, default=10000)
  parser.add_argument("--max_test", type=int, default=5000)
  parser.add_argument("--json", default=None, help="Write the rows and correlations.")
  args = parser.parse_args()
  workdirs = [w for w in args.workdirs.split(",") if w]
  if len(workdirs) < 3:
    parser.error("--workdirs: give at least 3 workdirs to correlate.")
  train = analysis.load_dataset(args.dataset, "train", data_dir=args.data_dir,
                                max_examples=args.max_train)
  test = analysis.load_dataset(args.dataset, "test", data_dir=args.data_dir,
                               max_examples=args.max_test)
  rows = {}
  for workdir in workdirs:
    start = time.time()
    rows[workdir] = score(tandem.load(workdir), train, test)
    print(f"{workdir}: {time.time() - start:.0f} s", file=sys.stderr)
  probe = [r["linear_probe"] for r in rows.values()]
  correlations = {s: plots.spearman([r[s] for r in rows.values()], probe)
                  for s in SCORES}
  print(f"{'workdir':<28s} {'objective':<18s} {'step':>5s} {'dim':>4s} "
        f"{'RankMe':>7s} {'-aReQ':>6s} {'nstd':>5s} {'LogME':>7s} {'probe':>6s}")
  for workdir, r in rows.items():
    print(f"{os.path.basename(workdir.rstrip('/')):<28s} {r['objective']:<18s} "
          f"{r['step']:>5d} {r['dim']:>4d} {r['rankme']:7.1f} "
          f"{r['neg_alpha_req']:6.2f} {r['normalized_std']:5.2f} {r['logme']:7.3f} "
          f"{100 * r['linear_probe']:5.2f}%")
  print("Spearman with the probe: " + ", ".join(
      f"{s} {c:+.2f}" for s, c in correlations.items()))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "spearman": correlations,
                 "max_train": args.max_train, "max_test": args.max_test}, f, indent=2)


if __name__ == "__main__":
  main()
