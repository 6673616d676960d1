"""A dataset split as arrays, by name, for notebooks.

    data = load_dataset("fashion_mnist", "test", max_examples=2000)
    data.images        # uint8 [N, H, W, C], the stored size (or image_size=...)
    data.labels        # int32 [N], or None for a dataset without labels
    data.class_names   # ["t-shirt", ...] in label order, or None
    data.captions      # [[caption, ...] per image] for image-text datasets, or None

The dataset must be prepared (`python -m tandem.data.prepare --dataset NAME`);
the error says so otherwise. TFDS and grain are imported here, on the first call,
not when `tandem.analysis` is imported.
"""
from __future__ import annotations

import dataclasses

import numpy as np

TEXT_FEATURES = ("caption", "captions")


@dataclasses.dataclass
class Dataset:
  name: str
  split: str
  images: np.ndarray
  labels: np.ndarray | None
  class_names: list[str] | None
  captions: list[list[str]] | None

  def __len__(self) -> int:
    return len(self.images)


def _class_names(name: str, info) -> list[str] | None:
  from tandem.data import captions  # pylint: disable=g-import-not-at-top
  try:
    return captions.class_names(name)
  except ValueError:
    label = info.features.get("label") if hasattr(info.features, "get") else None
    names = getattr(label, "names", None)
    return list(names) if names else None


def load_dataset(name: str, split: str = "test", *, data_dir: str | None = None,
                 image_size: int | None = None, channels: int | None = None,
                 max_examples: int = 0, seed: int = 0) -> Dataset:
  """`split` of dataset `name` in memory (slicing allowed: "train[:1000]").

  `image_size` / `channels` resize and convert the images (needed when a
  dataset's images differ in size); `max_examples` > 0 keeps that many, drawn
  with `seed` and kept in stored order. Captions are read for datasets with a
  caption feature (captioned_shapes, coco_captions).
  """
  from tandem.data import input_pipeline  # pylint: disable=g-import-not-at-top
  info = input_pipeline.prepared_builder(name, data_dir).info
  text = next((f for f in TEXT_FEATURES if f in info.features), None)
  has_labels = "label" in info.features
  if text:
    images, texts, labels = input_pipeline.load_image_text(
        name, split, data_dir=data_dir, image_size=image_size, channels=channels,
        text_feature=text)
  else:
    if not has_labels:
      raise ValueError(f"Dataset {name!r} has neither a label nor a caption "
                       f"feature (it has {sorted(info.features)}).")
    images, labels = input_pipeline.load_arrays(
        name, split, data_dir=data_dir, image_size=image_size, channels=channels)
    texts = None
  arrays = [images] + ([labels] if labels is not None else []) + (
      [texts] if texts is not None else [])
  arrays = list(input_pipeline.subsample(max_examples, seed, *arrays))
  images = arrays.pop(0)
  labels = arrays.pop(0) if labels is not None else None
  texts = arrays.pop(0) if texts is not None else None
  return Dataset(name=name, split=split, images=images, labels=labels,
                 class_names=_class_names(name, info) if has_labels else None,
                 captions=texts)
