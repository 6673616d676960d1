"""Order of the training stream: global batches that do not depend on the number
of processes, resume across process counts, no storage-order correlation, and
caption draws that do not depend on the processes either.

Processes are simulated by passing `process_index`/`process_count`; the global
batch is the concatenation of the processes' slices. Examples are identified by
their index in storage (the fake images are random, so their bytes are unique):
storage order, not the written order, is what a per-process `p::P` shard follows.
"""
import json

import numpy as np
import pytest

from tandem.data import input_pipeline
from tandem.data import tokenizer as tokenizer_lib

NUM_TRAIN = 320  # conftest's tiny fashion_mnist


@pytest.fixture(scope="module")
def stored(tiny_data_dir):
  """(data_dir, image bytes -> index of the example in storage)."""
  images, _ = input_pipeline.load_arrays("fashion_mnist", "train",
                                         data_dir=tiny_data_dir)
  index = {image.tobytes(): i for i, image in enumerate(images)}
  assert len(index) == NUM_TRAIN
  return tiny_data_dir, index


def _iterator(data_dir, split="train", **kwargs):
  args = dict(data_dir=data_dir, image_size=28, channels=1, seed=0)
  args.update(kwargs)
  return input_pipeline.make_train_iterator("fashion_mnist", split, **args)


def _global_batches(stored, process_count, num_batches, state=None, **kwargs):
  """[num_batches, G] storage indices: the processes' slices, concatenated."""
  data_dir, index = stored
  slices = []
  for process_index in range(process_count):
    it = _iterator(data_dir, process_index=process_index,
                   process_count=process_count, **kwargs)
    if state is not None:
      it.set_state(state)
    slices.append([[index[image.tobytes()] for image in next(it)["image"]]
                   for _ in range(num_batches)])
  return np.array([np.concatenate([s[b] for s in slices])
                   for b in range(num_batches)])


def test_global_batches_do_not_depend_on_process_count(stored):
  # 48 does not divide 320: batches 6 and 13 run across epoch boundaries.
  want = _global_batches(stored, 1, 15, global_batch_size=48)
  for process_count in (2, 4):
    np.testing.assert_array_equal(
        _global_batches(stored, process_count, 15, global_batch_size=48), want)


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (4, 2)])
def test_resume_with_another_process_count(stored, before, after):
  data_dir, _ = stored
  want = _global_batches(stored, before, 10, global_batch_size=48)
  # Training saves process 0's state (orbax's JsonSave writes on the primary host).
  it = _iterator(data_dir, global_batch_size=48, process_index=0,
                 process_count=before)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  resumed = _global_batches(stored, after, 6, state=state, global_batch_size=48)
  np.testing.assert_array_equal(resumed, want[4:])  # crosses the boundary at 6


@pytest.mark.parametrize("process_count", [2, 4])
def test_stored_neighbours_share_batches_only_by_chance(stored, process_count):
  batch_size, epochs = 32, 4
  batches = _global_batches(stored, process_count, epochs * NUM_TRAIN // batch_size,
                            global_batch_size=batch_size)
  batch_of = np.empty((epochs, NUM_TRAIN), int)  # [epoch, example] -> batch
  for b, batch in enumerate(batches):
    batch_of[b * batch_size // NUM_TRAIN, batch] = b
  together = np.mean(batch_of[:, :-1] == batch_of[:, 1:])
  # A uniform permutation puts i+1 in i's batch with probability (G-1)/(N-1),
  # ~0.097 here (std ~0.008 over these 1276 pairs); shards `p::P` shuffled alike
  # made it at least (P-1)/P.
  assert abs(together - (batch_size - 1) / (NUM_TRAIN - 1)) < 0.04, together


def test_epochs_cover_every_example_once_and_steps_are_disjoint(stored):
  num_train, batch_size, process_count = 318, 24, 4  # 318 % 4 != 0
  batches = _global_batches(stored, process_count, 27,
                            global_batch_size=batch_size, split="train[:318]")
  stream = batches.reshape(-1)
  epochs = [stream[:num_train], stream[num_train:2 * num_train]]
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(num_train))
  assert not np.array_equal(epochs[0], epochs[1])
  local = batch_size // process_count
  for b, batch in enumerate(batches):
    first, last = b * batch_size, (b + 1) * batch_size - 1
    if first // num_train == last // num_train:  # within one epoch
      parts = [set(batch[i * local:(i + 1) * local]) for i in range(process_count)]
      assert len(set().union(*parts)) == batch_size


def test_captions_do_not_depend_on_process_count(tiny_data_dir):
  byte_tokenizer = tokenizer_lib.ByteTokenizer()

  def global_texts(process_count):
    iterators = [_iterator(
        tiny_data_dir, global_batch_size=16, seed=3, process_index=i,
        process_count=process_count, text=dict(feature=None, tokenizer="bytes",
                                               max_len=64))
                 for i in range(process_count)]
    return [[byte_tokenizer.decode(row) for it in iterators
             for row in next(it)["text"]] for _ in range(3)]

  want = global_texts(1)
  assert len({t for batch in want for t in batch}) > 10  # > 1 template per class
  assert global_texts(2) == want
  assert global_texts(4) == want
