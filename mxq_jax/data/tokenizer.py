"""A SentencePiece tokenizer for captions, trained on the train split, with fixed special ids.

ids: PAD 0, UNK 1, BOS 2, EOS 3, MASK 4 (the masking's [MASK], a user-defined piece), then the
learned pieces. A caption becomes BOS + pieces + EOS, padded with PAD to the text length.
"""

from collections.abc import Iterable, Sequence
import io
import re

from absl import logging
import numpy as np
import sentencepiece as spm

from mxq_jax import files
from mxq_jax.config_lib import ConfigError


PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
MASK_ID = 4
MASK_PIECE = "<mask>"
NUM_SPECIAL = 5


def train_tokenizer(captions: Iterable[str], vocab_size: int, path: str,
                    required_chars: str = "") -> None:
  """Trains a unigram model in memory on `captions` and writes it atomically to `path`.

  required_chars: characters kept as pieces even when `captions` lacks them, so that any text
  of the caption scheme encodes without <unk> (`caption_attributes.alphabet()`).

  Deterministic for the same captions (one thread, no sentence sampling). Raises ValueError
  when the captions cannot fill exactly `vocab_size` pieces, or `vocab_size` cannot hold
  their characters.
  """
  captions = list(captions)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, byte_fallback=False,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        user_defined_symbols=[MASK_PIECE], hard_vocab_limit=True, required_chars=required_chars,
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        minloglevel=2)
  except RuntimeError as e:
    message = str(e)
    if "Vocabulary size too high" in message:
      at_most = re.search(r"<= (\d+)", message)
      raise ConfigError(
          f"config.data.vocab_size={vocab_size} is more pieces than the {len(captions)} train "
          f"captions can make; lower config.data.vocab_size"
          + (f" to at most {at_most.group(1)}" if at_most else "")) from None
    if "Vocabulary size is smaller than required_chars" in message:
      needed = re.search(r"(\d+) vs (\d+)", message)
      raise ConfigError(
          f"config.data.vocab_size={vocab_size} cannot hold every character of the captions "
          f"plus the special pieces; raise config.data.vocab_size"
          + (f" to at least {needed.group(2)}" if needed else "")) from None
    raise
  processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
  if processor.get_piece_size() != vocab_size or processor.piece_to_id(MASK_PIECE) != MASK_ID:
    raise ConfigError(
        f"trained {processor.get_piece_size()} pieces for config.data.vocab_size={vocab_size}; "
        "lower config.data.vocab_size")
  files.write_bytes(path, model.getvalue())
  logging.info("tokenizer: trained %d pieces on %d captions -> %s", vocab_size, len(captions),
               path)


class Tokenizer:
  """Fixed-length encoding and decoding of captions."""

  def __init__(self, processor: spm.SentencePieceProcessor):
    self._sp = processor
    if processor.piece_to_id(MASK_PIECE) != MASK_ID or processor.pad_id() != PAD_ID:
      raise ValueError("not an mxq_jax tokenizer: <mask> must be id 4 and <pad> id 0")

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    # From bytes: SentencePiece's own loader reads local files only.
    return cls(spm.SentencePieceProcessor(model_proto=files.read_bytes(path)))

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, captions: Sequence[str], length: int) -> tuple[np.ndarray, int]:
    """(ids int32 [n, length], number of captions truncated to fit).

    BOS + pieces + EOS, then PAD; a caption too long keeps its first pieces and ends on EOS.
    """
    if length < 2:
      raise ValueError(f"length={length} cannot hold BOS and EOS")
    pieces = self._sp.encode(list(captions))
    ids_NxL = np.full((len(pieces), length), PAD_ID, np.int32)
    num_truncated = 0
    for i, p in enumerate(pieces):
      if len(p) > length - 2:
        p = p[:length - 2]
        num_truncated += 1
      ids_NxL[i, :len(p) + 2] = [BOS_ID, *p, EOS_ID]
    return ids_NxL, num_truncated

  def decode(self, ids: Sequence[int]) -> str:
    """The caption of one id row: up to the first EOS, without PAD, BOS and MASK."""
    kept = []
    for i in np.asarray(ids).tolist():
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID, MASK_ID):
        kept.append(i)
    return self._sp.decode(kept)

  def decode_batch(self, ids_NxL) -> list[str]:
    return [self.decode(row) for row in np.asarray(ids_NxL)]


def load_or_train(path: str, captions: Iterable[str], vocab_size: int,
                  required_chars: str = "") -> Tokenizer:
  """The tokenizer at `path` when it exists (its size must match), else one trained there."""
  if not files.exists(path):
    train_tokenizer(captions, vocab_size, path, required_chars)
  tokenizer = Tokenizer.load(path)
  if tokenizer.vocab_size != vocab_size:
    raise ConfigError(
        f"the tokenizer at {path} has {tokenizer.vocab_size} pieces but config.data.vocab_size="
        f"{vocab_size}; use the same vocab_size or a fresh workdir")
  return tokenizer
