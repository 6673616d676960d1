"""Host input pipeline: prepared TFDS datasets -> numpy batches, without TensorFlow.

Reads any TFDS dataset prepared as array_record (ours or TFDS's own) through
`tfds.data_source` and feeds it with grain:

  grain.MapDataset.range(num_batches)            # batch numbers 0, 1, 2, ...
    .map(batch -> example indices                # this process's shard, reshuffled
                  -> one batched read            #   every epoch, seeded
                  -> decode + resize + channels) # vectorised over the batch
    .to_iter_dataset(ReadOptions(threads))       # prefetch on threads

Why batch numbers rather than grain's per-example `shuffle().repeat().batch()`: on
our CPUs that chain costs ~36 us of CPU per example in index bookkeeping alone (its
Feistel `index_shuffle` ~14 us), as much as reading and decoding the example; a
batch's indices from a NumPy permutation cost ~0.4 us per example. A whole batch is
then read with one `__getitems__` call and resized/converted with one vectorised
call (`image_ops`). The iterator's whole state is still one integer (grain's
`next_index`), so `get_state()`/`set_state()` resume exactly. Augmentation is not
done here: it runs on device, inside the jitted step.

Sharding: each process owns the examples `process_index::process_count` of the split
and shuffles only those, so processes never see the same example; the per-process
batch is `global_batch_size // process_count`.

`load_arrays` reads a whole split into memory (linear-probe evaluation) with the same
decoding and the same `image_ops`.
"""
import concurrent.futures
import functools
import os
import sys
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from tandem.data import records

DATA_DIR_ENV = "TANDEM_DATA_DIR"


class DatasetNotPreparedError(FileNotFoundError):
  """The dataset has not been prepared (built as array_record) in the data dir."""


def resolve_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else `$TANDEM_DATA_DIR`, else `~/tensorflow_datasets`."""
  data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets"
  return os.path.expanduser(os.fspath(data_dir))


def _prepared_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name` prepared in `data_dir`, or DatasetNotPreparedError."""
  how = (f"Prepare it with:\n  python -m tandem.data.prepare --dataset {name}"
         f" --data_dir {data_dir}")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared in {data_dir} (and TFDS has no builder"
        f" for it). {how}") from e
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f"Dataset {name!r} is not prepared in {data_dir} (looked for"
        f" {builder.data_path}). {how}")
  file_format = builder.info.file_format
  if file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(
        f"Dataset {name!r} in {builder.data_path} is stored as {file_format}, but"
        " random access needs array_record. Delete that directory and run:\n"
        f"  python -m tandem.data.prepare --dataset {name} --data_dir {data_dir}")
  return builder


def get_data_source(name: str, split: str, data_dir: str | None = None,
                    **as_data_source_kwargs: Any):
  """TFDS random-access data source for `split` (slicing allowed: "train[:50000]").

  Extra keyword arguments go to `builder.as_data_source` (e.g. `decoders`,
  `deserialize_method`).
  """
  builder = _prepared_builder(name, resolve_data_dir(data_dir))
  return builder.as_data_source(split=split, **as_data_source_kwargs)


def _raw_source(name: str, split: str, data_dir: str | None):
  return get_data_source(
      name, split, data_dir,
      deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)


class _ShuffledBatchIndices:
  """Batch number -> example indices, for an endless stream of reshuffled epochs.

  The stream is this process's shard, epoch after epoch, each epoch in its own
  permutation drawn from (seed, epoch); batch b is positions [b*B, (b+1)*B) of the
  stream, so batches run across epoch boundaries (as `repeat().batch()` would).
  Computed with one vectorised lookup per batch rather than per example.
  """

  def __init__(self, shard: np.ndarray, batch_size: int, seed: int,
               num_examples: int | None):
    self._shard = shard
    self._batch_size = batch_size
    self._seed = seed
    self._num_examples = num_examples  # total over all epochs; None = endless

  @functools.lru_cache(maxsize=4)
  def _permutation(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self._seed, epoch])
    return self._shard[rng.permutation(len(self._shard))]

  def __call__(self, batch: int) -> np.ndarray:
    start = batch * self._batch_size
    stop = start + self._batch_size
    if self._num_examples is not None:
      stop = min(stop, self._num_examples)
    epochs, offsets = np.divmod(np.arange(start, stop), len(self._shard))
    indices = np.empty(stop - start, np.int64)
    for epoch in np.unique(epochs):
      in_epoch = epochs == epoch
      indices[in_epoch] = self._permutation(int(epoch))[offsets[in_epoch]]
    return indices


class _ReadBatch:
  """Batch number -> {"image": uint8 NHWC, "label": int32 N}."""

  def __init__(self, source, batch_indices: _ShuffledBatchIndices,
               image_size: int, channels: int):
    self._source = source
    self._batch_indices = batch_indices
    self._decoder = records.ExampleDecoder(source.dataset_info)
    self._image_size = image_size
    self._channels = channels

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    raw = self._source.__getitems__(self._batch_indices(batch).tolist())
    images, labels = self._decoder.decode_batch(raw, self._image_size, self._channels)
    return {"image": images, "label": labels}


def make_train_iterator(
    name: str,
    split: str,
    *,
    data_dir: str | None,
    image_size: int,
    channels: int,
    global_batch_size: int,
    seed: int,
    drop_remainder: bool = True,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
    prefetch_batches: int = 4,
) -> grain.DatasetIterator:
  """Iterator of this process's batches, with `get_state()`/`set_state(state)`.

  Yields {"image": uint8 [B, image_size, image_size, channels], "label": int32 [B]}
  with B = global_batch_size // process_count. Repeats forever unless `num_epochs`
  (then `drop_remainder` decides the last, smaller batch). `process_index` and
  `process_count` default to JAX's; pass them to simulate other processes.
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible by"
                     f" the number of processes {process_count}.")
  local_batch_size = global_batch_size // process_count
  source = _raw_source(name, split, data_dir)
  if len(source) < process_count:
    raise ValueError(f"{name} {split} has {len(source)} examples, fewer than"
                     f" {process_count} processes.")

  shard = np.arange(process_index, len(source), process_count)
  if num_epochs is None:
    num_examples, num_batches = None, sys.maxsize
  else:
    num_examples = num_epochs * len(shard)
    num_batches = (num_examples // local_batch_size if drop_remainder
                   else -(-num_examples // local_batch_size))
  batch_indices = _ShuffledBatchIndices(shard, local_batch_size, seed, num_examples)
  ds = grain.MapDataset.range(num_batches).map(
      _ReadBatch(source, batch_indices, image_size, channels))
  read_options = grain.ReadOptions(num_threads=num_threads,
                                   prefetch_buffer_size=prefetch_batches)
  return iter(ds.to_iter_dataset(read_options))


def load_arrays(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    chunk_size: int = 1024,
    num_threads: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
  """The whole split in memory: (uint8 [N, H, W, C] images, int32 [N] labels).

  Without `image_size` the dataset's images must share one size. Order is the
  stored order (the same as `get_data_source(name, split)[i]`).
  """
  source = _raw_source(name, split, data_dir)
  decoder = records.ExampleDecoder(source.dataset_info)

  def read(start: int) -> tuple[np.ndarray, np.ndarray]:
    raw = source.__getitems__(list(range(start, min(start + chunk_size, len(source)))))
    return decoder.decode_batch(raw, image_size, channels)

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    chunks = list(pool.map(read, range(0, len(source), chunk_size)))
  if not chunks:
    raise ValueError(f"{name} {split} is empty.")
  if len({c[0].shape[1:] for c in chunks}) > 1:
    raise ValueError(f"{name} {split} has images of different sizes; pass"
                     " `image_size`.")
  images = np.concatenate([c[0] for c in chunks])
  labels = np.concatenate([c[1] for c in chunks])
  return images, labels
