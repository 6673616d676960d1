"""`captioned_shapes`: procedurally drawn shapes with captions, for CLIP/SigLIP tests.

Each 32x32 RGB image (CPU-sized) holds one or two groups of objects on a black
background. A group is 1-3 objects of one colour, shape and size; the two groups of
an image have different colours. The caption names every group's count, size,
colour and shape, and for two groups where the first lies relative to the second:

  "three large cyan crosses"
  "two small red circles left of one large blue square"

Captions are ASCII and at most 67 characters, so with the bytes tokenizer a
`max_len` of 69 never truncates.

Pixels and captions agree exactly, so tests can check one against the other:
- Drawing is pure NumPy with no anti-aliasing: every object pixel is exactly a
  `PALETTE` colour, every other pixel is (0, 0, 0).
- Objects never overlap or touch: their bounding boxes are at least one pixel apart
  (so each object is one connected component under 4- or 8-connectivity).
- Sizes are bounding boxes of `SIZE_PIXELS` (small 5, large 9 pixels); any small
  shape covers at most 25 pixels, any large one at least 45 (`shape_mask`).
- A relation is the one between the groups' pixel centroids ("left of" means the
  first group's centroid has the smaller x; "above", the smaller y), placed so it is
  unambiguous: the centroids differ along the named axis by at least 4 pixels and
  by at least twice as much as along the other axis. Layouts are drawn by rejection
  sampling; attribute draws that cannot be laid out are redrawn, so the most
  crowded images (three large objects in each group) are somewhat rarer than the
  uniform draw would make them.

Features: image (uint8 32x32x3, PNG), caption (Text), label (ClassLabel over all 24
`CLASS_NAMES`, "red circle", ...: the first group's composition), heldout (bool: a
group has a held-out composition), relation (ClassLabel "none" or `RELATIONS`),
groups (Sequence of colour, shape, size ClassLabels and an int64 count).

Held-out compositions (`HELDOUT`, one shape per colour, every colour and shape still
in training) never occur, in any group, in `train` or `validation`. `test` holds
only single-group images of held-out compositions: zero-shot classification on
compositions never seen in training.

Splits (`SPLIT_SIZES`, overridable with the builder's `split_sizes`): train 20000,
validation 2000 (train's distribution, for retrieval Recall@K), test 2000. Everything
is drawn from `procedural.SEED` and the example's (split, index), so a dataset is the
same on every machine and `CaptionedShapes.generate` reproduces any slice of it
without building.
"""
import functools

import numpy as np
import tensorflow_datasets as tfds

from tandem.data import procedural

IMAGE_SIZE = 32
PALETTE = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "cross": "crosses"}
SIZES = ("small", "large")
SIZE_PIXELS = {"small": 5, "large": 9}
COUNT_WORDS = ("one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
# Colour i holds out shape (i + 2) % 4: each shape is held out for one or two
# colours and still seen with four or five.
HELDOUT = tuple((colour, SHAPES[(i + 2) % len(SHAPES)])
                for i, colour in enumerate(COLOURS))
# Label = index of the first group's (colour, shape) in this list.
CLASS_NAMES = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
SPLIT_SIZES = {"train": 20000, "validation": 2000, "test": 2000}

_TRAIN_COMPOSITIONS = tuple((c, s) for c in COLOURS for s in SHAPES
                            if (c, s) not in HELDOUT)
_MIN_OFFSET = 4.0  # pixels between centroids along a relation's axis
_LAYOUT_TRIES = 20
_Region = tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)
_Corners = list[list[tuple[int, int]]]  # per group, per object: top-left (y, x)


def is_heldout(colour: str, shape: str) -> bool:
  return (colour, shape) in HELDOUT


def label_of(colour: str, shape: str) -> int:
  return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


@functools.cache
def shape_mask(shape: str, size: int) -> np.ndarray:
  """bool [size, size]: the shape's pixels, sampled at pixel centres."""
  y, x = np.mgrid[:size, :size] + 0.5
  half = size / 2
  if shape == "circle":
    mask = (y - half) ** 2 + (x - half) ** 2 <= half ** 2
  elif shape == "square":
    mask = np.ones((size, size), bool)
  elif shape == "triangle":  # apex up, base the full bottom row
    mask = np.abs(x - half) <= (y + 0.5) / 2
  elif shape == "cross":  # a plus sign, arms a third of the size thick
    arm = np.abs(np.stack([y, x]) - half) <= (size // 3) / 2
    mask = arm[0] | arm[1]
  else:
    raise ValueError(f"Unknown shape {shape!r}; choices: {SHAPES}.")
  mask.flags.writeable = False
  return mask


def caption_of(groups: list[dict], relation: str | None) -> str:
  """"two small red circles left of one large blue square"."""
  words = [f"{COUNT_WORDS[g['count'] - 1]} {g['size']} {g['colour']} "
           f"{g['shape'] if g['count'] == 1 else PLURALS[g['shape']]}"
           for g in groups]
  return f" {relation} ".join(words)


def _free_positions(blocked: np.ndarray, size: int, region: _Region) -> np.ndarray:
  """[K, 2] top-left (y, x) of size x size boxes in `region` missing `blocked`."""
  y0, y1, x0, x1 = region
  table = np.zeros((IMAGE_SIZE + 1, IMAGE_SIZE + 1), np.int32)
  table[1:, 1:] = blocked.cumsum(0).cumsum(1)
  ys = np.arange(y0, y1 - size + 1)[:, None]
  xs = np.arange(x0, x1 - size + 1)[None, :]
  if ys.size == 0 or xs.size == 0:
    return np.zeros((0, 2), np.int64)
  taken = (table[ys + size, xs + size] - table[ys, xs + size]
           - table[ys + size, xs] + table[ys, xs])
  return np.argwhere(taken == 0) + (y0, x0)


def _place(rng: np.random.Generator, groups: list[dict],
           regions: list[_Region]) -> _Corners | None:
  """Top-left corners for every object, boxes >= 1 pixel apart, or None."""
  blocked = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
  corners = []
  for group, region in zip(groups, regions):
    size = SIZE_PIXELS[group["size"]]
    corners.append([])
    for _ in range(group["count"]):
      free = _free_positions(blocked, size, region)
      if not len(free):
        return None
      y, x = free[rng.integers(len(free))]
      blocked[max(y - 1, 0):y + size + 1, max(x - 1, 0):x + size + 1] = True
      corners[-1].append((int(y), int(x)))
  return corners


def _centroid(group: dict, corners: list[tuple[int, int]]) -> np.ndarray:
  mask_centroid = np.argwhere(shape_mask(group["shape"], SIZE_PIXELS[group["size"]]))
  return np.mean(corners, axis=0) + mask_centroid.mean(axis=0)


def _layout(rng: np.random.Generator, groups: list[dict],
            relation: str | None) -> _Corners | None:
  """Object corners satisfying `relation` unambiguously, or None."""
  full = (0, IMAGE_SIZE, 0, IMAGE_SIZE)
  if relation is None:
    return _place(rng, groups, [full])
  axis = 1 if relation in ("left of", "right of") else 0  # 0: y, 1: x
  first_lower = relation in ("left of", "above")
  for _ in range(_LAYOUT_TRIES):
    # The first group gets one side of a random cut, the second the other side.
    cut = int(rng.integers(IMAGE_SIZE // 2 - 6, IMAGE_SIZE // 2 + 7))
    low, high = list(full), list(full)
    low[2 * axis + 1], high[2 * axis] = cut, cut
    regions = [tuple(low), tuple(high)] if first_lower else [tuple(high), tuple(low)]
    corners = _place(rng, groups, regions)
    if corners is None:
      continue
    delta = _centroid(groups[1], corners[1]) - _centroid(groups[0], corners[0])
    along, across = abs(delta[axis]), abs(delta[1 - axis])
    if along >= _MIN_OFFSET and along >= 2 * across:
      return corners
  return None


def _draw_groups(rng: np.random.Generator, split: str) -> tuple[list[dict], str | None]:
  def group(colour, shape):
    return dict(colour=colour, shape=shape, size=SIZES[rng.integers(len(SIZES))],
                count=int(rng.integers(1, 4)))

  if split == "test":
    return [group(*HELDOUT[rng.integers(len(HELDOUT))])], None
  first = group(*_TRAIN_COMPOSITIONS[rng.integers(len(_TRAIN_COMPOSITIONS))])
  if rng.random() < 0.5:
    return [first], None
  others = [cs for cs in _TRAIN_COMPOSITIONS if cs[0] != first["colour"]]
  second = group(*others[rng.integers(len(others))])
  return [first, second], RELATIONS[rng.integers(len(RELATIONS))]


def make_example(rng: np.random.Generator, split: str) -> dict:
  """One example: image uint8 [32, 32, 3], caption, label, groups, relation."""
  while True:
    groups, relation = _draw_groups(rng, split)
    corners = _layout(rng, groups, relation)
    if corners is not None:
      break
  image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for group, group_corners in zip(groups, corners):
    size = SIZE_PIXELS[group["size"]]
    mask = shape_mask(group["shape"], size)
    for y, x in group_corners:
      image[y:y + size, x:x + size][mask] = PALETTE[group["colour"]]
  return {
      "image": image,
      "caption": caption_of(groups, relation),
      "label": label_of(groups[0]["colour"], groups[0]["shape"]),
      "groups": groups,
      "relation": relation,
      "heldout": any(is_heldout(g["colour"], g["shape"]) for g in groups),
  }


class CaptionedShapes(procedural.ProceduralBuilder):
  """Coloured shapes with captions; held-out compositions in `test`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "32x32, 6 colours x 4 shapes x 2 sizes, 1-2 groups."}
  SPLIT_SIZES = SPLIT_SIZES
  make_example = staticmethod(make_example)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "caption": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            "heldout": tfds.features.Tensor(shape=(), dtype=np.bool_),
            "relation": tfds.features.ClassLabel(names=["none", *RELATIONS]),
            "groups": tfds.features.Sequence({
                "colour": tfds.features.ClassLabel(names=list(COLOURS)),
                "shape": tfds.features.ClassLabel(names=list(SHAPES)),
                "size": tfds.features.ClassLabel(names=list(SIZES)),
                "count": np.int64,
            }),
        }),
        supervised_keys=("image", "label"),
    )

  def encode(self, example: dict) -> dict:
    return super().encode({**example, "relation": example["relation"] or "none"})
