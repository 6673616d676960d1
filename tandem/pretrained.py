"""`tandem.load(workdir)`: a pretrained checkpoint for notebooks and evaluators.

    model = tandem.load("/tmp/bt")           # latest step; or step=N
    feats = model.embed(images_uint8, layer="pre_logits", batch_size=256)

Only the params (and batch-norm statistics needed for eval-mode features) are
restored, on the first local device, whatever mesh the run was trained on; the
optimizer state is never read. `embed` applies the checkpoint's own preprocessing
(resize, channel conversion, normalisation) to uint8 NHWC images of any size.
"""
from __future__ import annotations

import dataclasses
from typing import Any

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

  @property
  def encoder_variables(self) -> dict:
    return features.encoder_variables(self.params, self.model_state)

  def embed(self, images: np.ndarray, layer: str = "pre_logits",
            batch_size: int = 256) -> np.ndarray:
    """Features [N, D] of uint8 images [N, H, W, C] (any size and channel count)."""
    return features.extract(self.encoder_variables, images, self.config,
                            layer=layer, batch_size=batch_size)


def load(workdir: str, step: int | None = None) -> Pretrained:
  config_dict = checkpoint.read_config_dict(workdir)
  if config_dict is None:
    raise checkpoint.CheckpointError(
        f"{workdir!r} has no config.json: not a tandem workdir.")
  config = ml_collections.ConfigDict(config_dict)
  params, model_state, step = checkpoint.restore_params(workdir, step)
  return Pretrained(config=config, params=params, model_state=model_state, step=step)
