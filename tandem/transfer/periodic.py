"""Evaluations inside pretraining: the blocks of `config.evals`.

Every dict-valued entry NAME of `config.evals` is an evaluator
(`protocol.EVALUATORS[NAME]`, or the block's `module`) run every `every` steps
(0: only at the end of training) through the same `evaluate_task(data, settings,
model)` as the suite runner (`tandem.transfer.run`); its records become metrics
named `evaluator/layer/metric` (`report.metrics`), and an evaluator with an
`images` function also returns pictures (written apart from the metrics).

Data: a module's own `load_data(settings, config, data_dir)` where it has one,
else a classification task from the block's `dataset`, `train_split`, `test_split`,
`max_train`, `max_test` (a seeded subsample; 0 = all) and `num_val` (val carved from
train, seeded: `TaskData.carved`). Images are loaded once per (dataset, split, cap)
for the whole run and features once per (step, dataset, split, cap, layer) in one
`protocol.FeatureCache`: when `linear_probe`, `fewshot` and `knn` evaluate the same
step on the same data, the backbone runs over those images once.

`linear_probe.baselines=True` also probes, at step 0, the random-init encoder and
the raw pixels (`baselines`).
"""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import ml_collections

from tandem.transfer import features as features_lib
from tandem.transfer import protocol
from tandem.transfer import report

BASELINES_FILE = "baselines.json"


@functools.lru_cache(maxsize=8)
def load_split(dataset: str, split: str, data_dir: str, image_size: int,
               channels: int, max_examples: int, seed: int):
  """(images, labels) of a split at the run's input size, seeded-subsampled."""
  from tandem.data import input_pipeline  # Host data code, only when evaluating.
  images, labels = input_pipeline.load_arrays(dataset, split, data_dir=data_dir,
                                              image_size=image_size, channels=channels)
  return input_pipeline.subsample(max_examples, seed, images, labels)


def load_task(settings, config, data_dir: str, *, num_val: int = 0,
              **kwargs) -> protocol.TaskData:
  """The classification task of an evaluator block (see the module docstring);
  `num_val`: the val size when the block sets none (or 0)."""
  load = lambda part: load_split(
      settings.dataset, settings[f"{part}_split"], data_dir, config.input.image_size,
      config.input.channels, settings.get(f"max_{part}", 0), config.seed)
  (train_x, train_y), (test_x, test_y) = load("train"), load("test")
  key = lambda part: (settings.dataset, settings[f"{part}_split"],
                      settings.get(f"max_{part}", 0))
  return protocol.TaskData.carved(
      settings.dataset, int(max(train_y.max(), test_y.max())) + 1,
      protocol.Split("train", train_x, train_y), protocol.Split("test", test_x, test_y),
      num_val=settings.get("num_val", 0) or num_val, seed=config.seed,
      keys={"trainval": key("train"), "test": key("test")}, **kwargs)


class PeriodicEvals:
  """The evaluators of `config.evals`, their data, one feature cache."""

  def __init__(self, config, *, data_dir: str, mesh=None):
    self.config = config
    self.cache = protocol.FeatureCache()
    self.model = protocol.Model(config, variables={}, mesh=mesh, seed=config.seed)
    extract = features_lib.extractor(self.model)
    self.blocks, self.modules, self.data = {}, {}, {}
    for name, block in config.evals.items():
      if not isinstance(block, ml_collections.ConfigDict):
        continue
      module = protocol.get_evaluator(name, block.get("module", None))
      self.blocks[name], self.modules[name] = block, module
      if hasattr(module, "load_data"):
        self.data[name] = module.load_data(block, config, data_dir, extract=extract,
                                           cache=self.cache, mesh=mesh)
      else:
        self.data[name] = load_task(block, config, data_dir, extract=extract,
                                    cache=self.cache)

  def due(self, step: int) -> list[str]:
    """The evaluators whose `every` divides `step` (the end of training: all)."""
    if step >= self.config.total_steps:
      return list(self.blocks)
    return [name for name, block in self.blocks.items()
            if block.get("every", 0) and step % block.every == 0]

  def _settings(self, name: str, **changes) -> dict:
    settings = {"seed": self.config.seed, **self.blocks[name].to_dict(), **changes}
    if (name == "linear_probe" and "prefixes" not in changes  # Matryoshka runs.
        and not settings.get("prefixes")):
      settings["prefixes"] = tuple(self.config.get("matryoshka_dims", ()) or ())
    return settings

  def run(self, names, version, variables, log=None) -> tuple[dict, dict]:
    """(metrics, images) of evaluators `names` on the whole model's `variables`;
    `version` names the params (features are extracted once per version).
    `log(text)`, when given, hears each evaluator's start and time."""
    self.cache.set_version(version)
    self.model.variables = variables
    metrics, images = {}, {}
    for i, name in enumerate(names, 1):
      if log:
        log(f"  evaluating {name} ({i}/{len(names)})...")
      start = time.time()
      module, data, settings = self.modules[name], self.data[name], self._settings(name)
      self.model.batch_size = settings.get("batch_size", 256)  # Extraction batch.
      metrics.update(report.metrics(module.evaluate_task(data, settings, self.model)))
      if hasattr(module, "images"):
        images.update(module.images(data, settings, self.model))
      if log:
        log(f"  {name}: {time.time() - start:.1f} s")
    return metrics, images

  def baselines(self, variables, workdir: str, *, compute: bool
                ) -> tuple[dict[str, dict], bool]:
    """The linear probe of the random-init encoder (`variables`) and of raw pixels,
    when `linear_probe.baselines` is set: ({"baseline/random_init": metrics,
    "baseline/raw_pixels": metrics}, whether computed now). Kept in
    WORKDIR/baselines.json, so a resumed run reports the numbers of its start;
    computed only with `compute` (a run at step 0)."""
    block = self.blocks.get("linear_probe")
    if block is None or not block.get("baselines", False):
      return {}, False
    path = os.path.join(workdir, BASELINES_FILE)
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f), False
    if not compute:
      return {}, False
    probe, data = self.modules["linear_probe"], self.data["linear_probe"]
    results = {"baseline/random_init": self.run(["linear_probe"], "init",
                                                variables)[0],
               "baseline/raw_pixels": report.metrics(probe.evaluate_task(
                   data, self._settings("linear_probe", layer=features_lib.RAW_PIXELS,
                                        prefixes=()), self.model))}
    if jax.process_index() == 0:
      with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return results, True
