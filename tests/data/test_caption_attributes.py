"""The caption scheme: every template states every attribute and parses back exactly."""

import itertools
import random
import re

import pytest

from mxq_jax.data import caption_attributes as attrs


def test_scheme_sizes():
  assert len(attrs.DIGIT_WORDS) == len(attrs.DIGIT_NUMERALS) == 10
  assert len(attrs.COLORS) >= 6 and len(attrs.POSITIONS) >= 4 and len(attrs.SIZES) >= 2
  assert attrs.NUM_TEMPLATES >= 5
  for color in attrs.COLORS:
    assert len(color.rgb) == 3 and all(0 <= v <= 255 for v in color.rgb)
  for position in attrs.POSITIONS:
    assert all(0.0 < a < 1.0 for a in position.anchor)
  assert len({p.anchor for p in attrs.POSITIONS}) == len(attrs.POSITIONS)
  assert len({s.scale for s in attrs.SIZES}) == len(attrs.SIZES)


def test_filler_words_are_never_attribute_words():
  attribute_words = set()
  for forms in attrs._FORMS.values():
    for form in forms:
      attribute_words.update(form.split())
  for template in attrs.TEMPLATES:
    filler = re.sub(r"\{\w+\}", " ", template)
    assert not set(re.findall(r"[a-z0-9]+", filler)) & attribute_words, template
    for key in ("digit", "color", "position", "size"):
      assert template.count("{" + key + "}") == 1, (template, key)


def test_every_caption_round_trips():
  captions = set()
  for digit, color, position, size, template, choice in itertools.product(
      attrs.DIGITS, attrs.COLOR_NAMES, attrs.POSITION_NAMES, attrs.SIZE_NAMES,
      range(attrs.NUM_TEMPLATES), range(attrs.NUM_SYNONYM_CHOICES)):
    caption = attrs.make_caption(digit, color, position, size, template, choice)
    assert caption == caption.lower()
    assert attrs.parse_caption(caption) == dict(
        digit=digit, color=color, position=position, size=size, template=template), caption
    captions.add(caption)
  # Synonym choices and templates really change the text: every combination is distinct.
  assert len(captions) == (10 * len(attrs.COLORS) * len(attrs.POSITIONS) * len(attrs.SIZES)
                           * attrs.NUM_TEMPLATES * attrs.NUM_SYNONYM_CHOICES)


def test_random_synonyms_and_examples():
  rng = random.Random(0)
  caption = attrs.make_caption(7, "red", "top left", "small", 0, rng)
  assert attrs.parse_caption(caption)["digit"] == 7
  assert attrs.make_caption(7, "red", "top left", "small", 0, 0) == (
      "a small red seven in the top left")
  assert attrs.make_caption(3, "blue", "center", "large", 2, 1) == (
      "a large blue 3 sits at the center")
  assert attrs.make_caption(7, "red", "top left", "small", 1, 1) == (
      "top left: the digit 7, drawn small and red")


def test_parse_rejects_and_lenient_mode():
  assert attrs.parse_caption("a small red seven") is None  # position missing.
  assert attrs.parse_caption("a small red seven in the top left corner") is None  # not a template.
  assert attrs.parse_caption("  A Small RED seven   in the top left ") == dict(
      digit=7, color="red", position="top left", size="small", template=0)
  lenient = attrs.parse_caption("a small red seven in the top left corner", strict=False)
  assert lenient == dict(digit=7, color="red", position="top left", size="small", template=-1)
  # Contradictions are not guessed at.
  assert attrs.parse_caption("a small red blue seven in the top left", strict=False) is None
  assert attrs.parse_caption("a small red 7 or 8 in the top left", strict=False) is None


def test_make_caption_rejects_bad_values():
  with pytest.raises(ValueError, match="purple"):
    attrs.make_caption(1, "purple", "center", "small", 0)
  with pytest.raises(ValueError, match="digit"):
    attrs.make_caption(10, "red", "center", "small", 0)
  with pytest.raises(ValueError, match="template"):
    attrs.make_caption(1, "red", "center", "small", attrs.NUM_TEMPLATES)
