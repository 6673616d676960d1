"""Host input pipeline: prepared TFDS datasets -> numpy batches, without TensorFlow.

Reads any TFDS dataset prepared as array_record (ours or TFDS's own) through
`tfds.data_source` and feeds it with grain:

  grain.MapDataset.range(num_batches)            # global batch numbers 0, 1, 2, ...
    .map(batch -> example indices                # this process's slice of the
                  -> one batched read            #   global batch, seeded
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

Sharding: the global batches do not depend on the number of processes P. The
stream is the whole split, epoch after epoch, each epoch in one permutation drawn
from (seed, epoch); global batch b is positions [b*G, (b+1)*G) of that stream (G =
`global_batch_size`; batches run across epoch boundaries), and process p reads the
contiguous slice [p*G/P, (p+1)*G/P) of each one. Processes therefore see disjoint
examples within a step, and examples stored next to each other are no more likely
than any other pair to share a batch (a per-process shard `p::P` shuffled with a
shared seed put each block of P stored neighbours into one global batch, every
epoch). The state is the global batch number, so a checkpoint resumes the same
stream with any number of processes. Each process computes the whole permutation
(8 bytes per example, once per epoch) and looks up only its slice.

`load_arrays` reads a whole split into memory (linear-probe evaluation) with the same
decoding and the same `image_ops`.

Image-text data (CLIP/SigLIP): `make_train_iterator(..., text=dict(feature=...,
tokenizer=..., max_len=...))` adds "text" (int32 [B, max_len] token ids) and
"text_truncated" (bool [B]) to each batch. The caption is a dataset's Text feature
("caption", or one of several: "captions/text", see `records.py`), or, with
`feature=None`, a class-name prompt made from the label (`captions.py`). Which
caption or prompt is drawn comes from (seed, global batch number, position in the
global batch) alone, so resuming from `get_state()` reproduces the same batches,
with any number of processes. Datasets without a label feature (coco_captions) have
no "label" key in their batches. `load_image_text` reads a whole split with all its
captions, for retrieval and zero-shot evaluation.
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

from tandem.data import captions as captions_lib
from tandem.data import records
from tandem.data import tokenizer as tokenizer_lib

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
  except ImportError as e:
    # Some TFDS builders (coco_captions) need TensorFlow just to be constructed;
    # once prepared, their files describe them fully.
    try:
      builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise DatasetNotPreparedError(
          f"Dataset {name!r} is not prepared in {data_dir}, and TFDS's builder for"
          f" it cannot be loaded here ({e}). Prepare it where it can and copy it"
          f" there, or: {how}") from e
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


class _GlobalBatchSlices:
  """Global batch number -> (example indices of this process's slice, its offset).

  The stream is the whole split, epoch after epoch, each epoch in its own
  permutation drawn from (seed, epoch); global batch b is positions [b*G, (b+1)*G)
  of the stream, so batches run across epoch boundaries (as `repeat().batch()`
  would). Process p of P reads positions [p*G/P, (p+1)*G/P) of each global batch;
  a last, partial global batch of R examples (`num_examples` reached) is split the
  same way into P slices of R/P. Only the slice depends on p and P. Computed with
  one vectorised lookup per batch rather than per example.
  """

  def __init__(self, num_source: int, global_batch_size: int, seed: int,
               num_examples: int | None, process_index: int, process_count: int):
    self._num_source = num_source
    self._global_batch_size = global_batch_size
    self._seed = seed
    self._num_examples = num_examples  # total over all epochs; None = endless
    self._process_index = process_index
    self._process_count = process_count

  @functools.lru_cache(maxsize=4)
  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self._seed, epoch]).permutation(self._num_source)

  def __call__(self, batch: int) -> tuple[np.ndarray, int]:
    start = batch * self._global_batch_size
    size = self._global_batch_size
    if self._num_examples is not None:
      size = min(size, self._num_examples - start)
    local_size = size // self._process_count
    offset = self._process_index * local_size
    positions = np.arange(start + offset, start + offset + local_size)
    epochs, in_epoch_positions = np.divmod(positions, self._num_source)
    indices = np.empty(local_size, np.int64)
    for epoch in np.unique(epochs):
      in_epoch = epochs == epoch
      indices[in_epoch] = self._permutation(int(epoch))[in_epoch_positions[in_epoch]]
    return indices, offset


_TEXT_KEYS = ("feature", "tokenizer", "max_len")
_TEXT_SEED_SALT = 0x74657874  # keeps caption draws apart from the shuffle's streams


class _Captions:
  """Decoded slice of a global batch -> {"text": int32 [B, L], "text_truncated": [B]}.

  Draws one caption per example uniformly among its captions (or among its class's
  prompts, `captions.prompts`, made from the label), then tokenizes. The draws of
  global batch b are one stream seeded by (seed, b), with global position i taking
  its i-th draw, so they do not depend on how the batch is split over processes.
  """

  def __init__(self, text: Any, dataset: str, seed: int):
    text = dict(text)
    unknown = set(text) - set(_TEXT_KEYS)
    if unknown:
      raise ValueError(f"Unknown text option(s) {sorted(unknown)}; known:"
                       f" {_TEXT_KEYS}.")
    if "max_len" not in text:
      raise ValueError("text options need `max_len` (tokens per caption).")
    self.feature = text.get("feature") or None
    self._tokenizer = tokenizer_lib.get_tokenizer(text.get("tokenizer") or "bytes")
    self._max_len = int(text["max_len"])
    self._seed = (_TEXT_SEED_SALT, seed)
    # Fails now, not in a reader thread, for datasets without class names.
    self._prompts = (captions_lib.prompts(dataset) if self.feature is None
                     else None)

  def __call__(self, decoded: dict[str, Any], batch: int,
               offset: int) -> dict[str, np.ndarray]:
    # `sample_texts` takes one uniform double, i.e. one 64-bit PCG64 output, per
    # example: advancing by `offset` outputs gives the example at global position
    # offset + j the j-th draw after them, as if the whole batch were drawn here.
    rng = np.random.Generator(np.random.PCG64([*self._seed, batch]).advance(offset))
    if self.feature is None:
      texts = [self._prompts[label] for label in decoded["label"]]
    else:
      texts = decoded["texts"]
    ids, truncated = self._tokenizer.encode_batch(
        records.sample_texts(texts, rng), self._max_len)
    return {"text": ids, "text_truncated": truncated}


class _ReadBatch:
  """Global batch number -> this process's slice of it, as
  {"image": uint8 NHWC, "label": int32 N[, "text", ...]}."""

  def __init__(self, source, batch_slices: _GlobalBatchSlices,
               image_size: int, channels: int, captions: _Captions | None = None):
    self._source = source
    self._batch_slices = batch_slices
    self._decoder = records.ExampleDecoder(
        source.dataset_info, captions.feature if captions else None)
    self._image_size = image_size
    self._channels = channels
    self._captions = captions

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    indices, offset = self._batch_slices(batch)
    raw = self._source.__getitems__(indices.tolist())
    if self._captions is None:
      images, labels = self._decoder.decode_batch(raw, self._image_size,
                                                  self._channels)
      return {"image": images, "label": labels}
    decoded = self._decoder.decode(raw, self._image_size, self._channels)
    out = {k: v for k, v in decoded.items() if k != "texts"}
    out.update(self._captions(decoded, batch, offset))
    return out


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
    text: dict | None = None,
) -> grain.DatasetIterator:
  """Iterator of this process's slices of the global batches, with
  `get_state()`/`set_state(state)`.

  Yields {"image": uint8 [B, image_size, image_size, channels], "label": int32 [B]}
  with B = global_batch_size // process_count. The global batches depend only on
  (dataset, split, seed, global_batch_size): each epoch is one permutation of the
  split drawn from (seed, epoch), global batch b is positions [b*G, (b+1)*G) of the
  epochs one after another, and process p yields the contiguous slice
  [p*B, (p+1)*B) of it. The state is {"next_index": global batch number}, so it
  can be restored with a different `process_count` and continues the same stream.
  `process_index` and `process_count` default to JAX's; pass them to simulate
  other processes.

  Repeats forever unless `num_epochs`: then the stream holds num_epochs * len(split)
  examples, and its last, partial global batch of R < G examples is dropped
  (`drop_remainder`) or split into P slices of R/P (ValueError when R is not
  divisible by P).

  `text` (a dict or ConfigDict) makes image-text batches: `feature` is the caption's
  Text feature path ("caption", "captions/text"), or None/"" for class-name prompts
  from the label (`captions.prompts`); `tokenizer` a `tokenizer.get_tokenizer`
  spec (default "bytes"); `max_len` the token length. Batches then also hold "text"
  int32 [B, max_len] and "text_truncated" bool [B]; "label" only if the dataset has
  a label feature. Which caption or prompt an example gets depends on (seed, global
  batch number, its position in the global batch), not on the processes.
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
  source = _raw_source(name, split, data_dir)
  if not len(source):
    raise ValueError(f"{name} {split} is empty.")

  if num_epochs is None:
    num_examples, num_batches = None, sys.maxsize
  else:
    num_examples = num_epochs * len(source)
    remainder = num_examples % global_batch_size
    num_batches = num_examples // global_batch_size
    if remainder and not drop_remainder:
      if remainder % process_count:
        raise ValueError(
            f"The last global batch ({num_epochs} epochs of {len(source)} examples"
            f" in batches of {global_batch_size}) has {remainder} examples, which"
            f" cannot be split over {process_count} processes; set drop_remainder"
            " or change num_epochs or the batch size.")
      num_batches += 1
  batch_slices = _GlobalBatchSlices(len(source), global_batch_size, seed,
                                    num_examples, process_index, process_count)
  captions = None if text is None else _Captions(text, name, seed)
  ds = grain.MapDataset.range(num_batches).map(
      _ReadBatch(source, batch_slices, image_size, channels, captions))
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
  decoded = _load_split(name, split, data_dir, image_size, channels, None,
                        chunk_size, num_threads)
  return decoded["image"], decoded["label"]


def load_image_text(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    text_feature: str | None = "caption",
    chunk_size: int = 1024,
    num_threads: int = 2,
) -> tuple[np.ndarray, list[list[str]], np.ndarray | None]:
  """A whole split for retrieval / zero-shot: (uint8 [N, H, W, C] images, all
  captions of each image, int32 [N] labels or None when the dataset has none).

  `text_feature` as `make_train_iterator`'s text `feature`; None or "" gives each
  image all the class-name prompts of its label (`captions.prompts`). Order is the
  stored order, as in `load_arrays`.
  """
  decoded = _load_split(name, split, data_dir, image_size, channels,
                        text_feature or None, chunk_size, num_threads)
  labels = decoded.get("label")
  if text_feature:
    texts = decoded["texts"]
  else:
    if labels is None:
      raise ValueError(f"{name} has no label feature to make captions from.")
    prompts = captions_lib.prompts(name)
    texts = [list(prompts[label]) for label in labels]
  return decoded["image"], texts, labels


def _load_split(name: str, split: str, data_dir: str | None, image_size: int | None,
                channels: int | None, text_feature: str | None, chunk_size: int,
                num_threads: int) -> dict[str, Any]:
  """`ExampleDecoder.decode` of the whole split, read in chunks on threads."""
  source = _raw_source(name, split, data_dir)
  decoder = records.ExampleDecoder(source.dataset_info, text_feature)

  def read(start: int) -> dict[str, Any]:
    raw = source.__getitems__(list(range(start, min(start + chunk_size, len(source)))))
    return decoder.decode(raw, image_size, channels)

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    chunks = list(pool.map(read, range(0, len(source), chunk_size)))
  if not chunks:
    raise ValueError(f"{name} {split} is empty.")
  if len({c["image"].shape[1:] for c in chunks}) > 1:
    raise ValueError(f"{name} {split} has images of different sizes; pass"
                     " `image_size`.")
  decoded = {"image": np.concatenate([c["image"] for c in chunks])}
  if "label" in chunks[0]:
    decoded["label"] = np.concatenate([c["label"] for c in chunks])
  if "texts" in chunks[0]:
    decoded["texts"] = [t for c in chunks for t in c["texts"]]
  return decoded
