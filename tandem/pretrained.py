"""`tandem.load(workdir)`: a pretrained checkpoint for notebooks and evaluators.

    model = tandem.load("/tmp/bt")           # latest step; or step=N
    feats = model.embed(images_uint8, layer="pre_logits", batch_size=256)
    model.layers                             # ["stem", "stage1", ..., "pre_logits"]
    per_layer = model.embed(images, layer=["stage1", "pre_logits"], pooling="flatten")
    clip.embed_images(images), clip.embed_texts(["a red circle"])  # CLIP/SigLIP

Only the params (and batch-norm statistics needed for eval-mode features) are
restored, on the first local device (or onto `sharding`, e.g. a mesh), whatever
mesh the run was trained on; the optimizer state is never read. `embed` applies
the checkpoint's own preprocessing (resize, channel conversion, normalisation)
to NHWC images of any size, uint8 or float in [0, 1].
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from tandem import checkpoint
from tandem.transfer import features


@dataclasses.dataclass
class Pretrained:
  config: ml_collections.ConfigDict
  params: Any
  model_state: Any
  step: int
  workdir: str = ""  # Where it was loaded from (absolute).
  _image_text: Any = dataclasses.field(default=None, init=False, repr=False,
                                       compare=False)

  @property
  def variables(self) -> dict:
    """The whole model's {"params": ..., **model_state}, as evaluators take it."""
    return {"params": self.params, **self.model_state}

  @property
  def encoder_variables(self) -> dict:
    return features.encoder_variables(self.params, self.model_state)

  @property
  def layers(self) -> list[str]:
    """The names `embed` takes: the backbone's outputs, input side first."""
    return features.layer_names(self.config)

  def embed(self, images: np.ndarray, layer: str | Sequence[str] = "pre_logits",
            batch_size: int = 256, pooling: str = "mean", mesh=None
            ) -> np.ndarray | dict[str, np.ndarray]:
    """Features of images [N, H, W, C] (any size and channel count; uint8, or
    float in [0, 1]) in eval mode.

    `layer`: one name of `layers` (returns an array), or several (returns
    {layer: array}, all from one forward pass). `pooling`: "mean" (spatial and
    token axes averaged: [N, C]), "flatten" ([N, H*W*C]) or "none" (the layer's
    own shape). With a `mesh`, batches are split over its batch axes.
    """
    names = [layer] if isinstance(layer, str) else list(layer)
    out = features.extract_layers(self.encoder_variables, images, self.config,
                                  layers=names, pooling=pooling,
                                  batch_size=batch_size, mesh=mesh)
    return out[layer] if isinstance(layer, str) else out

  @property
  def has_text_tower(self) -> bool:
    """Whether this is a two-tower (CLIP/SigLIP) checkpoint."""
    return "text" in self.config.input

  def _embedder(self, batch_size: int):
    if not self.has_text_tower:
      raise ValueError(
          f"This {self.config.objective} checkpoint has no text tower: image-text "
          "embeddings need a CLIP/SigLIP checkpoint (`embed` gives image features "
          "of any checkpoint).")
    if self._image_text is None:  # Compiled once per checkpoint object.
      self._image_text = features.ImageTextEmbedder(self.config, batch_size)
    self._image_text.batch_size = batch_size
    return self._image_text

  def embed_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """[N, D] L2-normalised image embeddings in the joint image-text space of a
    CLIP/SigLIP checkpoint (uint8 NHWC images of any size and channel count, the
    checkpoint's own preprocessing): what zero-shot and retrieval compare."""
    return self._embedder(batch_size).images(self.variables, images)

  def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """[N, D] L2-normalised text embeddings of a CLIP/SigLIP checkpoint (its own
    tokenizer; texts longer than the text tower's length are cut)."""
    return self._embedder(batch_size).texts(self.variables, list(texts))


def load(workdir: str, step: int | None = None, check_model: bool = True,
         sharding=None, weights: str | None = None) -> Pretrained:
  """The params of `step` (default: the latest complete one) and the run's config.

  `weights`: "student" (the trained parameters) or "teacher" (the EMA teacher of
  BYOL, MoCo v3, DINO); default: the one the objective evaluates (its config's
  `eval_weights`, "student" unless it says otherwise).
  `sharding`: where the arrays go (default: the first local device); a
  `jax.sharding.NamedSharding(mesh, P())` replicates them over a mesh. With
  `check_model`, the restored arrays must have the shapes of the model the
  config describes (a CheckpointError names the first differences otherwise), so
  a checkpoint is never evaluated with the wrong architecture.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise checkpoint.CheckpointError(
        f"{workdir!r} is a file; pass the workdir of a run (the directory holding "
        "config.json and checkpoints/).")
  if not os.path.isdir(workdir):
    raise checkpoint.CheckpointError(
        f"No checkpoints: the workdir {workdir!r} does not exist.")
  config_dict = checkpoint.read_config_dict(workdir)
  if config_dict is None:
    raise checkpoint.CheckpointError(
        f"{workdir!r} has no config.json: not a tandem workdir.")
  config = ml_collections.ConfigDict(config_dict)
  params, model_state, step = checkpoint.restore_params(workdir, step, sharding)
  if check_model:
    check_model_matches(config, params, model_state, f"{workdir} step {step}")
  from tandem.ssl import objectives  # pylint: disable=g-import-not-at-top
  params, model_state = objectives.weights(config, params, model_state, weights)
  return Pretrained(config=config, params=params, model_state=model_state, step=step,
                    workdir=os.path.abspath(workdir))


def check_model_matches(config, params, model_state, where: str) -> None:
  """CheckpointError unless the arrays have the shapes of `config`'s model."""
  import jax  # pylint: disable=g-import-not-at-top
  from tandem import parallel  # pylint: disable=g-import-not-at-top
  from tandem.ssl import objectives  # pylint: disable=g-import-not-at-top
  objective = objectives.get_objective(config.objective)
  model = objective.make_model(config)
  inputs = objective.init_inputs(config)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs,
                                               train=False))
  expected = dict(expected)
  found = {"params": params, **{k: v for k, v in (model_state or {}).items()
                                if k != objectives.OBJECTIVE_STATE}}
  shapes = lambda tree: {parallel.path_str(p): tuple(x.shape) for p, x in
                         jax.tree_util.tree_flatten_with_path(tree)[0]}
  want, got = shapes(expected), shapes(found)
  problems = [f"{k}: checkpoint {got.get(k, 'missing')} vs model {v}"
              for k, v in want.items() if got.get(k) != v]
  problems += [f"{k}: in the checkpoint but not in the model" for k in got
               if k not in want]
  if problems:
    raise checkpoint.CheckpointError(
        f"The checkpoint ({where}) does not match the model of its config "
        f"({config.objective}, {config.model_name}): {len(problems)} arrays differ, "
        f"e.g. {'; '.join(problems[:3])}. Was config.json overwritten, or the "
        "workdir reused for another model?")
