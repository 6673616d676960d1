"""Tokenizers: byte-level layout, round trips, truncation, SentencePiece via a tiny
model trained here (offline), and the spec strings of `get_tokenizer`."""
import sys

import numpy as np
import pytest

from tandem.data import captioned_shapes
from tandem.data import tokenizer as tokenizer_lib

TEXTS = ["two small red circles left of one large blue square",
         "héllo wörld — 猫 🐈", ""]


def test_byte_tokenizer_layout():
  tok = tokenizer_lib.ByteTokenizer()
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 259)
  ids, truncated = tok.encode_batch(["ab", ""], max_len=6)
  assert ids.dtype == np.int32 and ids.shape == (2, 6)
  assert truncated.dtype == bool and truncated.shape == (2,) and not truncated.any()
  np.testing.assert_array_equal(ids, [[1, ord("a") + 3, ord("b") + 3, 2, 0, 0],
                                      [1, 2, 0, 0, 0, 0]])


def test_byte_tokenizer_round_trips_ascii_and_non_ascii():
  tok = tokenizer_lib.ByteTokenizer()
  ids, truncated = tok.encode_batch(TEXTS, max_len=80)
  assert not truncated.any() and ids.max() < tok.vocab_size
  assert [tok.decode(row) for row in ids] == TEXTS
  assert (ids[:, 0] == tok.bos_id).all()
  lengths = [len(t.encode("utf-8")) for t in TEXTS]
  for row, n in zip(ids, lengths):
    assert row[n + 1] == tok.eos_id and (row[n + 2:] == tok.pad_id).all()


def test_byte_tokenizer_truncates_flags_and_keeps_eos():
  tok = tokenizer_lib.ByteTokenizer()
  ids, truncated = tok.encode_batch(["abcdefgh", "abcdef", "a猫猫"], max_len=8)
  np.testing.assert_array_equal(truncated, [True, False, True])
  assert (ids[:, 0] == tok.bos_id).all() and (ids[[0, 2], -1] == tok.eos_id).all()
  assert tok.decode(ids[0]) == "abcdef"
  assert tok.decode(ids[1]) == "abcdef" and ids[1, -1] == tok.eos_id
  # 6 bytes of room: the second character loses its last byte and decodes to U+FFFD.
  assert tok.decode(ids[2]) == "a猫\ufffd"
  with pytest.raises(ValueError, match="max_len"):
    tok.encode_batch(["a"], max_len=1)


@pytest.fixture(scope="module")
def sentencepiece_models(tmp_path_factory):
  """Two tiny models trained on generated captions: default ids, and with a pad."""
  sentencepiece = pytest.importorskip("sentencepiece")
  directory = tmp_path_factory.mktemp("sentencepiece")
  captions = [e["caption"]
              for e in captioned_shapes.CaptionedShapes.generate("train", 0, 300)]
  models = {}
  for name, ids in (("default", {}),
                    ("padded", dict(pad_id=0, unk_id=1, bos_id=2, eos_id=3))):
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_prefix=str(directory / name),
        vocab_size=60, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2, **ids)
    models[name] = str(directory / f"{name}.model")
  return models, captions


def test_sentencepiece_round_trip(sentencepiece_models):
  models, captions = sentencepiece_models
  tok = tokenizer_lib.get_tokenizer("sentencepiece:" + models["padded"])
  assert isinstance(tok, tokenizer_lib.SentencePieceTokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  texts = captions[:20] + [""]
  ids, truncated = tok.encode_batch(texts, max_len=48)
  assert ids.shape == (21, 48) and ids.dtype == np.int32 and not truncated.any()
  assert ids.max() < tok.vocab_size and (ids[:, 0] == tok.bos_id).all()
  assert [tok.decode(row) for row in ids] == texts
  np.testing.assert_array_equal(ids[-1, :3], [tok.bos_id, tok.eos_id, tok.pad_id])
  ids, truncated = tok.encode_batch(captions[:5], max_len=4)
  assert truncated.all() and (ids[:, -1] == tok.eos_id).all()


def test_sentencepiece_without_pad_pads_with_an_id_no_text_has(sentencepiece_models):
  """The trainer's defaults have no pad and `<unk>` = 0: padding must not be 0, or
  the text tower masks every out-of-vocabulary character as padding."""
  models, captions = sentencepiece_models
  tok = tokenizer_lib.SentencePieceTokenizer(models["default"])
  pieces = tok._sp.get_piece_size()
  assert tok._sp.unk_id() == 0 and tok._sp.pad_id() == -1
  assert (tok.bos_id, tok.eos_id) == (1, 2)  # SentencePiece's defaults
  assert (tok.pad_id, tok.vocab_size) == (pieces, pieces + 1)
  texts = ["☃ one small red circle", "one 猫 small ☃☃ blue square"] + captions[:3]
  ids, truncated = tok.encode_batch(texts, max_len=48)
  assert not truncated.any() and ids.max() < tok.vocab_size
  assert (ids[:2] == 0).sum(axis=1).tolist() == [1, 2]  # real <unk>s (☃☃ is one)
  for row, text in zip(ids, texts):
    length = len(tok.encode(text)) + 2  # bos + text + eos
    assert (row != tok.pad_id).sum() == length and row[length - 1] == tok.eos_id
    assert (row[length:] == tok.pad_id).all()
  assert [tok.decode(row) for row in ids[2:]] == captions[:3]


def test_sentencepiece_missing_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import fails
  with pytest.raises(ImportError, match="pip install sentencepiece"):
    tokenizer_lib.SentencePieceTokenizer("any.model")


def test_get_tokenizer_specs():
  assert isinstance(tokenizer_lib.get_tokenizer("bytes"), tokenizer_lib.ByteTokenizer)
  for spec in ("words", "sentencepiece:", "byte"):
    with pytest.raises(ValueError, match="bytes.*sentencepiece:"):
      tokenizer_lib.get_tokenizer(spec)
