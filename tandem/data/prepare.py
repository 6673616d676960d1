"""Build a dataset once, as array_record, so the input pipeline can read it.

  python -m tandem.data.prepare --dataset fashion_mnist [--data_dir DIR]

Our own builders (`fashion_mnist` from local IDX files, `cifar10_subset` from the
shared npz, `captioned_shapes`, `dsprites_like` and `clevr_like` drawn
procedurally) are used for their names; any other name goes to TFDS's registered
builder (which downloads). No TensorFlow is needed: TFDS writes array_record
through `array_record` and protobuf. A dataset already prepared is left as it is,
so a second call returns at once.
"""
from absl import app
from absl import flags
from absl import logging
import tensorflow_datasets as tfds

from tandem.data import captioned_shapes
from tandem.data import cifar10_subset
from tandem.data import clevr_like
from tandem.data import dsprites_like
from tandem.data import fashion_mnist
from tandem.data import input_pipeline

# Datasets built by our own code; looked up before TFDS's registry.
BUILDERS = {
    "fashion_mnist": fashion_mnist.FashionMnist,
    "cifar10_subset": cifar10_subset.Cifar10Subset,
    "captioned_shapes": captioned_shapes.CaptionedShapes,
    "dsprites_like": dsprites_like.DspritesLike,
    "clevr_like": clevr_like.ClevrLike,
}


def prepare(name: str, data_dir: str | None = None) -> str:
  """Prepares `name` in `data_dir` (see `resolve_data_dir`); returns its directory."""
  data_dir = input_pipeline.resolve_data_dir(data_dir)
  if name in BUILDERS:
    builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
  else:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    logging.info("%s is already prepared in %s.", name, builder.data_dir)
  else:
    # Build locally rather than fetching TFDS's pre-built copies from GCS.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return str(builder.data_dir)


_DATASET = flags.DEFINE_string(
    "dataset", None, "TFDS name, e.g. fashion_mnist, cifar10_subset, captioned_shapes,"
    " dsprites_like, clevr_like, cifar10.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Default: $TANDEM_DATA_DIR, else ~/tensorflow_datasets.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(prepare(_DATASET.value, _DATA_DIR.value))


if __name__ == "__main__":
  flags.mark_flag_as_required("dataset")
  app.run(main)
