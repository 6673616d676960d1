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

`load_arrays` reads a whole split into memory (linear-probe evaluation, VTAB tasks)
with the same decoding and the same `image_ops`; `subsample` draws a seeded subset
of such arrays.

Image-text data (CLIP/SigLIP): `make_train_iterator(..., text=dict(feature=...,
tokenizer=..., max_len=...))` adds "text" (int32 [B, max_len] token ids) to each
batch. The caption is a dataset's Text feature ("caption", or one of several:
"captions/text", see `records.py`), or, with `feature=None`, a class-name prompt
made from the label (`captions.py`). Which caption or prompt is drawn comes from
(seed, global batch number, position in the global batch) alone, so resuming from
`get_state()` reproduces the same batches, with any number of processes. Datasets
without a label feature (coco_captions) have no "label" key in their batches. The
iterator (`TrainIterator`) refuses a batch whose captions are all empty (a wrong
text feature, not data) and counts the captions cut to `max_len`.
`load_image_text` reads a whole split with all its captions, for retrieval and
zero-shot evaluation.
"""
import concurrent.futures
import functools
import os
import sys
from typing import Any, Callable, Mapping

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


class DataSourceError(RuntimeError):
  """A record of a prepared dataset could not be read or decoded (a file
  truncated, overwritten or damaged after it was prepared)."""


def _record_location(source, index: int) -> str:
  """"record R of FILE" for example `index` of a TFDS array_record source, from
  array_record's own (private) bookkeeping; "" where it has none."""
  try:
    reader, position = source.data_source._reader_idx_and_position(index)  # pylint: disable=protected-access
    return (f"record {position} of "
            f"{source.data_source._read_instructions[reader].filename}")  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    return ""


def source_error(source, name: str, indices, error: Exception,
                 decode=lambda raw: None) -> DataSourceError:
  """A DataSourceError naming the first of `indices` that cannot be read (or
  `decode`d: a function of one raw record), the record and file it is in, and how
  to recover; `error` is what the batched read or decode raised."""
  bad, cause = None, error
  for index in indices:  # One at a time, to find the culprit.
    try:
      decode(source[int(index)])
    except Exception as e:  # pylint: disable=broad-except
      bad, cause = int(index), e
      break
  where = "" if bad is None else f" example {bad}"
  location = "" if bad is None else _record_location(source, bad)
  location = f" ({location})" if location else ""
  text = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
  return DataSourceError(
      f"Could not read{where} of {name} {source.split}{location}: "
      f"{type(cause).__name__}: {text}. The dataset's files changed or were "
      "damaged after they were prepared (truncated? overwritten?). Prepare it "
      f"again (python -m tandem.data.prepare --dataset {name}), then run the same "
      "command to resume from the last checkpoint.")


def resolve_data_dir(data_dir: str | None = None) -> str:
  """`data_dir`, else `$TANDEM_DATA_DIR`, else `~/tensorflow_datasets`."""
  data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or "~/tensorflow_datasets"
  return os.path.expanduser(os.fspath(data_dir))


def prepared_builder(name: str, data_dir: str | None = None
                     ) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name` prepared in `data_dir` (see `resolve_data_dir`), or
  DatasetNotPreparedError saying how to prepare it."""
  data_dir = resolve_data_dir(data_dir)
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
  return prepared_builder(name, data_dir).as_data_source(split=split,
                                                        **as_data_source_kwargs)


def _raw_source(builder: tfds.core.DatasetBuilder, split: str):
  return builder.as_data_source(
      split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)


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


class EmptyCaptionsError(ValueError):
  """Every caption of a batch is empty: a wrong text feature, not data."""


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
    self._feature_option = text.get("feature")
    self._dataset = dataset
    self._tokenizer = tokenizer_lib.get_tokenizer(text.get("tokenizer") or "bytes")
    self._special_ids = [i for i in (self._tokenizer.pad_id, self._tokenizer.bos_id,
                                     self._tokenizer.eos_id) if i is not None]
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

  def check_not_empty(self, ids: np.ndarray, batch: int) -> None:
    """Refuses token ids of only pad/bos/eos: every caption empty."""
    if not np.isin(ids, self._special_ids, invert=True).any():
      raise EmptyCaptionsError(
          f"Every caption of the batch at step {batch} is empty (dataset "
          f"{self._dataset!r}, text feature {self._feature_option!r}). Point "
          "--config.input.text.feature at the dataset's caption feature (e.g. "
          "'caption' or 'captions/text'), or set it to '' to caption a labelled "
          "dataset with its class names.")


def _sum_over_processes(count: int) -> int:
  """The sum of `count` over all processes: a collective every process calls."""
  if jax.process_count() == 1:
    return count
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.sum(multihost_utils.process_allgather(np.int64(count))))


class TrainIterator:
  """`make_train_iterator`'s iterator, over the batch reader's grain iterator.

  `get_state()` is {"next_index": global batch number}; `metrics()` the data's own
  training metrics. With captions it raises EmptyCaptionsError on a batch whose
  captions are all empty, naming its global batch number (the train step), and
  counts the captions cut to `max_len`: `get_state()` then also holds
  "captions_truncated", the count over all processes, and `metrics()` reports it;
  both are then collectives that every process must call (the train loop does, at
  each save and log step). `set_state` gives a restored count to process 0 alone, so
  that resuming with another number of processes counts every caption once.
  """

  def __init__(self, batches: grain.DatasetIterator, captions: _Captions | None,
               process_index: int):
    self._batches = batches
    self._captions = captions
    self._process_index = process_index
    self._next_batch = 0  # global batch number of the next batch
    self._truncated = 0  # this process's count (plus the restored total on 0)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._batches)
    if self._captions is not None:
      truncated = batch.pop("text_truncated")
      self._captions.check_not_empty(batch["text"], self._next_batch)
      self._truncated += int(np.sum(truncated))
    self._next_batch += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    state = dict(self._batches.get_state())
    if self._captions is not None:
      state["captions_truncated"] = _sum_over_processes(self._truncated)
    return state

  def set_state(self, state: Mapping[str, Any]) -> None:
    state = dict(state)
    total = int(state.pop("captions_truncated", 0))
    self._truncated = total if self._process_index == 0 else 0
    self._batches.set_state(state)
    self._next_batch = int(state["next_index"])

  def metrics(self) -> dict[str, int]:
    """{"data/captions_truncated": captions cut so far, over all processes} with
    captions, else {}."""
    if self._captions is None:
      return {}
    return {"data/captions_truncated": _sum_over_processes(self._truncated)}


class _ReadBatch:
  """Global batch number -> this process's slice of it, as
  {"image": uint8 NHWC, "label": int32 N[, "text", ...]}."""

  def __init__(self, source, batch_slices: _GlobalBatchSlices,
               image_size: int, channels: int, captions: _Captions | None = None,
               name: str = ""):
    self._source = source
    self._name = name
    self._batch_slices = batch_slices
    self._decoder = records.ExampleDecoder(
        source.dataset_info, captions.feature if captions else None)
    self._image_size = image_size
    self._channels = channels
    self._captions = captions

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    indices, offset = self._batch_slices(batch)
    decode = (self._decoder.decode_batch if self._captions is None
              else self._decoder.decode)
    try:
      decoded = decode(self._source.__getitems__(indices.tolist()),
                       self._image_size, self._channels)
    except Exception as e:  # From array_record (a damaged file) or the parser.
      raise source_error(
          self._source, self._name, indices, e,
          lambda raw: decode([raw], self._image_size, self._channels)) from e
    if self._captions is None:
      images, labels = decoded
      return {"image": images, "label": labels}
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
) -> TrainIterator:
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
  int32 [B, max_len]; "label" only if the dataset has a label feature. Which caption
  or prompt an example gets depends on (seed, global batch number, its position in
  the global batch), not on the processes. The iterator's `get_state()` and
  `metrics()` are then collectives (`TrainIterator`).
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
  source = _raw_source(prepared_builder(name, data_dir), split)
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
      _ReadBatch(source, batch_slices, image_size, channels, captions, name))
  read_options = grain.ReadOptions(num_threads=num_threads,
                                   prefetch_buffer_size=prefetch_batches)
  batches = iter(ds.to_iter_dataset(read_options))
  return TrainIterator(batches, captions, process_index)


def load_arrays(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    label: str | Callable[[Mapping[str, Any]], int] | None = None,
    image_key: str | None = None,
    pixel_scale: int = 1,
    chunk_size: int = 1024,
    num_threads: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
  """The whole split in memory: (uint8 [N, H, W, C] images, int32 [N] labels).

  Without `image_size` the dataset's images must share one size. Order is the
  stored order (the same as `get_data_source(name, split)[i]`).

  By default the image and label are the dataset's supervised ones, read by the
  fast record decoder (`records.ExampleDecoder`). `label` (a feature name, or
  fn(example) -> int: VTAB's structured tasks, `labels.py`), `image_key` and
  `pixel_scale` (stored pixel values are multiplied by it, capped at 255, before
  resizing: dSprites stores 0 or 1) choose otherwise; then, unless they name just
  what that decoder reads, TFDS deserializes the examples (NumPy, no TensorFlow;
  slower) with the image left encoded, and the images are decoded as that decoder
  does (`records.decode_images`).
  """
  builder = prepared_builder(name, data_dir)
  if pixel_scale == 1 and _decoder_reads(builder.info, image_key, label):
    decoded = _load_split(_raw_source(builder, split), f"{name} {split}", image_size,
                          channels, None, chunk_size, num_threads)
  else:
    decoded = _load_deserialized(builder, f"{name} {split}", split, label, image_key,
                                 pixel_scale, image_size, channels, chunk_size,
                                 num_threads)
  return decoded["image"], decoded["label"]


def subsample(max_examples: int, seed: int, *arrays) -> tuple:
  """`arrays` (NumPy arrays or lists of one length) restricted to `max_examples`
  examples drawn without replacement with `seed`, kept in order; unchanged when
  `max_examples` is 0 or at least their length."""
  n = len(arrays[0])
  if not max_examples or max_examples >= n:
    return arrays
  keep = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
  return tuple(a[keep] if isinstance(a, np.ndarray) else [a[i] for i in keep]
               for a in arrays)


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
  source = _raw_source(prepared_builder(name, data_dir), split)
  decoded = _load_split(source, f"{name} {split}", image_size, channels,
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


def _decoder_reads(info: tfds.core.DatasetInfo, image_key: str | None,
                   label: str | Callable | None) -> bool:
  """Whether `records.ExampleDecoder` reads this image and label (None: its own)."""
  if image_key is None and label is None:
    return True
  if callable(label):
    return False
  try:
    decoder = records.ExampleDecoder(info)
  except ValueError:  # e.g. no "label" feature: not a plain classification dataset
    return False
  return ((image_key or decoder.image_key, label or decoder.label_key)
          == (decoder.image_key, decoder.label_key))


def _load_split(source, what: str, image_size: int | None, channels: int | None,
                text_feature: str | None, chunk_size: int,
                num_threads: int) -> dict[str, Any]:
  """`ExampleDecoder.decode` of a whole raw source, read in chunks on threads."""
  decoder = records.ExampleDecoder(source.dataset_info, text_feature)

  def read(start: int) -> dict[str, Any]:
    raw = source.__getitems__(list(range(start, min(start + chunk_size, len(source)))))
    return decoder.decode(raw, image_size, channels)

  return _read_chunks(read, len(source), chunk_size, num_threads, what)


def _load_deserialized(builder: tfds.core.DatasetBuilder, what: str, split: str,
                       label: str | Callable | None, image_key: str | None,
                       pixel_scale: int, image_size: int | None,
                       channels: int | None, chunk_size: int,
                       num_threads: int) -> dict[str, np.ndarray]:
  """The split's examples deserialized by TFDS (image left encoded), labelled by
  `label` (None: the supervised label)."""
  if image_key is None or label is None:  # the supervised ones
    decoder = records.ExampleDecoder(builder.info)
    image_key, label = image_key or decoder.image_key, label or decoder.label_key
  label_fn = label if callable(label) else lambda example: example[label]
  source = builder.as_data_source(
      split=split, decoders={image_key: tfds.decode.SkipDecoding()})
  stored_channels = builder.info.features[image_key].shape[-1]

  def read(start: int) -> dict[str, np.ndarray]:
    examples = source.__getitems__(
        list(range(start, min(start + chunk_size, len(source)))))
    return {"image": records.decode_images([ex[image_key] for ex in examples],
                                           stored_channels, image_size, channels,
                                           pixel_scale),
            "label": np.array([label_fn(ex) for ex in examples], np.int32)}

  return _read_chunks(read, len(source), chunk_size, num_threads, what)


def _read_chunks(read: Callable[[int], dict[str, Any]], num_examples: int,
                 chunk_size: int, num_threads: int, what: str) -> dict[str, Any]:
  """`read(start)` of each chunk of `num_examples`, on threads, concatenated."""
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    chunks = list(pool.map(read, range(0, num_examples, chunk_size)))
  if not chunks:
    raise ValueError(f"{what} is empty.")
  if len({c["image"].shape[1:] for c in chunks}) > 1:
    raise ValueError(f"{what} has images of different sizes; pass `image_size`.")
  decoded = {"image": np.concatenate([c["image"] for c in chunks])}
  if "label" in chunks[0]:
    decoded["label"] = np.concatenate([c["label"] for c in chunks])
  if "texts" in chunks[0]:
    decoded["texts"] = [t for c in chunks for t in c["texts"]]
  return decoded
