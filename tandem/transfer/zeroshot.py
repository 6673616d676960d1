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
from tandem.transfer import results


def class_embeddings(embed_texts, class_names: Sequence[str],
                     templates: Sequence[str] | None = None) -> np.ndarray:
  """[C, D] renormalised mean prompt embedding per class; `embed_texts(list) -> [N, D]`
  (e.g. a CLIP checkpoint's `embed_texts`); `templates` default to
  `tandem.data.captions.TEMPLATES`."""
  templates = tuple(templates or captions_lib.TEMPLATES)
  prompts = [t.format(name) for name in class_names for t in templates]
  emb = np.asarray(embed_texts(prompts), np.float32)
  emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return emb / np.linalg.norm(emb, axis=-1, keepdims=True).clip(1e-12)


def zeroshot_top1(image_emb: np.ndarray, class_emb: np.ndarray,
                  labels: np.ndarray) -> float:
  return zeroshot_classify(image_emb, class_emb, labels).accuracy


def zeroshot_classify(image_emb, class_emb, labels) -> results.Result:
  """Zero-shot classification of L2-normalised image embeddings [N, D] by the
  class embeddings [C, D] (`class_embeddings`): a `tandem.transfer.Result` with
  setting `zeroshot` (top-1, predictions, confusion) and the cosine similarity of
  every image to every class in `details["zeroshot"]["similarities"]` [N, C]."""
  image_emb, class_emb = (np.asarray(a, np.float32) for a in (image_emb, class_emb))
  labels = np.asarray(labels)
  if image_emb.ndim != 2 or class_emb.ndim != 2 or \
      image_emb.shape[1] != class_emb.shape[1] or len(labels) != len(image_emb):
    raise ValueError(f"zeroshot_classify: image embeddings {image_emb.shape}, class "
                     f"embeddings {class_emb.shape} and labels {labels.shape} do not "
                     "fit ([N, D], [C, D], [N]).")
  similarities = image_emb @ class_emb.T
  predictions = np.argmax(similarities, axis=-1)
  return results.Result(
      "zeroshot", {"zeroshot": float(np.mean(predictions == labels))},
      {"zeroshot": predictions}, labels, len(class_emb),
      {"zeroshot": {"similarities": similarities}})


PROTOCOL = "class-name prompts, embeddings averaged over templates"


def load_data(settings, config, data_dir: str, *, extract=None, cache=None,
              mesh=None):
  """Inside pretraining: `settings.dataset`'s `split` (capped at `max_examples`,
  seeded) as a test-only task with the dataset's class names."""
  del mesh  # Embedded on one device.
  from tandem.transfer import periodic  # pylint: disable=g-import-not-at-top
  from tandem.transfer import protocol  # pylint: disable=g-import-not-at-top
  images, labels = periodic.load_split(
      settings.dataset, settings.split, data_dir,
      config.input.image_size, config.input.channels,
      settings.get("max_examples", 0), config.seed)
  names = captions_lib.class_names(settings.dataset)
  return protocol.TaskData(
      settings.dataset, len(names), {"test": protocol.Split("test", images, labels)},
      extract=extract, class_names=names, cache=cache,
      keys={"test": (settings.dataset, settings.split,
                     settings.get("max_examples", 0))})


def evaluate_task(data, settings, model) -> list[dict]:
  """Zero-shot top-1 on the task's test split (`settings.templates`; empty: the
  CLIP-style templates of `tandem.data.captions`)."""
  from tandem.transfer import features  # pylint: disable=g-import-not-at-top
  from tandem.transfer import protocol  # pylint: disable=g-import-not-at-top
  skip = protocol.needs_text_tower(model, "zeroshot")
  if skip:
    return [skip]
  if not data.class_names:
    return [{"evaluator": "zeroshot", "skipped": f"{data.name} has no class names "
             "to prompt with."}]
  templates = tuple(settings.get("templates", ())) or captions_lib.TEMPLATES
  class_emb = class_embeddings(lambda t: model.embedder.texts(model.variables, t),
                               data.class_names, templates)
  image_emb = data.features("test", features.IMAGE_TEXT_LAYER)
  return [{"evaluator": "zeroshot", "metric": "test_top1",
           "layer": features.IMAGE_TEXT_LAYER,
           "value": zeroshot_top1(image_emb, class_emb, data.test.labels),
           "templates": len(templates), "protocol": PROTOCOL}]
