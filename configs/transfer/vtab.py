r"""Transfer suite: score a pretraining checkpoint on VTAB-1k-style tasks.

  python -m tandem.transfer.run --config configs/transfer/vtab.py:suite=offline \
      --config.checkpoint=WORKDIR

Arg (comma-separated): `suite=offline` (default; runs here with no downloads),
`suite=vtab1k` (the 19 VTAB-1k tasks, whichever are prepared), or task names
(`fashion_mnist,clevr_like_count`: any of `tandem/transfer/vtab.py`'s tables; the
runner checks them); `evaluators=linear_probe+fewshot+knn` (default; `+`-separated,
from `tandem.transfer.protocol.EVALUATORS` and retrieval, checked by the runner);
`runlocal` (a seconds-long smoke run: test splits capped at 200, few-shot 1 and 5
shots, 3 fine-tuning steps). Every field below can be overridden with
`--config.field=value`.

Protocol (docs/PROTOCOLS.md, VTAB-1k): hyper-parameters are chosen on train800 → val200,
the chosen setting is retrained on train800val200, and test top-1 is reported.
"""
import ml_collections


def _parse(arg):
  """(tasks, evaluators, runlocal) of the arg; names are checked by the runner."""
  suite, evaluators, runlocal, tasks = "offline", "linear_probe+fewshot+knn", False, []
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
    elif not sep and key not in ("suite", "evaluators"):
      tasks.append(key)  # A task name.
    else:
      raise ValueError(
          f"Unknown config arg {item!r}; expected suite=offline|vtab1k, "
          f"evaluators=a+b, runlocal, or task names (tandem/transfer/vtab.py).")
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

  # Fine-tuning (tandem/transfer/finetune.py): BiT-HyperRule (Kolesnikov et al. 2020,
  # Sec. 3.3, and big_transfer's `bit_hyperrule.py`). Equal, field for field, to
  # `finetune.default_config()` (tests/test_recipes.py checks it); None means "from
  # the HyperRule" or "the mode's default".
  config.finetune = dict(
      mode="full",  # full | head | norm | lora.
      # None: 500 steps below 20k examples, 10k below 500k, else 20k.
      steps=None,
      # SGD; base lr 0.003 per 512 examples, the peak is x batch/512 (Goyal et al.
      # 2017's linear scaling is ours, BiT always uses batch 512).
      lr_per_512=0.003,
      lr_per_512_grid=(),  # Swept on val200 by the suite; empty: (lr_per_512,).
      batch_size=512,  # BiT's batch; clipped to the dataset size.
      # None: linear warm-up over 100 steps (below 20k examples) or 500
      # (big_transfer's code); with `steps` overridden, the same fraction of them.
      warmup_steps=None,
      # lr x 0.1 at 30%, 60% and 90% of the steps (the paper; big_transfer's code
      # decays the 500-step schedule at 200/300/400 instead).
      decay_at=(0.3, 0.6, 0.9),
      momentum=0.9,
      weight_decay=0.0,  # BiT uses none.
      # Random resized crop, area 0.64..1 (the smallest crop is BiT's 128 of 160
      # pixels), aspect 3/4..4/3; off for positional labels (structured tasks).
      crop=True,
      crop_scale=(0.64, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
      flip=True,  # Horizontal flip (off for orientation labels).
      lora_rank=4,  # LoRA (Hu et al. 2021) rank for mode=lora.
      lora_alpha=None,  # None: = lora_rank (scale 1; Hu et al. do not tune it).
      norm_pattern=r"(^|[/_])(bn|ln|norm|batchnorm|layernorm|groupnorm)(_?\d+)?"
                   r"/(scale|bias)$",  # mode=norm's parameters, case-insensitive.
      train_backbone_mode=None,  # None: True for full and norm, False otherwise.
      partition_rules=None,  # None: the pretraining config's.
      eval_batch_size=256,
      check_every=50,  # Steps between non-finite checks (a host sync each).
  )
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
