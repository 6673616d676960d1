"""Image↔text retrieval Recall@K with a CLIP/SigLIP checkpoint.

Every image and every caption of a held-out split is embedded; for image→text each
image ranks all captions, for text→image each caption ranks all images, by cosine
similarity. Recall@K is the fraction of queries with a correct item in the top K:
an image is a hit if ANY of its captions is in its top K (so an image with several
captions has several chances), a caption is a hit if its image is in its top K
(every caption is a query). Images are resized to the checkpoint's
`input.image_size` (and channels) when loaded, since datasets such as
coco_captions hold images of many sizes, then preprocessed as in pretraining
(`features.ImageTextEmbedder`).

Choice: an item is correct when its caption TEXT is one of the image's captions
(not only when it is the same caption record). Identical strings have identical
embeddings, so with index matching their order would be an arbitrary tie-break;
for datasets whose captions are all distinct (COCO) the two definitions agree.
Procedural captions repeat ("one small red circle"), so this matters there.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

KS = (1, 5, 10)


def recall_at_k(image_emb: np.ndarray, text_emb: np.ndarray,
                image_captions: Sequence[Sequence[str]], texts: Sequence[str],
                ks: Sequence[int] = KS) -> dict[str, float]:
  """Recall@K both ways; `image_captions[i]` are image i's captions, `texts[j]` the
  string embedded as `text_emb[j]`."""
  text_ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
  ids = np.array([text_ids[t] for t in texts])
  # owns[i, u]: image i has caption text u.
  owns = np.zeros((len(image_captions), len(text_ids)), bool)
  for i, caps in enumerate(image_captions):
    owns[i, [text_ids[c] for c in caps if c in text_ids]] = True
  sim = image_emb @ text_emb.T  # [images, texts]
  kmax = min(max(ks), sim.shape[1]), min(max(ks), sim.shape[0])
  top_texts = np.argsort(-sim, axis=1)[:, :kmax[0]]          # per image
  top_images = np.argsort(-sim, axis=0)[:kmax[1], :].T       # per text
  i2t_hits = np.take_along_axis(owns, ids[top_texts], axis=1)
  t2i_hits = owns[top_images, ids[:, None]]
  out = {}
  for k in ks:
    out[f"i2t_recall@{k}"] = float(np.mean(i2t_hits[:, :k].any(axis=1)))
    out[f"t2i_recall@{k}"] = float(np.mean(t2i_hits[:, :k].any(axis=1)))
  return out


class Evaluator:
  """Recall@1/5/10 on `config.evals.retrieval` (dataset, split, text_feature)."""

  def __init__(self, config, *, data_dir: str, mesh=None):
    del mesh
    from tandem.data import input_pipeline
    from tandem.transfer import features
    self.block = config.evals.retrieval
    self.embedder = features.ImageTextEmbedder(config, self.block.batch_size)
    images, captions, _ = input_pipeline.load_image_text(
        self.block.dataset, self.block.split, data_dir=data_dir,
        image_size=config.input.image_size, channels=config.input.channels,
        text_feature=self.block.text_feature)
    if self.block.max_examples and len(images) > self.block.max_examples:
      keep = np.sort(np.random.default_rng(config.seed).choice(
          len(images), self.block.max_examples, replace=False))
      images, captions = images[keep], [captions[i] for i in keep]
    self.images, self.captions = images, captions
    self.texts = [c for caps in captions for c in caps]

  def run(self, variables) -> dict[str, float]:
    image_emb = self.embedder.images(variables, self.images)
    text_emb = self.embedder.texts(variables, self.texts)
    prefix = f"retrieval/{self.block.dataset}/{self.block.split}/"
    return {prefix + k: v for k, v in recall_at_k(
        image_emb, text_emb, self.captions, self.texts).items()}
