"""`clevr_like`: procedural CLEVR look-alike for VTAB's structured tasks, offline.

Each 64x96 RGB image (CLEVR's 2:3 aspect, CPU-sized) shows 3 to 10 cubes, spheres
and cylinders standing on a grey floor, seen in perspective. The features mirror TFDS
`clevr`'s where VTAB (google-research/task_adaptation) reads them, so its two CLEVR
label transforms (`labels.py`) apply unchanged to this data and to the real one:

- clevr count:    len(objects["size"]) - 3                       -> 8 classes
- clevr distance: d = min(objects["pixel_coords"][:, 2]), binned by the thresholds
  `CLEVR_DISTANCE_THRESHOLDS` = [0, 8, 8.5, 9, 9.5, 10, 100]      -> 6 classes

Features: `image` Image(shape=(64, 96, 3)); `objects` Sequence of `color`
ClassLabel(`COLORS`: CLEVR's 8 colour names in TFDS's order), `shape`
ClassLabel(cube, sphere, cylinder), `size` ClassLabel(small, large), `material`
ClassLabel(rubber, metal) (TFDS's names and orders), and `pixel_coords`
Tensor((3,), float32) = (x pixel, y pixel, depth) of the object's centre.

The scene (what makes the labels readable from the pixels):
- A pinhole camera at height `CAMERA_HEIGHT` looks along the floor; a floor point at
  depth Z appears on row `HORIZON_ROW + FOCAL * CAMERA_HEIGHT / Z` (60 at Z = 7, 18
  at Z = 18), so nearer objects stand lower in the image, and an object of world
  radius r (CLEVR's: large 0.7, small 0.35) reaches about `FOCAL * r / Z` pixels
  (2 to 10) either side of its centre: apparent size is proportional to 1 / depth.
  `pixel_coords` is the projection of the object's centre (its depth is the
  camera-frame Z, in CLEVR's units) in this 96x64 image's pixels.
- Spheres are shaded discs; cubes a front face and a lighter top face; cylinders a
  shaded body with a lighter top ellipse. Lambertian light from the upper left;
  metal objects get stronger contrast and a white specular highlight. Objects are
  drawn far to near (painter's algorithm) over a floor whose grey brightens towards
  the camera. No noise, no anti-aliasing.
- Objects never intersect on the floor, lie wholly inside the image, and every
  object keeps at least `MIN_VISIBLE` of its pixels unoccluded, so every object is
  countable. Layouts are drawn by rejection sampling.
- Label balance: the count is uniform over 3..10; the closest object's depth is drawn
  by first picking one of the 6 distance bins uniformly, then a depth uniformly in
  [7, 8), [8, 8.5), ..., [9.5, 10) or [10, 12); the other objects stand uniformly
  0 to 6 units behind it. So count and distance labels are uniform and independent.
  Colour, shape, size and material are uniform and independent per object. Objects
  are listed in random order.

What differs from the real CLEVR: the images are simple 2.5D drawings at 64x96, not
320x480 Blender renders (no shadows, reflections, or object rotation); depths range
7 to 18; there are no `file_name`, `question_answer`, `rotation` or `3d_coords`
features; splits are train 5000, validation 1000, test 2000 (`SPLIT_SIZES`,
overridable with the builder's `split_sizes`), and test has labels.

Example i of a split depends only on (`procedural.SEED`, split, i), so every machine
builds the same data and `ClevrLike.generate` reproduces any slice of it without
building.

Speed: the default build (8000 examples, `python -m tandem.data.prepare --dataset
clevr_like`) took 33 s of CPU time (49 s wall on a busy shared 2-core machine):
drawing ~2.3 ms a scene, PNG encoding and TFDS's serialisation ~1.5 ms.
"""
import math

import numpy as np
import tensorflow_datasets as tfds

from tandem.data import labels
from tandem.data import procedural

HEIGHT, WIDTH = 64, 96
# TFDS clevr's ClassLabel names and orders.
COLORS = ("gray", "blue", "brown", "yellow", "red", "green", "purple", "cyan")
SHAPES = ("cube", "sphere", "cylinder")
SIZES = ("small", "large")
MATERIALS = ("rubber", "metal")
# CLEVR's colours (its properties.json) and object radii.
RGB = {"gray": (87, 87, 87), "blue": (42, 75, 215), "brown": (129, 74, 25),
       "yellow": (255, 238, 51), "red": (173, 35, 35), "green": (29, 105, 20),
       "purple": (129, 38, 192), "cyan": (41, 208, 208)}
RADII = {"small": 0.35, "large": 0.7}
MIN_OBJECTS, MAX_OBJECTS = labels.CLEVR_MIN_OBJECTS, 10
SPLIT_SIZES = {"train": 5000, "validation": 1000, "test": 2000}

# Camera: floor row of depth Z = HORIZON_ROW + FOCAL * CAMERA_HEIGHT / Z.
FOCAL = 100.0  # pixels
CAMERA_HEIGHT = 4.8
HORIZON_ROW = -8.5
# Depth of the closest object: uniform within one of these, picked uniformly: the
# distance bins [7, 8), [8, 8.5), ..., [9.5, 10), [10, 12).
_BIN_EDGES = labels.CLEVR_DISTANCE_THRESHOLDS[1:-1]
CLOSEST_DEPTH_RANGES = tuple(zip((7.0, *_BIN_EDGES), (*_BIN_EDGES, 12.0)))
DEPTH_SPREAD = 6.0  # other objects are 0 to this far behind the closest
MIN_VISIBLE = 0.6  # least unoccluded fraction of any object's pixels
_FLOOR_GAP = 0.05  # world units between objects' footprints
_OBJECT_TRIES, _SCENE_TRIES = 40, 100


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
  norm = math.sqrt(sum(c * c for c in v))
  return tuple(c / norm for c in v)


# Directions: x right, y down (as image rows), z towards the camera.
_LIGHT = _unit((-0.45, -0.55, 0.70))  # towards the light: upper left, in front
_HALF = _unit((_LIGHT[0], _LIGHT[1], _LIGHT[2] + 1.0))  # halfway light-camera
_UP = (0.0, -0.8, 0.6)  # normal of faces looking up (image y is down)
_CUBE_HALF = 0.85  # cube front face half-side, in units of the radius in pixels
_CUBE_TOP = 0.45  # cube top face height, in units of the half-side
_CYLINDER_HALF, _CYLINDER_HEIGHT, _CYLINDER_ELLIPSE = 0.85, 1.6, 0.3


def floor_row(depth: float) -> float:
  """Image row (pixels from the top) where the floor at `depth` appears."""
  return HORIZON_ROW + FOCAL * CAMERA_HEIGHT / depth


def _background() -> np.ndarray:
  rows = np.arange(HEIGHT, dtype=np.float64)[:, None] + 0.5
  cols = np.arange(WIDTH, dtype=np.float64)[None, :] + 0.5
  value = 128.0 + 52.0 * rows / HEIGHT - 10.0 * ((cols - WIDTH / 2) / WIDTH) ** 2
  floor = np.stack([value, value, value * 1.03], -1)
  return np.clip(np.round(floor), 0, 255).astype(np.uint8)


BACKGROUND = _background()
BACKGROUND.flags.writeable = False


def _extent(shape: str, radius_px: float) -> tuple[float, float]:
  """(half-width, height) in pixels of an object's drawing."""
  if shape == "sphere":
    return radius_px, 2 * radius_px
  if shape == "cube":
    half = _CUBE_HALF * radius_px
    return half, half * (2 + _CUBE_TOP)
  half = _CYLINDER_HALF * radius_px
  return half, radius_px * _CYLINDER_HEIGHT + 2 * _CYLINDER_ELLIPSE * half


def _footprint(shape: str, radius: float) -> float:
  """Radius on the floor (world units) that no other object's may overlap."""
  return radius * (_CUBE_HALF * np.sqrt(2) if shape == "cube" else 1.0)


def _draw(obj: dict) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
  """One object's bounding box (rows, columns) and, in it, its mask (bool) and
  colours (float [..., 3] in 0..255)."""
  x0, ground, r = obj["x_px"], obj["ground_row"], obj["radius_px"]
  half, height = _extent(obj["shape"], r)
  r0, r1 = max(int(ground - height), 0), min(int(ground) + 1, HEIGHT)
  c0, c1 = max(int(x0 - half), 0), min(int(x0 + half) + 1, WIDTH)
  y = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
  dx = np.arange(c0, c1, dtype=np.float64)[None, :] + (0.5 - x0)
  if obj["shape"] == "sphere":
    nx, ny = dx / r, (y - (ground - r)) / r
    nn = nx * nx + ny * ny
    mask = nn <= 1.0
  elif obj["shape"] == "cube":
    face_top = ground - 2 * half
    mask = (np.abs(dx) <= half) & (y <= ground) & (y >= face_top - _CUBE_TOP * half)
  else:
    e = _CYLINDER_ELLIPSE * half
    bottom = ground - e
    cap = bottom - _CYLINDER_HEIGHT * r
    ex = dx / half
    in_cap = ex * ex + ((y - cap) / e) ** 2 <= 1.0
    in_base = ex * ex + ((y - bottom) / e) ** 2 <= 1.0
    mask = ((np.abs(ex) <= 1.0) & (y >= cap) & (y <= bottom)) | in_cap | in_base
  box = (slice(r0, r1), slice(c0, c1))

  # Brightness from surface normals (x right, y down, z towards the camera).
  metal = obj["material"] == "metal"
  if obj["shape"] == "sphere":
    light, glint = _lighting(nx, ny, np.sqrt(np.maximum(1.0 - nn, 0.0)), metal)
  elif obj["shape"] == "cube":  # the front faces the camera, slightly turned and
    on_top = y < face_top       # tilted down; the top faces up
    front = _lighting(0.15 * dx / half, 0.35, 1.0, metal)
    top = _lighting(*_UP, metal)
    light, glint = (np.where(on_top, t, f) for t, f in zip(top, front))
  else:
    side = _lighting(ex, 0.0, np.sqrt(np.maximum(1.0 - ex * ex, 0.0)), metal)
    top = _lighting(*_UP, metal)
    light, glint = (np.where(in_cap, t, f) for t, f in zip(top, side))
  light, glint = np.broadcast_arrays(light, glint, mask)[:2]
  colours = (np.asarray(RGB[obj["color"]], np.float64) * light[..., None]
             + 230.0 * glint[..., None])
  return box, mask, colours


def _lighting(nx, ny, nz, metal: bool):
  """(diffuse factor, specular) for unnormalised normals (arrays or floats).

  Elementwise arithmetic only (no BLAS, no pow), so every machine draws alike.
  """
  norm = np.sqrt(nx * nx + ny * ny + nz * nz)
  lambert = np.maximum((nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2]) / norm, 0.0)
  if not metal:
    return 0.45 + 0.65 * lambert, np.zeros_like(lambert)
  s = np.maximum((nx * _HALF[0] + ny * _HALF[1] + nz * _HALF[2]) / norm, 0.0)
  s8 = (s * s) * (s * s)
  s8 = s8 * s8
  return 0.15 + lambert, s8 * s8 * s8  # s ** 24


def _random_object(rng: np.random.Generator, depth: float) -> dict:
  draws = rng.random(5).tolist()
  color, shape, size, material = (int(u * n) for u, n in zip(
      draws, (len(COLORS), len(SHAPES), len(SIZES), len(MATERIALS))))
  obj = dict(color=COLORS[color], shape=SHAPES[shape], size=SIZES[size],
             material=MATERIALS[material], depth=depth, radius=RADII[SIZES[size]])
  obj["radius_px"] = FOCAL * obj["radius"] / depth
  obj["ground_row"] = floor_row(depth)
  half, _ = _extent(obj["shape"], obj["radius_px"])
  obj["x_px"] = half + 1.0 + (WIDTH - 2 * half - 2.0) * draws[4]
  obj["world_x"] = (obj["x_px"] - WIDTH / 2) * depth / FOCAL
  obj["footprint"] = _footprint(obj["shape"], obj["radius"])
  return obj


def _fits(new: dict, objects: list[dict]) -> bool:
  """Whether `new`'s footprint on the floor keeps clear of every object's."""
  return all(
      math.hypot(new["world_x"] - obj["world_x"], new["depth"] - obj["depth"])
      >= new["footprint"] + obj["footprint"] + _FLOOR_GAP for obj in objects)


def _layout(rng: np.random.Generator, count: int,
            depth_range: tuple[float, float]) -> list[dict] | None:
  """`count` objects, the closest at a depth in `depth_range`, or None.

  Each object also gets its drawing ("box", "mask", "colours" from `_draw`) and
  "visible" (bool [H, W]: its pixels no nearer object covers).
  """
  closest = float(rng.uniform(*depth_range))
  objects = []
  for i in range(count):
    for _ in range(_OBJECT_TRIES):
      depth = closest if i == 0 else closest + DEPTH_SPREAD * float(rng.random())
      obj = _random_object(rng, depth)
      if not _fits(obj, objects):
        continue
      box, mask, colours = _draw(obj)
      # Only pixels in the new object's box change: it hides the farther objects
      # there, and the nearer ones hide it.
      hidden = np.zeros_like(mask)
      for other in objects:
        if other["depth"] < depth:
          hidden |= other["mask_full"][box]
      visible = mask & ~hidden
      area = np.count_nonzero(mask)
      if np.count_nonzero(visible) < MIN_VISIBLE * area:
        continue
      farther = [o for o in objects if o["depth"] > depth]
      lost = [np.count_nonzero(o["visible"][box] & mask) for o in farther]
      if any(o["num_visible"] - n < MIN_VISIBLE * o["area"]
             for o, n in zip(farther, lost)):
        continue
      for other, n in zip(farther, lost):
        other["visible"][box] &= ~mask
        other["num_visible"] -= n
      obj.update(box=box, mask=mask, colours=colours, area=area,
                 num_visible=np.count_nonzero(visible))
      obj["mask_full"] = np.zeros((HEIGHT, WIDTH), bool)
      obj["mask_full"][box] = mask
      obj["visible"] = np.zeros((HEIGHT, WIDTH), bool)
      obj["visible"][box] = visible
      objects.append(obj)
      break
    else:
      return None
  return objects


def make_example(rng: np.random.Generator, split: str) -> dict:
  """One scene: "image" uint8 [64, 96, 3]; "objects" (the TFDS feature: "color",
  "shape", "size", "material" int64 [K], "pixel_coords" float32 [K, 3]); and, for
  tests, "object_map" int8 [64, 96] (each pixel's visible object, -1 for floor)
  and "masks" bool [K, 64, 96] (each object's whole drawing)."""
  del split  # every split is drawn alike
  count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
  depth_range = CLOSEST_DEPTH_RANGES[rng.integers(len(CLOSEST_DEPTH_RANGES))]
  for _ in range(_SCENE_TRIES):
    objects = _layout(rng, count, depth_range)
    if objects is not None:
      break
  else:
    raise RuntimeError(f"No layout of {count} objects in {_SCENE_TRIES} tries.")
  objects = [objects[i] for i in rng.permutation(count)]  # not in depth order

  image = BACKGROUND.astype(np.float64)
  object_map = np.full((HEIGHT, WIDTH), -1, np.int8)
  for i in np.argsort([-o["depth"] for o in objects], kind="stable"):  # far first
    box, mask = objects[i]["box"], objects[i]["mask"]
    image[box][mask] = objects[i]["colours"][mask]
    object_map[box][mask] = i
  image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return {
      "image": image,
      "objects": {
          "color": np.array([COLORS.index(o["color"]) for o in objects], np.int64),
          "shape": np.array([SHAPES.index(o["shape"]) for o in objects], np.int64),
          "size": np.array([SIZES.index(o["size"]) for o in objects], np.int64),
          "material": np.array([MATERIALS.index(o["material"]) for o in objects],
                               np.int64),
          "pixel_coords": np.array(
              [(o["x_px"], o["ground_row"] - o["radius_px"], o["depth"])
               for o in objects], np.float32),
      },
      "object_map": object_map,
      "masks": np.stack([o["mask_full"] for o in objects]),
  }


class ClevrLike(procedural.ProceduralBuilder):
  """CLEVR-like scenes with CLEVR's object features, drawn procedurally."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "64x96, 3-10 objects, balanced count and distance."}
  SPLIT_SIZES = SPLIT_SIZES
  make_example = staticmethod(make_example)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(HEIGHT, WIDTH, 3)),
            "objects": tfds.features.Sequence({
                "color": tfds.features.ClassLabel(names=list(COLORS)),
                "shape": tfds.features.ClassLabel(names=list(SHAPES)),
                "size": tfds.features.ClassLabel(names=list(SIZES)),
                "material": tfds.features.ClassLabel(names=list(MATERIALS)),
                "pixel_coords": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            }),
        }),
        homepage="https://cs.stanford.edu/people/jcjohns/clevr/",
    )
