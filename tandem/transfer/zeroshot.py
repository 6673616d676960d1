"""Zero-shot classification with a CLIP/SigLIP checkpoint (Radford et al. 2021).

Each class is the class name in every prompt template ("a photo of a {}."),
embedded by the text tower; the class embedding is the mean of its L2-normalised
prompt embeddings, renormalised (CLIP's prompt ensemble). An image is assigned
the class of highest cosine similarity; the score is top-1 accuracy. No training
data and no labels are used except the test labels for scoring.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tandem.data import captions as captions_lib


def class_embeddings(embed_texts, class_names: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
  """[C, D] renormalised mean prompt embedding per class; `embed_texts(list) -> [N, D]`."""
  prompts = [t.format(name) for name in class_names for t in templates]
  emb = np.asarray(embed_texts(prompts), np.float32)
  emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return emb / np.linalg.norm(emb, axis=-1, keepdims=True).clip(1e-12)


def zeroshot_top1(image_emb: np.ndarray, class_emb: np.ndarray,
                  labels: np.ndarray) -> float:
  predictions = np.argmax(image_emb @ class_emb.T, axis=-1)
  return float(np.mean(predictions == np.asarray(labels)))


class Evaluator:
  """Zero-shot top-1 on `config.evals.zeroshot` (dataset, split, templates).

  `templates` empty: the CLIP-style templates of `tandem.data.captions`.
  """

  def __init__(self, config, *, data_dir: str, mesh=None):
    del mesh  # Small enough for one device.
    from tandem.data import input_pipeline
    from tandem.transfer import features
    self.block = config.evals.zeroshot
    self.embedder = features.ImageTextEmbedder(config, self.block.batch_size)
    images, labels = input_pipeline.load_arrays(
        self.block.dataset, self.block.split, data_dir=data_dir,
        image_size=config.input.image_size, channels=config.input.channels)
    if self.block.max_examples and len(images) > self.block.max_examples:
      keep = np.sort(np.random.default_rng(config.seed).choice(
          len(images), self.block.max_examples, replace=False))
      images, labels = images[keep], labels[keep]
    self.images, self.labels = images, labels
    self.class_names = captions_lib.class_names(self.block.dataset)
    self.templates = tuple(self.block.templates) or captions_lib.TEMPLATES

  def run(self, variables) -> dict[str, float]:
    class_emb = class_embeddings(lambda t: self.embedder.texts(variables, t),
                                 self.class_names, self.templates)
    image_emb = self.embedder.images(variables, self.images)
    return {f"zeroshot/{self.block.dataset}/{self.block.split}/top1":
            zeroshot_top1(image_emb, class_emb, self.labels)}
