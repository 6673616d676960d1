"""Captions made from class names, for image-text training and zero-shot evaluation.

A labelled dataset becomes an image-text dataset by captioning each image with a
prompt template filled with its class name, one template drawn per example; the
same templates, all of them per class, make CLIP's zero-shot classifier (Radford et
al. 2021, sec. 3.1.4: the class embedding is the mean over prompts). `TEMPLATES` is
a subset of CLIP's ImageNet prompt ensemble, leaving out the ones that mention a
size ("a photo of the small {}."), which would contradict `captioned_shapes`.

Class names are lower case and readable rather than TFDS's label strings (Fashion-
MNIST's "T-shirt/top" is "t-shirt"); they are in label order.
"""
from typing import Sequence

from tandem.data import captioned_shapes

TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a picture of the {}.",
    "a low resolution photo of a {}.",
    "a close-up photo of a {}.",
    "a bad photo of the {}.",
    "a rendering of a {}.",
    "itap of a {}.",
)

_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer",
            "dog", "frog", "horse", "ship", "truck")
CLASS_NAMES = {
    "fashion_mnist": ("t-shirt", "trouser", "pullover", "dress", "coat",
                      "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    "cifar10": _CIFAR10,
    "cifar10_subset": _CIFAR10,
    "captioned_shapes": captioned_shapes.CLASS_NAMES,
}


def class_names(dataset: str) -> list[str]:
  """Class names of `dataset` in label order ("name:1.0.0" and "name/config" too)."""
  base = dataset.split(":")[0].split("/")[0]
  if base not in CLASS_NAMES:
    raise ValueError(f"No class names for dataset {dataset!r}; datasets with class"
                     f" names: {sorted(CLASS_NAMES)}.")
  return list(CLASS_NAMES[base])


def prompts(dataset: str, templates: Sequence[str] = TEMPLATES) -> list[list[str]]:
  """Per class (label order), the class name in every template: zero-shot prompts."""
  return [[t.format(name) for t in templates] for name in class_names(dataset)]
