"""Decode serialized TFDS records to numpy (image, label) pairs, without TensorFlow.

Why not TFDS's own `data_source` decoding: without TensorFlow, TFDS parses every
`tf.train.Example` in pure Python (~200 us each on our CPUs) and decodes images with
Pillow (~250 us for a 28x28 PNG): about 1,400 images/s, too slow for training or for
loading a split into memory. Here the proto is parsed by protobuf's C implementation
and only the two features a classification pipeline needs are read. PNGs written by
our builders (`png.encode_png`) take the fast path; any other PNG or JPEG (datasets
prepared by TFDS itself) goes to OpenCV if installed, else Pillow.

Which features: `info.supervised_keys` when it names two top-level features (TFDS
image-classification datasets do: `("image", "label")`), else "image" and "label".
"""
import io
from typing import Sequence

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


class ExampleDecoder:
  """Turns serialized examples of a TFDS image-classification dataset into arrays."""

  def __init__(self, info: tfds.core.DatasetInfo):
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2
            and all(isinstance(k, str) for k in keys)):
      keys = ("image", "label")
    self.image_key, self.label_key = keys
    features = info.features
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
    encoded, labels = self._parse(records)
    batch = png.decode_pngs(encoded)  # fast path: no per-image NumPy work
    if batch is None or batch.shape[-1] != self.channels:
      images = [decode_image(data, self.channels) for data in encoded]
      if len({image.shape for image in images}) == 1:
        batch = np.stack(images)
      elif image_size is None:
        raise ValueError(f"Images of different sizes ({images[0].shape}, ...) need"
                         " an `image_size`.")
      else:
        return np.stack([image_ops.to_size_and_channels(image, image_size, channels)
                         for image in images]), labels
    return image_ops.to_size_and_channels(batch, image_size, channels), labels

  def _parse(self, records: Sequence[bytes]) -> tuple[list[bytes], np.ndarray]:
    encoded, labels = [], np.empty(len(records), np.int32)
    for i, record in enumerate(records):
      feature = tf_example_pb2.Example.FromString(record).features.feature
      encoded.append(feature[self.image_key].bytes_list.value[0])
      labels[i] = feature[self.label_key].int64_list.value[0]
    return encoded, labels
