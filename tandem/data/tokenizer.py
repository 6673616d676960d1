"""Text tokenizers for image-text training: fixed-length int32 token batches.

Two tokenizers with one interface (`vocab_size`, `pad_id`, `bos_id`, `eos_id`,
`encode_batch`, `decode`), picked by a string spec (`get_tokenizer`):

  "bytes"                       ByteTokenizer: UTF-8 bytes, no vocabulary file, so it
                                works offline and on any text (CPU-sized models and
                                tests; ByT5, Xue et al. 2022, shows bytes are enough).
  "sentencepiece:/path/model"   SentencePieceTokenizer: a trained SentencePiece model
                                (Kudo & Richardson 2018), as big_vision's SigLIP uses.

A sequence is [bos] + tokens + [eos], padded with `pad_id` to `max_len`. Text that
does not fit is cut (bos kept, content cut, eos still last) and flagged in the
returned `truncated` array, so a training loop can count it instead of crashing or
silently dropping the eos that CLIP-style text towers pool at. An empty text is
[bos, eos].

The padding contract: `pad_id` is never a token of any text, so `ids != pad_id` is
exactly the text (bos..eos), and the text tower (tandem/models/text.py) derives its
attention mask and EOS/mean pooling from it; no separate length array travels with
the ids. `vocab_size` is the number of ids the embedding needs, pad included:
  * bytes: pad 0, bos 1, eos 2, bytes 3..258 (vocab 259);
  * SentencePiece with a pad piece (`--pad_id=N` at training): that id;
  * SentencePiece without one (the trainer's default, `pad_id=-1`): pad is the id
    just past the model's pieces, `vocab_size = piece_size + 1`. Padding with 0,
    as before, padded with `<unk>`: every out-of-vocabulary character of a caption
    was then masked as padding and EOS pooling read a position before the EOS.
    Checkpoints trained with such a model have an embedding one row shorter and
    no longer load (they were trained with that bug); byte-level checkpoints and
    SentencePiece models with a pad piece keep their shapes.
"""
from typing import Sequence

import numpy as np


def _pack(token_lists: Sequence[Sequence[int]], max_len: int, pad_id: int,
          bos_id: int | None, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """[B, max_len] int32 of [bos] + tokens + [eos] + pads, and [B] bool truncated."""
  specials = 1 + (bos_id is not None)
  if max_len < specials:
    raise ValueError(f"max_len {max_len} leaves no room for bos/eos.")
  room = max_len - specials
  ids = np.full((len(token_lists), max_len), pad_id, np.int32)
  truncated = np.zeros(len(token_lists), bool)
  start = specials - 1
  if bos_id is not None:
    ids[:, 0] = bos_id
  for i, tokens in enumerate(token_lists):
    tokens = tokens[:room] if len(tokens) > room else tokens
    truncated[i] = len(tokens) < len(token_lists[i])
    ids[i, start:start + len(tokens)] = tokens
    ids[i, start + len(tokens)] = eos_id
  return ids, truncated


class ByteTokenizer:
  """UTF-8 bytes as tokens: pad 0, bos 1, eos 2, byte b -> b + 3 (vocab 259)."""

  pad_id = 0
  bos_id = 1
  eos_id = 2
  _OFFSET = 3
  vocab_size = 256 + _OFFSET

  def encode(self, text: str) -> np.ndarray:
    """Token ids of `text` without bos/eos."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self._OFFSET

  def encode_batch(self, texts: Sequence[str],
                   max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(int32 [B, max_len] ids, bool [B] truncated); see the module docstring."""
    return _pack([self.encode(t) for t in texts], max_len, self.pad_id,
                 self.bos_id, self.eos_id)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`, skipping pad/bos/eos; a multibyte character cut by
    truncation decodes to U+FFFD."""
    ids = np.asarray(ids).reshape(-1)
    data = (ids[ids >= self._OFFSET] - self._OFFSET).astype(np.uint8).tobytes()
    return data.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model file, with the interface of `ByteTokenizer`.

  bos/eos are the model's own ids, and pad too when the model has a pad piece.
  SentencePiece's trainer disables pad by default (`pad_id=-1`); then pad is
  `piece_size` (one id past the pieces, see the module docstring), never 0, which
  such models use for `<unk>`, a real token of any caption with out-of-vocabulary
  text. A model without bos gets no bos; a model without eos is refused (pooling
  needs it).
  """

  def __init__(self, model_file: str):
    try:
      import sentencepiece  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          "SentencePieceTokenizer needs the sentencepiece package: pip install"
          " sentencepiece (or pip install 'tandem[text]').") from e
    self.model_file = model_file
    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
    pieces = self._sp.get_piece_size()
    if self._sp.pad_id() >= 0:
      self.pad_id, self.vocab_size = self._sp.pad_id(), pieces
    else:  # An id encode never returns, with its own embedding row.
      self.pad_id, self.vocab_size = pieces, pieces + 1
    self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(f"SentencePiece model {model_file} has no eos id.")

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` without bos/eos."""
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str],
                   max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(int32 [B, max_len] ids, bool [B] truncated); see the module docstring."""
    return _pack(self._sp.encode(list(texts)), max_len, self.pad_id, self.bos_id,
                 self.eos_id)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of `ids`, skipping pad/bos/eos."""
    special = {self.pad_id, self.bos_id, self.eos_id}
    return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)
                            if int(i) not in special])


_SENTENCEPIECE = "sentencepiece:"


def get_tokenizer(spec: str) -> ByteTokenizer | SentencePieceTokenizer:
  """"bytes" or "sentencepiece:/path/to/model" -> a tokenizer."""
  if spec == "bytes":
    return ByteTokenizer()
  if spec.startswith(_SENTENCEPIECE) and len(spec) > len(_SENTENCEPIECE):
    return SentencePieceTokenizer(spec[len(_SENTENCEPIECE):])
  raise ValueError(f"Unknown tokenizer {spec!r}; choices: 'bytes',"
                   " 'sentencepiece:/path/to/model'.")
