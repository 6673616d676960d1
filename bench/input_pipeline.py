"""The host input pipeline on its own: images/s per core, and cores per accelerator.

    python bench/input_pipeline.py [--data_dir DIR] [--json FILE]

Reads prepared TFDS datasets through `tandem.data.input_pipeline.make_train_iterator`
(array_record -> one batched read -> decode -> resize -> uint8 batches, what
training consumes; augmentation runs on the accelerator, inside the step) and
reports, per dataset, image size and reader threads: images/s, the process's CPU
seconds per image, and images/s per busy core (images / CPU seconds), timed from
the iterator's creation (start-up included; the reader threads' work still in
flight at the end is counted too, so per-core rates err low).

- `fashion_mnist` at 28 and `cifar10_subset` at 32: the prepared datasets
  (`make fashion-mnist`; `python -m tandem.data.prepare --dataset cifar10_subset`).
- 224 from encoded images: `bench_jpeg`, a TFDS dataset this script builds once in
  `--jpeg_dir` (default /tmp/tandem_bench_jpeg) with ImageNet-like JPEGs: 1,024
  images of 300-500 x 300-500 pixels (ImageNet's train images average about 400 x
  350), smooth random content plus noise, quality 90, about ImageNet's bytes per
  pixel. They are decoded (OpenCV when installed, else Pillow: `tandem/data/
  records.py`) and resized to 224 x 224, as `imagenet2012` is.

Then: how many such cores one accelerator needs at `--accelerator_rate` images/s
(default 3272: MAE ViT-B/16 on one H200, BENCHMARKS.md), from the 224 rate.
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tandem import host_malloc  # pylint: disable=g-import-not-at-top
host_malloc.use_tcmalloc()  # As the training programs run (may re-execute).

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import report  # pylint: disable=g-import-not-at-top  (bench/report.py)
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top


class BenchJpeg(tfds.core.GeneratorBasedBuilder):
  """ImageNet-like JPEGs of random sizes, for timing decode + resize."""

  VERSION = tfds.core.Version("1.0.0")
  NUM_EXAMPLES = 1024

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3),
                                         encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=1000)}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    for i in range(self.NUM_EXAMPLES):
      h, w = rng.integers(300, 501, size=2)
      coarse = rng.integers(0, 256, size=(h // 32 + 2, w // 32 + 2, 3), dtype=np.uint8)
      smooth = np.asarray(Image.fromarray(coarse).resize((int(w), int(h)),
                                                         Image.BICUBIC), np.int16)
      noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
      yield i, {"image": buffer.getvalue(), "label": int(rng.integers(1000))}


def prepare_jpeg(jpeg_dir: str) -> str:
  builder = BenchJpeg(data_dir=jpeg_dir, file_format="array_record")
  if not builder.is_prepared():
    print(f"Building {BenchJpeg.NUM_EXAMPLES} JPEGs in {jpeg_dir} (once).")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return jpeg_dir


def time_pipeline(name, data_dir, image_size, channels, threads, batch, batches):
  from tandem.data import input_pipeline  # pylint: disable=g-import-not-at-top
  # Timed from the iterator's creation, with no warm-up batch: while a warm-up
  # batch is read, the reader threads already prefetch the next ones, so a timer
  # started after it misses their work (with 1 timed batch of 256 at 224 px that
  # reported 866 images/s per core instead of ~200). Start-up is counted instead.
  usage = lambda: resource.getrusage(resource.RUSAGE_SELF)
  before, start = usage(), time.perf_counter()
  it = input_pipeline.make_train_iterator(
      name, "train", data_dir=data_dir, image_size=image_size, channels=channels,
      global_batch_size=batch, seed=0, process_index=0, process_count=1,
      num_threads=threads)
  for _ in range(batches):
    out = next(it)
  wall = time.perf_counter() - start
  after = usage()
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  images = batch * batches
  assert out["image"].shape == (batch, image_size, image_size, channels), (
      out["image"].shape)
  return {"dataset": name, "image_size": image_size, "threads": threads,
          "batch": batch, "images": images, "images_per_s": images / wall,
          "cpu_ms_per_image": 1000 * cpu / images, "cores_busy": cpu / wall,
          "images_per_s_per_core": images / cpu}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--jpeg_dir", default="/tmp/tandem_bench_jpeg")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--images", type=int, default=8192,
                      help="Timed images per setting (28/32 px); 224 px: half.")
  parser.add_argument("--threads", default="1,2")
  parser.add_argument("--accelerator_rate", type=float, default=3272.0)
  parser.add_argument("--json", default=None, help="Append the records here.")
  args = parser.parse_args()
  try:
    import cv2  # pylint: disable=g-import-not-at-top,unused-import
    decoder = "OpenCV " + cv2.__version__
  except ImportError:
    import PIL  # pylint: disable=g-import-not-at-top
    decoder = "Pillow " + PIL.__version__
  jpeg_dir = prepare_jpeg(args.jpeg_dir)
  settings = [("fashion_mnist", args.data_dir, 28, 1, args.images),
              ("cifar10_subset", args.data_dir, 32, 3, args.images),
              ("bench_jpeg", jpeg_dir, 224, 3, args.images // 2)]
  records = []
  print(f"JPEG decoder: {decoder}; {os.cpu_count()} CPUs; load average "
        f"{os.getloadavg()[0]:.2f}")
  for name, data_dir, size, channels, images in settings:
    for threads in (int(t) for t in args.threads.split(",")):
      r = time_pipeline(name, data_dir, size, channels, threads, args.batch,
                        max(1, images // args.batch))
      r["decoder"] = decoder
      records.append(r)
      print(f"{name} {size}px, {threads} thread(s): {r['images_per_s']:,.0f} images/s,"
            f" {r['cpu_ms_per_image']:.3f} CPU ms/image ({r['cores_busy']:.2f} cores"
            f" busy) = {r['images_per_s_per_core']:,.0f} images/s per core")
  per_core = max(r["images_per_s_per_core"] for r in records
                 if r["image_size"] == 224)
  cores = args.accelerator_rate / per_core
  print(f"At {args.accelerator_rate:,.0f} images/s (one accelerator), 224 px from "
        f"JPEG needs {cores:.1f} cores of this machine ({per_core:,.0f} images/s "
        "per core).")
  records.append({"accelerator_rate": args.accelerator_rate,
                  "cores_per_accelerator_224": cores})
  report.append(args.json, "input_pipeline", records)


if __name__ == "__main__":
  main()
