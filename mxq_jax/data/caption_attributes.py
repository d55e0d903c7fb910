"""The attribute scheme of the synthetic captioned digits: values, caption templates, a parser.

Pure Python, shared by the caption_digits renderer, a later Caption-MNIST builder and the
evaluation that reads generated captions back. Every template states every attribute, and the
attribute words never occur in a template's filler words, so `parse_caption` is exact.
"""

import dataclasses
import random
import re


@dataclasses.dataclass(frozen=True)
class Color:
  name: str
  rgb: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Position:
  name: str
  anchor: tuple[float, float]  # (x, y) of the digit's centre, relative to the image side.
  phrases: tuple[str, ...]  # synonyms; the first is the canonical one.


@dataclasses.dataclass(frozen=True)
class Size:
  name: str
  scale: float  # digit height / image height.
  words: tuple[str, ...]  # synonyms; the first is the canonical one.


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_NUMERALS = tuple(str(d) for d in range(10))
DIGITS = tuple(range(10))

COLORS = (
    Color("red", (230, 25, 25)),
    Color("green", (30, 200, 40)),
    Color("blue", (40, 80, 255)),
    Color("yellow", (250, 230, 20)),
    Color("cyan", (20, 230, 230)),
    Color("magenta", (230, 30, 230)),
    Color("white", (255, 255, 255)),
    Color("orange", (255, 140, 0)),
)

POSITIONS = (
    Position("top left", (0.3, 0.3), ("top left", "upper left")),
    Position("top right", (0.7, 0.3), ("top right", "upper right")),
    Position("bottom left", (0.3, 0.7), ("bottom left", "lower left")),
    Position("bottom right", (0.7, 0.7), ("bottom right", "lower right")),
    Position("center", (0.5, 0.5), ("center", "middle")),
)

SIZES = (
    Size("small", 0.42, ("small", "tiny")),
    Size("large", 0.68, ("large", "big")),
)

COLOR_NAMES = tuple(c.name for c in COLORS)
POSITION_NAMES = tuple(p.name for p in POSITIONS)
SIZE_NAMES = tuple(s.name for s in SIZES)
DIGIT_NAMES = DIGIT_WORDS  # ClassLabel names of the digit feature.

# {size} {color} {digit} {position}: every template has each exactly once. Filler words must
# never be an attribute word (no "one", "left", "big", ...), which the tests check.
TEMPLATES = (
    "a {size} {color} {digit} in the {position}",
    "{position}: the digit {digit}, drawn {size} and {color}",
    "a {size} {color} {digit} sits at the {position}",
    "the number {digit} in {color}, {size}, at the {position}",
    "{color} {digit}, {size}, placed in the {position}",
    "there is a {size} {color} {digit} in the {position} of the image",
)
NUM_TEMPLATES = len(TEMPLATES)
# Synonym choices, mixed radix: digit as word or numeral x position phrase x size word.
NUM_SYNONYM_CHOICES = 2 * 2 * 2


def alphabet() -> str:
  """Every character any caption can contain: the tokenizer keeps them all (no <unk>)."""
  texts = [*TEMPLATES, *DIGIT_WORDS, *DIGIT_NUMERALS, *COLOR_NAMES,
           *(p for position in POSITIONS for p in position.phrases),
           *(w for size in SIZES for w in size.words)]
  return "".join(sorted(set("".join(texts)) - set("{} ")))


def _by_name(items, name):
  for item in items:
    if item.name == name:
      return item
  raise ValueError(f"unknown attribute value {name!r}; use one of {[i.name for i in items]}")


def make_caption(digit: int, color: str, position: str, size: str, template: int,
                 synonyms: int | random.Random = 0) -> str:
  """The lowercase caption stating all four attributes.

  `synonyms` is an int in [0, NUM_SYNONYM_CHOICES) (exhaustive tests) or a random.Random
  (rendering) that picks the digit form, the position phrase and the size word.
  """
  if not 0 <= digit <= 9:
    raise ValueError(f"digit={digit} must be in 0..9")
  if not 0 <= template < NUM_TEMPLATES:
    raise ValueError(f"template={template} must be in 0..{NUM_TEMPLATES - 1}")
  if isinstance(synonyms, random.Random):
    synonyms = synonyms.randrange(NUM_SYNONYM_CHOICES)
  digit_form, position_form, size_form = synonyms % 2, (synonyms // 2) % 2, (synonyms // 4) % 2
  _by_name(COLORS, color)  # validates the name.
  return TEMPLATES[template].format(
      digit=(DIGIT_WORDS if digit_form == 0 else DIGIT_NUMERALS)[digit],
      color=color,
      position=_by_name(POSITIONS, position).phrases[position_form],
      size=_by_name(SIZES, size).words[size_form])


# ------------------------------------------------------------------------------------ parsing

# Surface form -> canonical value, per attribute.
_DIGIT_FORMS = {**{w: d for d, w in enumerate(DIGIT_WORDS)},
                **{n: d for d, n in enumerate(DIGIT_NUMERALS)}}
_COLOR_FORMS = {c.name: c.name for c in COLORS}
_POSITION_FORMS = {phrase: p.name for p in POSITIONS for phrase in p.phrases}
_SIZE_FORMS = {word: s.name for s in SIZES for word in s.words}
_FORMS = dict(digit=_DIGIT_FORMS, color=_COLOR_FORMS, position=_POSITION_FORMS,
              size=_SIZE_FORMS)


def _alternation(forms):
  # Longest first, so that no phrase is cut short by a prefix of another.
  return "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))


def _template_regex(template: str) -> re.Pattern:
  parts = re.split(r"\{(\w+)\}", template)
  pattern = "".join(
      re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_alternation(_FORMS[part])})"
      for i, part in enumerate(parts))
  return re.compile(pattern)


_TEMPLATE_REGEXES = tuple(_template_regex(t) for t in TEMPLATES)


def _normalize_text(text: str) -> str:
  return " ".join(text.lower().split())


def parse_caption(text: str, strict: bool = True) -> dict | None:
  """Reads the attributes back: {'digit', 'color', 'position', 'size', 'template'}, or None.

  strict: the whole caption must match a template. Otherwise it falls back to finding exactly
  one mention of each attribute anywhere (template -1), for captions of a generative model that
  are right in content but not in form; None when an attribute is missing or contradictory.
  """
  text = _normalize_text(text)
  for template, regex in enumerate(_TEMPLATE_REGEXES):
    match = regex.fullmatch(text)
    if match:
      values = {key: _FORMS[key][match.group(key)] for key in _FORMS}
      return dict(values, template=template)
  if strict:
    return None
  values = {}
  for key, forms in _FORMS.items():
    found = {forms[m] for m in re.findall(rf"(?<![\w])(?:{_alternation(forms)})(?![\w])", text)}
    if len(found) != 1:
      return None
    values[key] = found.pop()
  return dict(values, template=-1)
