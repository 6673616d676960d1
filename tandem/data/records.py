"""Decode serialized TFDS records to numpy (image, label[, texts]), without TensorFlow.

Why not TFDS's own `data_source` decoding: without TensorFlow, TFDS parses every
`tf.train.Example` in pure Python (~200 us each on our CPUs) and decodes images with
Pillow (~250 us for a 28x28 PNG): about 1,400 images/s, too slow for training or for
loading a split into memory. Here the proto is parsed by protobuf's C implementation
and only the two features a classification pipeline needs are read. PNGs written by
our builders (`png.encode_png`) take the fast path; any other PNG or JPEG (datasets
prepared by TFDS itself) goes to OpenCV if installed, else Pillow.

Which features: `info.supervised_keys` when it names two top-level features (TFDS
image-classification datasets do: `("image", "label")`), else "image" and "label".

Text (image-text datasets): a `text_feature` path names a `tfds.features.Text`,
either top-level ("caption") or inside a `Sequence` of dicts ("captions/text", as in
TFDS's `coco_captions`). TFDS stores it under that flattened key as a bytes feature
with one value per caption; the decoder returns all of them per example (evaluation)
and `sample_texts` picks one per example with a seeded rng (training). With a text
feature the label is optional: datasets without one (coco_captions) decode without.
"""
import io
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from tandem.data import image_ops
from tandem.data import png

try:  # OpenCV decodes ~4x faster than Pillow, but it is not a dependency.
  import cv2
except ImportError:
  cv2 = None


def _decode_with_library(data: bytes) -> np.ndarray:
  """(H, W, C) uint8 from PNG/JPEG bytes, via OpenCV or Pillow."""
  if cv2 is not None:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
      raise ValueError("OpenCV could not decode an image record.")
    if image.ndim == 2:
      return image[:, :, None]
    if image.dtype != np.uint8:
      raise ValueError(f"Only 8-bit images are supported, got {image.dtype}.")
    code = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}.get(image.shape[2])
    return cv2.cvtColor(image, code) if code is not None else image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(data)) as pil_image:
    if pil_image.mode not in ("L", "LA", "RGB", "RGBA"):
      has_alpha = "transparency" in pil_image.info or "A" in pil_image.mode
      pil_image = pil_image.convert("RGBA" if has_alpha else "RGB")
    image = np.asarray(pil_image)
  return image[:, :, None] if image.ndim == 2 else image


def decode_image(data: bytes, channels: int | None = None) -> np.ndarray:
  """(H, W, C) uint8 from PNG/JPEG bytes; C converted to `channels` if given."""
  image = png.decode_png(data)
  if image is None:
    image = _decode_with_library(data)
  if channels is not None and image.shape[-1] != channels:
    image = image_ops.convert_channels(image, channels)
  return image


def text_feature_key(features: tfds.features.FeaturesDict, path: str) -> str:
  """The Example key of the Text feature at `path` ("caption", "captions/text").

  TFDS flattens nested features with "/", so the key is the path itself; a
  top-level name may hold "/" too (coco's "image/filename").
  """
  if not isinstance(_find_feature(features, path.split("/")), tfds.features.Text):
    found = sorted(k for k, f in _flat_features(features)
                   if isinstance(f, tfds.features.Text))
    raise ValueError(f"No text feature {path!r}; text features: {found}.")
  return path


def _find_feature(feature, parts: list[str]):
  """The feature at path `parts`, looking through Sequences; None if absent."""
  if isinstance(feature, tfds.features.Sequence):  # of dicts, or Sequence(Text())
    feature = feature.feature
  if not parts:
    return feature
  if not isinstance(feature, tfds.features.FeaturesDict):
    return None
  for i in range(len(parts), 0, -1):
    key = "/".join(parts[:i])
    if key in feature:
      found = _find_feature(feature[key], parts[i:])
      if found is not None:
        return found
  return None


def _flat_features(feature, prefix: str = ""):
  """(flattened key, feature) pairs, looking through Sequences of dicts."""
  if isinstance(feature, tfds.features.Sequence):
    feature = feature.feature
  if isinstance(feature, tfds.features.FeaturesDict):
    for key, child in feature.items():
      yield from _flat_features(child, f"{prefix}{key}/")
  else:
    yield prefix[:-1], feature


def sample_texts(texts: Sequence[Sequence[str]], rng: np.random.Generator) -> list[str]:
  """One text per example, uniformly among its texts ("" when it has none)."""
  draws = rng.random(len(texts))
  return [t[int(u * len(t))] if len(t) else "" for t, u in zip(texts, draws)]


class ExampleDecoder:
  """Turns serialized examples of a TFDS image dataset into arrays (and texts)."""

  def __init__(self, info: tfds.core.DatasetInfo, text_feature: str | None = None):
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2
            and all(isinstance(k, str) for k in keys)):
      keys = ("image", "label")
    self.image_key, self.label_key = keys
    features = info.features
    self.text_key = text_feature_key(features, text_feature) if text_feature else None
    if self.text_key and self.label_key not in features:
      self.label_key = None  # image-text data without labels
      keys = (self.image_key,)
    for key in keys:
      if key not in features:
        raise ValueError(f"Dataset {info.full_name} has no feature {key!r} "
                         f"(features: {list(features.keys())}).")
    image_feature = features[self.image_key]
    if not isinstance(image_feature, tfds.features.Image):
      raise ValueError(f"{info.full_name}: feature {self.image_key!r} is "
                       f"{type(image_feature).__name__}, not an Image.")
    if image_feature.np_dtype != np.uint8:
      raise ValueError(f"{info.full_name}: only uint8 images are supported.")
    # Declared (H, W, C); H and W are None for variable-size datasets.
    self.image_shape = tuple(image_feature.shape)
    self.channels = self.image_shape[-1]

  def decode_batch(self, records: Sequence[bytes], image_size: int | None = None,
                   channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, C) uint8 images and (N,) int32 labels.

    Images are resized to `image_size` and converted to `channels` when given
    (`image_ops`); without `image_size` they must all share one size.
    """
    if self.label_key is None:
      raise ValueError("This dataset has no label feature.")
    encoded, labels, _ = self._parse(records)
    return self._images(encoded, image_size, channels), labels

  def decode(self, records: Sequence[bytes], image_size: int | None = None,
             channels: int | None = None) -> dict[str, Any]:
    """{"image": as `decode_batch`, "label": int32 [N] if the dataset has labels,
    "texts": N lists of str if a `text_feature` was given}."""
    encoded, labels, texts = self._parse(records)
    decoded = {"image": self._images(encoded, image_size, channels)}
    if labels is not None:
      decoded["label"] = labels
    if texts is not None:
      decoded["texts"] = texts
    return decoded

  def _images(self, encoded: list[bytes], image_size: int | None,
              channels: int | None) -> np.ndarray:
    return decode_images(encoded, self.channels, image_size, channels)

  def _parse(self, records: Sequence[bytes]
             ) -> tuple[list[bytes], np.ndarray | None, list[list[str]] | None]:
    encoded = []
    labels = None if self.label_key is None else np.empty(len(records), np.int32)
    texts = None if self.text_key is None else []
    for i, record in enumerate(records):
      feature = tf_example_pb2.Example.FromString(record).features.feature
      encoded.append(feature[self.image_key].bytes_list.value[0])
      if labels is not None:
        labels[i] = feature[self.label_key].int64_list.value[0]
      if texts is not None:
        texts.append([t.decode("utf-8", errors="replace")
                      for t in feature[self.text_key].bytes_list.value])
    return encoded, labels, texts


def decode_images(encoded: list[bytes], stored_channels: int, image_size: int | None,
                  channels: int | None, pixel_scale: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] from PNG/JPEG bytes at `image_size` and `channels` (None:
  as stored), pixel values multiplied by `pixel_scale` (capped at 255) first
  (dSprites stores 0 or 1). One batched PNG decode when the images allow it."""
  scale = lambda images: np.minimum(images.astype(np.uint16) * pixel_scale,
                                    255).astype(np.uint8)
  batch = png.decode_pngs(encoded)  # fast path: no per-image NumPy work
  if batch is None or batch.shape[-1] != stored_channels:
    images = [decode_image(data, stored_channels) for data in encoded]
    if pixel_scale != 1:
      images = [scale(image) for image in images]
    if len({image.shape for image in images}) == 1:
      batch = np.stack(images)
    elif image_size is None:
      raise ValueError(f"Images of different sizes ({images[0].shape}, ...) need"
                       " an `image_size`.")
    else:
      return np.stack([image_ops.to_size_and_channels(image, image_size, channels)
                       for image in images])
  elif pixel_scale != 1:
    batch = scale(batch)
  return image_ops.to_size_and_channels(batch, image_size, channels)
