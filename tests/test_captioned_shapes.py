"""captioned_shapes: captions checked against the pixels, held-out compositions,
determinism. Examples come from `CaptionedShapes.generate` (no TFDS build needed)."""
import itertools
import re

import numpy as np
import pytest
from scipy import ndimage

from tandem.data import captioned_shapes as cs
from tandem.data import procedural

COUNTS = {"one": 1, "two": 2, "three": 3}
_GROUP = (r"(one|two|three) (small|large) (\w+) (circle|square|triangle|cross)"
          r"(?:s|es)?")
CAPTION = re.compile(rf"^{_GROUP}(?: (left of|right of|above|below) {_GROUP})?$")
# Pixel counts of each shape (small, large): pins the drawing.
AREAS = {"circle": (21, 69), "square": (25, 81), "triangle": (17, 49),
         "cross": (9, 45)}
EIGHT_CONNECTED = np.ones((3, 3), bool)


def parse(caption: str) -> tuple[list[dict], str | None]:
  match = CAPTION.match(caption)
  assert match, caption
  words = match.groups()
  groups = [dict(count=COUNTS[w[0]], size=w[1], colour=w[2], shape=w[3])
            for w in (words[:4], words[5:]) if w[0] is not None]
  return groups, words[4]


@pytest.fixture(scope="module")
def examples():
  return {split: cs.CaptionedShapes.generate(split, 0, n)
          for split, n in (("train", 300), ("validation", 100), ("test", 100))}


def test_constants():
  assert len(cs.COLOURS) == 6 and cs.SHAPES == ("circle", "square", "triangle", "cross")
  assert cs.SIZE_PIXELS == {"small": 5, "large": 9}
  assert len(cs.CLASS_NAMES) == 24 and cs.CLASS_NAMES[0] == "red circle"
  assert {c for c, _ in cs.HELDOUT} == set(cs.COLOURS)  # one per colour
  training = {(c, s) for c in cs.COLOURS for s in cs.SHAPES} - set(cs.HELDOUT)
  assert {s for _, s in training} == set(cs.SHAPES)
  assert cs.is_heldout(*cs.HELDOUT[0]) and not cs.is_heldout("red", "circle")
  for shape, areas in AREAS.items():
    assert tuple(int(cs.shape_mask(shape, cs.SIZE_PIXELS[s]).sum())
                 for s in cs.SIZES) == areas
  assert cs.SPLIT_SIZES == {"train": 20000, "validation": 2000, "test": 2000}


def test_longest_caption():
  longest = max(
      len(cs.caption_of([dict(count=3, size="small", colour=c1, shape=s1),
                         dict(count=3, size="small", colour=c2, shape=s2)], r))
      for c1, c2 in itertools.permutations(cs.COLOURS, 2)
      for s1, s2 in itertools.product(cs.SHAPES, repeat=2) for r in cs.RELATIONS)
  assert longest == 67  # the module docstring promises this


def test_deterministic(examples):
  again = cs.CaptionedShapes.generate("train", 0, 50)  # a prefix of the fixture's
  for a, b in zip(examples["train"], again):
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["caption"] == b["caption"] and a["label"] == b["label"]
  later = cs.CaptionedShapes.generate("train", 10, 5)  # example i depends on i alone
  assert [e["caption"] for e in later] == [e["caption"] for e in again[10:15]]
  other = cs.CaptionedShapes.generate("train", 0, 50, seed=procedural.SEED + 1)
  assert [e["caption"] for e in other] != [e["caption"] for e in again]


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_captions_match_pixels(examples, split):
  for example in examples[split]:
    image = example["image"]
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    groups, relation = parse(example["caption"])
    assert groups == example["groups"] and relation == example["relation"]
    assert example["label"] == cs.CLASS_NAMES.index(
        f"{groups[0]['colour']} {groups[0]['shape']}")
    painted = image.any(-1)
    centroids = []
    for group in groups:
      mask = (image == cs.PALETTE[group["colour"]]).all(-1)
      painted &= ~mask
      components, n = ndimage.label(mask)
      assert n == group["count"], example["caption"]
      assert ndimage.label(mask, EIGHT_CONNECTED)[1] == n  # not even touching
      side = cs.SIZE_PIXELS[group["size"]]
      for box in ndimage.find_objects(components):
        region = components[box] > 0
        assert region.shape == (side, side)
        area = region.sum()
        assert area <= 25 if group["size"] == "small" else area >= 45
        np.testing.assert_array_equal(region, cs.shape_mask(group["shape"], side))
      centroids.append(np.argwhere(mask).mean(0))
    assert not painted.any(), "pixels of colours the caption does not name"
    if relation:
      dy, dx = centroids[1] - centroids[0]  # second group minus first
      along, sign = {"left of": (dx, 1), "right of": (dx, -1),
                     "above": (dy, 1), "below": (dy, -1)}[relation]
      across = dy if relation in ("left of", "right of") else dx
      assert sign * along >= 4 and abs(along) >= 2 * abs(across), example["caption"]


def test_heldout_compositions(examples):
  for split in ("train", "validation"):
    for example in examples[split]:
      assert not example["heldout"]
      assert not any(cs.is_heldout(g["colour"], g["shape"]) for g in example["groups"])
  for example in examples["test"]:
    assert example["heldout"] and example["relation"] is None
    (group,) = example["groups"]
    assert cs.is_heldout(group["colour"], group["shape"])
  seen = {(g["colour"], g["shape"]) for e in examples["train"] for g in e["groups"]}
  assert {c for c, _ in seen} == set(cs.COLOURS)
  assert {s for _, s in seen} == set(cs.SHAPES)
  assert {cs.CLASS_NAMES[e["label"]] for e in examples["test"]} == {
      f"{c} {s}" for c, s in cs.HELDOUT}


def test_train_mixes_one_and_two_groups(examples):
  groups = [len(e["groups"]) for e in examples["train"]]
  assert 0.35 < np.mean(np.equal(groups, 1)) < 0.65
  relations = {e["relation"] for e in examples["train"]} - {None}
  assert relations == set(cs.RELATIONS)
  for example in examples["train"]:
    if len(example["groups"]) == 2:
      assert example["groups"][0]["colour"] != example["groups"][1]["colour"]
