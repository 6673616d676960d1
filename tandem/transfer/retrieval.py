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

import dataclasses
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
  top_texts, top_images = ranked(image_emb, text_emb, max(ks))
  i2t_hits = np.take_along_axis(owns, ids[top_texts], axis=1)
  t2i_hits = owns[top_images, ids[:, None]]
  out = {}
  for k in ks:
    out[f"i2t_recall@{k}"] = float(np.mean(i2t_hits[:, :k].any(axis=1)))
    out[f"t2i_recall@{k}"] = float(np.mean(t2i_hits[:, :k].any(axis=1)))
  return out


def ranked(image_emb: np.ndarray, text_emb: np.ndarray, k: int = 5
           ) -> tuple[np.ndarray, np.ndarray]:
  """(top texts of every image [N_images, k], top images of every text
  [N_texts, k]): indices by cosine similarity of L2-normalised embeddings, best
  first, as `recall_at_k` ranks them."""
  sim = np.asarray(image_emb) @ np.asarray(text_emb).T  # [images, texts]
  return np.argsort(-sim, axis=1)[:, :k], np.argsort(-sim.T, axis=1)[:, :k]


@dataclasses.dataclass
class Pairs:
  """Images and their captions (a list of strings per image): retrieval's data."""
  name: str
  images: np.ndarray
  captions: list
  group: str = "image-text"


def load_data(settings, config, data_dir: str, *, seed: int | None = None,
              extract=None, cache=None, mesh=None):
  """`settings.dataset`'s `split` with its `text_feature` captions, at the
  checkpoint's image size (datasets such as coco_captions hold images of many
  sizes, which cannot be stacked as stored), capped at `max_examples` (seeded)."""
  del extract, cache, mesh  # Retrieval embeds its own data, on one device.
  from tandem.data import input_pipeline  # pylint: disable=g-import-not-at-top
  images, captions, _ = input_pipeline.load_image_text(
      settings.dataset, settings.split, data_dir=data_dir,
      image_size=config.input.image_size, channels=config.input.channels,
      text_feature=settings.get("text_feature", "") or None)
  images, captions = input_pipeline.subsample(
      settings.get("max_examples", 0), config.seed if seed is None else seed,
      images, captions)
  return Pairs(f"{settings.dataset}/{settings.split}", images, list(captions))


def evaluate_task(data: Pairs, settings, model) -> list[dict]:
  """Recall@K image→text and text→image: records `retrieval_i2t_recall@K` and
  `retrieval_t2i_recall@K`."""
  del settings
  from tandem.transfer import features  # pylint: disable=g-import-not-at-top
  from tandem.transfer import protocol  # pylint: disable=g-import-not-at-top
  skip = protocol.needs_text_tower(model, "retrieval")
  if skip:
    return [skip]
  texts = [c for caps in data.captions for c in caps]
  scores = recall_at_k(model.embedder.images(model.variables, data.images),
                       model.embedder.texts(model.variables, texts), data.captions,
                       texts)
  return [{"evaluator": f"retrieval_{k}", "metric": k, "value": v,
           "layer": features.IMAGE_TEXT_LAYER, "num_images": len(data.images),
           "num_captions": len(texts)} for k, v in scores.items()]
