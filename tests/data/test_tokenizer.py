"""The caption tokenizer: special ids, fixed length, truncation count, reuse, size checks."""

import os

import numpy as np
import pytest

from mxq_jax.data import caption_attributes as attrs
from mxq_jax.data import caption_digits
from mxq_jax.data import tokenizer as tokenizer_lib

CAPTIONS = [caption_digits.example_attributes(0, "train", i)["caption"] for i in range(300)]
VOCAB = 64


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
  tokenizer_lib.train_tokenizer(CAPTIONS, VOCAB, path)
  return tokenizer_lib.Tokenizer.load(path)


def test_special_ids_and_size(tokenizer):
  sp = tokenizer._sp
  assert tokenizer.vocab_size == VOCAB
  assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (
      tokenizer_lib.PAD_ID, tokenizer_lib.UNK_ID, tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID)
  assert sp.piece_to_id("<mask>") == tokenizer_lib.MASK_ID == 4


def test_encode_layout_and_round_trip(tokenizer):
  ids, num_truncated = tokenizer.encode(CAPTIONS[:50], 64)
  assert ids.shape == (50, 64) and ids.dtype == np.int32 and num_truncated == 0
  assert (ids[:, 0] == tokenizer_lib.BOS_ID).all()
  for row, caption in zip(ids, CAPTIONS):
    eos = int(np.argmax(row == tokenizer_lib.EOS_ID))
    assert 2 < eos < 63 and (row[eos + 1:] == tokenizer_lib.PAD_ID).all()
    assert tokenizer_lib.PAD_ID not in row[:eos]
    assert tokenizer.decode(row) == caption
  assert tokenizer.decode_batch(ids[:3]) == CAPTIONS[:3]


def test_truncation_is_counted_and_keeps_eos(tokenizer):
  long_caption = " ".join(CAPTIONS[:3])
  exact = len(tokenizer._sp.encode(CAPTIONS[0])) + 2  # BOS + pieces + EOS fill the row.
  ids, num_truncated = tokenizer.encode([CAPTIONS[0], long_caption, long_caption], exact)
  assert num_truncated == 2  # exactly full is not truncated; the two long ones are.
  assert tokenizer.decode(ids[0]) == CAPTIONS[0] and ids[0, -1] == tokenizer_lib.EOS_ID
  assert ids[1, -1] == tokenizer_lib.EOS_ID and ids[1, 0] == tokenizer_lib.BOS_ID
  assert tokenizer_lib.PAD_ID not in ids[1]
  decoded = tokenizer.decode(ids[1])
  assert len(decoded) > 5 and long_caption.startswith(decoded)


def test_decode_drops_specials(tokenizer):
  ids, _ = tokenizer.encode([CAPTIONS[0]], 64)
  row = ids[0].copy()
  row[3] = tokenizer_lib.MASK_ID  # a masked position disappears from the text.
  assert tokenizer_lib.MASK_ID not in tokenizer._sp.encode(tokenizer.decode(row))
  stopped = np.array([tokenizer_lib.BOS_ID, *ids[0][1:4], tokenizer_lib.EOS_ID, *ids[0][4:8]])
  assert tokenizer.decode(stopped) == tokenizer.decode(ids[0][:4])


def test_training_is_deterministic_and_leaves_no_temp_files(tmp_path):
  tokenizer_lib.train_tokenizer(CAPTIONS, VOCAB, str(tmp_path / "a.model"))
  tokenizer_lib.train_tokenizer(CAPTIONS, VOCAB, str(tmp_path / "b.model"))
  assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
  assert sorted(os.listdir(tmp_path)) == ["a.model", "b.model"]


def test_load_or_train_reuses_and_checks_size(tmp_path):
  path = str(tmp_path / "sub" / "tokenizer.model")
  first = tokenizer_lib.load_or_train(path, CAPTIONS, VOCAB)
  mtime = os.path.getmtime(path)
  # Reuse: different captions are ignored because the file is there.
  again = tokenizer_lib.load_or_train(path, ["something else entirely"] * 10, VOCAB)
  assert os.path.getmtime(path) == mtime
  np.testing.assert_array_equal(first.encode(CAPTIONS[:5], 40)[0],
                                again.encode(CAPTIONS[:5], 40)[0])
  with pytest.raises(ValueError, match="config.data.vocab_size=72"):
    tokenizer_lib.load_or_train(path, CAPTIONS, 72)


def test_impossible_vocab_sizes_raise_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="lower config.data.vocab_size to at most"):
    tokenizer_lib.train_tokenizer(CAPTIONS[:20], 400, str(tmp_path / "t.model"))
  with pytest.raises(ValueError, match="raise config.data.vocab_size to at least"):
    tokenizer_lib.train_tokenizer(CAPTIONS, 20, str(tmp_path / "t.model"))
  assert not os.listdir(tmp_path)


def test_required_chars_avoid_unknown_pieces(tmp_path):
  without_ones = [c for c in CAPTIONS if "1" not in c and "one" not in c]
  unseen = attrs.make_caption(1, "red", "center", "small", 0, synonyms=1)  # "a small red 1 ..."
  plain_path, full_path = str(tmp_path / "plain.model"), str(tmp_path / "full.model")
  tokenizer_lib.train_tokenizer(without_ones, VOCAB, plain_path)
  tokenizer_lib.train_tokenizer(without_ones, VOCAB, full_path, required_chars=attrs.alphabet())
  plain, full = tokenizer_lib.Tokenizer.load(plain_path), tokenizer_lib.Tokenizer.load(full_path)
  assert tokenizer_lib.UNK_ID in plain.encode([unseen], 64)[0]
  ids, _ = full.encode([unseen], 64)
  assert tokenizer_lib.UNK_ID not in ids and full.decode(ids[0]) == unseen
