"""Transfer suite: score a pretraining checkpoint on VTAB-1k-style tasks.

  python -m tandem.transfer.run --config configs/transfer/vtab.py:suite=offline \
      --config.checkpoint=WORKDIR

Arg (comma-separated): `suite=offline` (default; runs here with no downloads),
`suite=vtab1k` (the 19 VTAB-1k tasks, whichever are prepared), or task names
(`fashion_mnist,clevr_like_count`: any of `tandem/transfer/vtab.py`'s tables);
`evaluators=linear_probe+fewshot+knn` (default; `+`-separated, from
linear_probe, fewshot, knn, finetune, zeroshot, retrieval); `runlocal` (a
seconds-long smoke run: test splits capped at 200, few-shot 1 and 5 shots,
3 fine-tuning steps). Every field below can be overridden with
`--config.field=value`.

Protocol (docs/PROTOCOLS.md, VTAB-1k): hyper-parameters are chosen on train800 → val200,
the chosen setting is retrained on train800val200, and test top-1 is reported.
"""
import ml_collections

from tandem.transfer import finetune
from tandem.transfer import vtab

EVALUATORS = ("linear_probe", "fewshot", "knn", "finetune", "zeroshot", "retrieval")


def _parse(arg):
  suite, evaluators, runlocal, tasks = "offline", "linear_probe+fewshot+knn", False, []
  known = set(vtab.VTAB1K) | set(vtab.OFFLINE)
  for item in (arg or "").split(","):
    key, sep, value = (s.strip() for s in item.partition("="))
    if not key:
      continue
    if key == "suite" and sep:
      suite = value
    elif key == "evaluators" and sep:
      evaluators = value
    elif key == "runlocal" and not sep:
      runlocal = True
    elif key in known and not sep:
      tasks.append(key)
    else:
      raise ValueError(
          f"Unknown config arg {item!r}; expected suite=offline|vtab1k, "
          f"evaluators=a+b, runlocal, or task names: {sorted(known)}.")
  unknown = [e for e in evaluators.split("+") if e not in EVALUATORS]
  if unknown:
    raise ValueError(f"Unknown evaluators {unknown}; available: {EVALUATORS}.")
  return (",".join(tasks) if tasks else suite), evaluators.replace("+", ","), runlocal


def get_config(arg=None):
  tasks, evaluators, runlocal = _parse(arg)
  config = ml_collections.ConfigDict()
  config.checkpoint = ""     # Pretraining workdir (holds config.json + checkpoints/).
  config.step = -1           # Checkpoint step; -1: the latest complete one.
  config.tasks = tasks       # "offline", "vtab1k", or "task,task,...".
  config.evaluators = evaluators
  config.data_dir = ""       # Default: $TANDEM_DATA_DIR, else ~/tensorflow_datasets.
  config.output_dir = ""     # Default: CHECKPOINT/transfer/<tasks>_step<step>.
  config.layer = "pre_logits"
  config.batch_size = 512    # Feature extraction batch.
  config.max_test = 0        # Cap on test examples per task (0: the whole split).
  config.seed = 0

  config.linear_probe = dict(l2_grid=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
                             max_iter=300)
  config.fewshot = dict(shots=(1, 5, 10, 25), seeds=(0, 1, 2), num_heldout=2000)
  config.knn = dict(ks=(20, 200), temperature=0.07)
  config.finetune = finetune.default_config()
  config.zeroshot = dict(templates=())  # Empty: tandem.data.captions.TEMPLATES.
  config.retrieval = dict(dataset="captioned_shapes", split="validation",
                          text_feature="caption", max_examples=2000)

  if runlocal:
    config.max_test = 200
    config.fewshot.shots = (1, 5)
    config.fewshot.seeds = (0, 1)
    config.finetune.steps = 3
    config.finetune.batch_size = 32
    config.retrieval.max_examples = 64
  return config
