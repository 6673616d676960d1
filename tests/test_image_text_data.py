"""Image-text loading: captioned_shapes prepared and read by name, a local stand-in
for TFDS's coco_captions (several captions per image, no label), class-name
captions for labelled datasets, truncation counted in the iterator's state, empty
captions refused, and exact resume."""
import json

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from tandem.data import captioned_shapes
from tandem.data import captions as captions_lib
from tandem.data import input_pipeline
from tandem.data import prepare as prepare_lib
from tandem.data import records
from tandem.data import tokenizer as tokenizer_lib

SHAPES_SIZES = {"train": 48, "validation": 16, "test": 16}
BYTES = tokenizer_lib.ByteTokenizer()


def _texts(batch) -> list[str]:
  return [BYTES.decode(row) for row in batch["text"]]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  """A data dir with a small captioned_shapes, prepared through prepare.py."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(captioned_shapes.CaptionedShapes, "SPLIT_SIZES", SHAPES_SIZES)
    prepare_lib.prepare("captioned_shapes", data_dir)
  return data_dir


def _generated(split: str) -> dict[bytes, dict]:
  """Image bytes -> example, for the examples prepared in `shapes_dir`."""
  return {e["image"].tobytes(): e for e in captioned_shapes.CaptionedShapes.generate(
      split, 0, SHAPES_SIZES[split])}


def _shapes_iterator(data_dir, **kwargs):
  args = dict(data_dir=data_dir, image_size=32, channels=3, global_batch_size=8,
              seed=0, text=dict(feature="caption", tokenizer="bytes", max_len=64))
  args.update(kwargs)
  return input_pipeline.make_train_iterator("captioned_shapes", "train", **args)


def test_captioned_shapes_builder(shapes_dir):
  info = tfds.builder("captioned_shapes", data_dir=shapes_dir).info
  assert {s: info.splits[s].num_examples for s in SHAPES_SIZES} == SHAPES_SIZES
  assert info.features["label"].names == list(captioned_shapes.CLASS_NAMES)
  assert info.features["image"].shape == (32, 32, 3)
  assert isinstance(info.features["caption"], tfds.features.Text)
  # TFDS's own decoding agrees with the generator, structured fields included.
  example = tfds.builder("captioned_shapes", data_dir=shapes_dir).as_data_source(
      "test")[0]
  want = _generated("test")[example["image"].tobytes()]
  assert example["caption"].decode() == want["caption"] and example["heldout"]
  assert example["groups"]["count"][0] == want["groups"][0]["count"]


def test_captioned_shapes_train_batches(shapes_dir):
  generated = _generated("train")
  iterator = _shapes_iterator(shapes_dir)
  batch = next(iterator)
  assert batch.keys() == {"image", "label", "text"}
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["text"].shape == (8, 64) and batch["text"].dtype == np.int32
  assert iterator.metrics() == {"data/captions_truncated": 0}
  for image, text, label in zip(batch["image"], _texts(batch), batch["label"]):
    example = generated[image.tobytes()]
    assert text == example["caption"] and label == example["label"]


def test_captioned_shapes_load_image_text(shapes_dir):
  generated = _generated("test")
  images, texts, labels = input_pipeline.load_image_text(
      "captioned_shapes", "test", data_dir=shapes_dir)
  assert images.shape == (16, 32, 32, 3) and labels.dtype == np.int32
  for image, image_texts, label in zip(images, texts, labels):
    example = generated[image.tobytes()]
    assert image_texts == [example["caption"]] and label == example["label"]
    assert example["heldout"]
  _, prompts, _ = input_pipeline.load_image_text(
      "captioned_shapes", "test", data_dir=shapes_dir, text_feature=None)
  names = captions_lib.class_names("captioned_shapes")
  assert prompts[0] == [t.format(names[labels[0]]) for t in captions_lib.TEMPLATES]


def test_long_captions_are_truncated_and_counted(shapes_dir):
  short = _shapes_iterator(shapes_dir, text=dict(feature="caption", max_len=16))
  full = _shapes_iterator(shapes_dir)
  counts = []
  for _ in range(3):
    batch, texts = next(short), _texts(next(full))
    cut = np.greater([len(t) for t in texts], 14)  # bos + 14 bytes + eos
    assert cut.any()
    assert _texts(batch) == [t[:14] for t in texts]
    assert (batch["text"][cut, -1] == BYTES.eos_id).all()
    counts.append(int(cut.sum()))
    assert short.metrics() == {"data/captions_truncated": sum(counts)}
  assert short.get_state() == {"next_index": 3, "captions_truncated": sum(counts)}


def test_truncation_count_resumes_on_process_zero(shapes_dir):
  """The saved count is the total over processes; a resume with any number of
  processes restarts it on process 0 alone, so no caption is counted twice."""
  text = dict(feature="caption", max_len=16)
  reference = _shapes_iterator(shapes_dir, text=text)
  _take(reference, 2)
  state = json.loads(json.dumps(reference.get_state()))
  assert state["captions_truncated"] > 0
  expected = _take(reference, 2)
  first, second = (_shapes_iterator(shapes_dir, text=text, process_index=p,
                                    process_count=2) for p in (0, 1))
  for iterator in (first, second):
    iterator.set_state(state)
  assert first.metrics() == {"data/captions_truncated": state["captions_truncated"]}
  assert second.metrics() == {"data/captions_truncated": 0}
  for want in expected:  # the two halves of each global batch, counted once
    halves = [next(first), next(second)]
    np.testing.assert_array_equal(np.concatenate([h["text"] for h in halves]),
                                  want["text"])
  assert (first.metrics()["data/captions_truncated"]
          + second.metrics()["data/captions_truncated"]
          == reference.metrics()["data/captions_truncated"])


def test_text_options_are_checked(shapes_dir):
  with pytest.raises(ValueError, match="max_length"):
    _shapes_iterator(shapes_dir, text=dict(feature="caption", max_length=8))
  with pytest.raises(ValueError, match="max_len"):
    _shapes_iterator(shapes_dir, text=dict(feature="caption"))
  with pytest.raises(ValueError, match="caption"):
    _shapes_iterator(shapes_dir, text=dict(feature="captions/text", max_len=8))
  config = ml_collections.ConfigDict(dict(feature="caption", tokenizer="bytes",
                                          max_len=32))
  assert next(_shapes_iterator(shapes_dir, text=config))["text"].shape == (8, 32)


# --- class-name captions --------------------------------------------------------


def test_class_names_and_prompts():
  assert captions_lib.class_names("fashion_mnist")[0] == "t-shirt"
  assert captions_lib.class_names("cifar10_subset")[0] == "airplane"
  assert captions_lib.class_names("fashion_mnist:3.0.1") == captions_lib.class_names(
      "fashion_mnist")
  assert captions_lib.class_names("captioned_shapes") == list(
      captioned_shapes.CLASS_NAMES)
  with pytest.raises(ValueError, match="cifar10_subset.*fashion_mnist"):
    captions_lib.class_names("coco_captions")
  prompts = captions_lib.prompts("cifar10_subset")
  assert len(prompts) == 10 and len(prompts[3]) == len(captions_lib.TEMPLATES)
  assert prompts[3][0] == "a photo of a cat."


def test_fashion_mnist_class_name_captions(tiny_data_dir):
  names = captions_lib.class_names("fashion_mnist")
  iterator = input_pipeline.make_train_iterator(
      "fashion_mnist", "train", data_dir=tiny_data_dir, image_size=28, channels=1,
      global_batch_size=16, seed=0,
      text=dict(feature=None, tokenizer="bytes", max_len=64))
  templates = set()
  for batch in _take(iterator, 3):
    for text, label in zip(_texts(batch), batch["label"]):
      matches = [t for t in captions_lib.TEMPLATES if t.format(names[label]) == text]
      assert matches, (text, names[label])
      templates.update(matches)
  assert len(templates) > 1


# --- a local stand-in for TFDS's coco_captions ------------------------------------


class _FakeCocoCaptions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """coco_captions/2014:1.1.0's features (JPEGs of varying size, captions Sequence,
  objects with labels, no top-level label), a few examples."""

  name = "coco_captions"
  VERSION = tfds.core.Version("1.1.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "objects": tfds.features.Sequence({
                "id": np.int64,
                "label": tfds.features.ClassLabel(num_classes=80),
            }),
            "captions": tfds.features.Sequence({
                "text": tfds.features.Text(),
                "id": np.int64,
            }),
        }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(8), "val": self._generate_examples(4)}

  def _generate_examples(self, n):
    for i in range(n):
      # Image i has i % 4 captions, "" among them for i == 6; constant colour 20 * i.
      texts = [f"image {i} caption {j}" for j in range(i % 4)]
      if i == 6:
        texts[0] = ""
      yield i, {
          "image": Image.fromarray(np.full((20 + i, 24 - i, 3), 20 * i, np.uint8)),
          "image/filename": f"{i}.jpg",
          "image/id": i,
          "objects": [{"id": i, "label": i % 80}],
          "captions": [{"text": t, "id": 100 * i + j} for j, t in enumerate(texts)],
      }


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("coco"))
  builder = _FakeCocoCaptions(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return data_dir


def _image_index(images: np.ndarray) -> np.ndarray:
  return np.rint(images.reshape(len(images), -1).mean(1) / 20).astype(int)


def _coco_iterator(data_dir, **kwargs):
  args = dict(data_dir=data_dir, image_size=16, channels=3, global_batch_size=4,
              seed=0, text=dict(feature="captions/text", max_len=32))
  args.update(kwargs)
  return input_pipeline.make_train_iterator("coco_captions", "train", **args)


def test_coco_captions_train_batches(coco_dir):
  picked = {}
  for batch in _take(_coco_iterator(coco_dir), 40):
    assert "label" not in batch and batch["image"].shape == (4, 16, 16, 3)
    for i, text, ids in zip(_image_index(batch["image"]), _texts(batch),
                            batch["text"]):
      picked.setdefault(i, set()).add(text)
      if text == "":
        np.testing.assert_array_equal(ids[:3], [BYTES.bos_id, BYTES.eos_id, 0])
  assert sorted(picked) == list(range(8))
  for i, texts in picked.items():  # every caption of each image gets picked
    want = {f"image {i} caption {j}" for j in range(i % 4)} or {""}
    assert texts == ({"", "image 6 caption 1"} if i == 6 else want)


def test_all_empty_captions_are_refused(coco_dir):
  """Images 0 and 4 have no caption: a batch of one of them alone is refused, with
  its global batch number; a batch with one real caption is not (batches of 4
  always hold one)."""
  iterator = _coco_iterator(coco_dir, global_batch_size=1)
  for batch_number in range(8):  # one epoch
    try:
      batch = next(iterator)
    except input_pipeline.EmptyCaptionsError as e:
      assert f"batch at step {batch_number} is empty" in str(e)
      assert "input.text.feature" in str(e) and "'captions/text'" in str(e)
      break
    assert _image_index(batch["image"])[0] not in (0, 4)
  else:
    pytest.fail("No batch of an uncaptioned image was refused.")
  assert issubclass(input_pipeline.EmptyCaptionsError, ValueError)
  _take(_coco_iterator(coco_dir), 8)  # two epochs, images 0 and 4 among others


def test_coco_captions_load_image_text(coco_dir):
  images, texts, labels = input_pipeline.load_image_text(
      "coco_captions", "val", data_dir=coco_dir, image_size=16,
      text_feature="captions/text")
  assert labels is None and images.shape == (4, 16, 16, 3)
  for i, image_texts in zip(_image_index(images), texts):
    assert image_texts == [f"image {i} caption {j}" for j in range(i % 4)]
  with pytest.raises(ValueError, match="captions/text"):
    input_pipeline.load_image_text("coco_captions", "val", data_dir=coco_dir,
                                   image_size=16, text_feature="caption")
  with pytest.raises(ValueError, match="coco_captions"):  # no class names
    _coco_iterator(coco_dir, text=dict(feature=None, max_len=8))
  with pytest.raises(input_pipeline.DatasetNotPreparedError, match="coco_captions"):
    input_pipeline.load_image_text("coco_captions", "val", data_dir=coco_dir + "/no",
                                   text_feature="captions/text")


@pytest.mark.parametrize("which", ["coco", "fashion_mnist"])
def test_resume_reproduces_captions(which, coco_dir, tiny_data_dir):
  if which == "coco":
    make = lambda: _coco_iterator(coco_dir, seed=3)
  else:
    make = lambda: input_pipeline.make_train_iterator(
        "fashion_mnist", "train", data_dir=tiny_data_dir, image_size=28, channels=1,
        global_batch_size=16, seed=3, text=dict(feature="", max_len=40))
  reference = make()
  _take(reference, 3)
  state = json.loads(json.dumps(reference.get_state()))
  expected = _take(reference, 4)
  resumed = make()
  resumed.set_state(state)
  for want, got in zip(expected, _take(resumed, 4)):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_text_feature_key_lists_text_features(coco_dir):
  # TFDS's registered coco_captions needs TensorFlow; the pipeline reads the files.
  info = input_pipeline.get_data_source("coco_captions", "val", coco_dir).dataset_info
  for path in ("captions/text", "image/filename"):
    assert records.text_feature_key(info.features, path) == path
  with pytest.raises(ValueError, match=r"\['captions/text', 'image/filename'\]"):
    records.text_feature_key(info.features, "objects/label")
