"""CLIP (ViT-B/32) image and text towers, tokenizer and preprocessing, over Hugging Face's files.

CLIP score measures how well a caption describes its image without references: it is the
cosine similarity of the two CLIP embeddings. Here, each pair clipped at 0 as Hessel et al. do,

  clip_score = 100 * mean_i max(cos(image_embedding_i, text_embedding_i), 0),

in [0, 100]. (torchmetrics' `CLIPScore` clips the mean instead of each pair: the same figure
unless some pair's cosine is negative.) Hessel et al. (2021, "CLIPScore") define the same
quantity with weight 2.5 instead of 100 (multiply by 0.025 to compare) and prefix captions with
"A photo depicts"; no prefix is added here.

Everything follows Hugging Face's `CLIPModel` on huggingface.co/openai/clip-vit-base-patch32
(config.json, model.safetensors, vocab.json, merges.txt), so the published folder is read as it
is: pre-LayerNorm transformers with quick_gelu MLPs; the text tower is causal and pooled at the
end-of-text token (the highest id in the vocabulary, hence `argmax(tokens)`); the image tower
prepends a class token, adds a LayerNorm before the encoder and pools the class token; both
pooled vectors are projected (no bias) to 512 dimensions. Images are resized (shorter side to
224, bicubic, by PIL as Hugging Face's processor does), center-cropped and normalized with
CLIP's mean and std. Text is cleaned (HTML entities, NFC, whitespace), lowercased, split with
CLIP's pattern and byte-level BPE-encoded between <|startoftext|> and <|endoftext|> in 77
tokens. OpenAI's tokenizer also repairs mojibake with ftfy; captions of the datasets here need
no repair, so that step is left out.
"""

import dataclasses
import functools
import html
import json
import os
import re
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np

from mxq_jax import files
from mxq_jax.evaluation import batching, weights_io

REPO_URL = "https://huggingface.co/openai/clip-vit-base-patch32"
FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

Params = dict  # {"text": {...}, "vision": {...}, "logit_scale": []}; see `params_from_tensors`.


# ---------------------------------------------------------------------------------- tokenizer


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map of the 256 bytes to printable characters (BPE works on these)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _typography_tables() -> tuple[dict[int, str | None], dict[int, str]]:
  """ftfy's default fixes other than mojibake repair, as two str.translate tables.

  First: Latin ligatures and half/fullwidth forms to plain letters (NFKC of those characters;
  U+3000 to a space) and invisible control characters removed. Then: curly quotes straight.
  """
  plain = {c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFF01, 0xFFF0)}
  plain.update({ord(c): unicodedata.normalize("NFKC", c) for c in "ĲĳŉǱǲǳǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬆ"})
  plain.update({0x3000: " ", ord("ﬅ"): "ſt"})
  controls = [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070),
              0xFEFF, *range(0xFFF9, 0xFFFD)]
  plain.update({c: None for c in controls})
  quotes = {0x02BC: "'", **{c: "'" for c in range(0x2018, 0x201C)},
            **{c: '"' for c in range(0x201C, 0x2020)}}
  return plain, quotes


_PLAIN, _QUOTES = _typography_tables()


def clean(text: str) -> str:
  """CLIP's text cleaning: what OpenAI's tokenizer does before it splits.

  OpenAI runs ftfy.fix_text, unescapes HTML twice, collapses whitespace and lowercases. ftfy's
  mojibake repair is left out (a dependency for text that the datasets here do not hold); its
  other default fixes are reproduced: terminal escapes and control characters removed, Latin
  ligatures and fullwidth forms made plain, curly quotes straightened, NFC.
  """
  if "<" not in text:  # ftfy unescapes HTML itself unless the text looks like markup.
    text = html.unescape(text)
  text = re.sub(r"\x1b\[[\d;]*[a-zA-Z]", "", text)
  text = unicodedata.normalize("NFC", text.translate(_PLAIN).translate(_QUOTES))
  text = html.unescape(html.unescape(text))
  return re.sub(r"\s+", " ", text).strip().lower()


def _kind(char: str) -> str:
  """'L' letter, 'N' number, ' ' space, '.' anything else: the classes of CLIP's pattern."""
  if char.isspace():
    return " "
  category = unicodedata.category(char)[0]
  return category if category in "LN" else "."


_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def pretokenize(text: str) -> list[str]:
  """CLIP's split of cleaned text, without the third-party `regex` module it is written in.

  The pattern <\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|
  [^\\s\\p{L}\\p{N}]+ tried at each position in order: special tokens, contractions, a run of
  letters, ONE number character, a run of other non-space characters; spaces are dropped.
  """
  words, i = [], 0
  while i < len(text):
    match = next((t for t in (START_OF_TEXT, END_OF_TEXT, *_CONTRACTIONS)
                  if text.startswith(t, i)), None)
    kind = _kind(text[i])
    if match:
      end = i + len(match)
    elif kind == " ":
      i += 1
      continue
    elif kind == "N":
      end = i + 1
    else:
      end = i + 1
      while end < len(text) and _kind(text[end]) == kind:
        end += 1
    words.append(text[i:end])
    i = end
  return words


class Tokenizer:
  """CLIP's byte-level BPE over vocab.json (piece -> id) and merges.txt (ranked pairs)."""

  def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
    self.vocab = vocab
    self.ranks = {pair: rank for rank, pair in enumerate(merges)}
    self.start_id, self.end_id = vocab[START_OF_TEXT], vocab[END_OF_TEXT]
    self._byte_chars = bytes_to_unicode()
    self._bpe = functools.lru_cache(maxsize=65536)(self._bpe_uncached)

  @classmethod
  def from_files(cls, vocab_path: str, merges_path: str) -> "Tokenizer":
    vocab = json.loads(files.read_text(vocab_path))
    lines = [line.split() for line in files.read_text(merges_path).split("\n")]
    merges = [tuple(parts) for parts in lines if len(parts) == 2 and not parts[0].startswith("#")]
    return cls(vocab, merges)

  def _bpe_uncached(self, word: str) -> tuple[str, ...]:
    """Merges the lowest-ranked adjacent pair until none is in merges.txt; '</w>' ends a word."""
    if word in (START_OF_TEXT, END_OF_TEXT):
      return (word,)
    symbols = [*word[:-1], word[-1] + "</w>"]
    while len(symbols) > 1:
      pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
      best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    return tuple(symbols)

  def encode(self, text: str) -> list[int]:
    """The ids of a text's pieces, without the start and end tokens."""
    ids = []
    for word in pretokenize(clean(text)):
      chars = "".join(self._byte_chars[b] for b in word.encode("utf-8"))
      ids.extend(self.vocab[piece] for piece in self._bpe(chars))
    return ids

  def __call__(self, texts: list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """int32 [N, context_length]: start, pieces (cut to fit), end, then zeros."""
    tokens_NxL = np.zeros((len(texts), context_length), np.int32)
    for n, text in enumerate(texts):
      ids = [self.start_id, *self.encode(text)[:context_length - 2], self.end_id]
      tokens_NxL[n, :len(ids)] = ids
    return tokens_NxL


# ---------------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  width: int
  layers: int
  heads: int
  mlp_dim: int
  eps: float = 1e-5
  activation: str = "quick_gelu"


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """What config.json fixes; the defaults are CLIP ViT-B/32's (Hugging Face's defaults too)."""
  text: TowerConfig = TowerConfig(512, 12, 8, 2048)
  vision: TowerConfig = TowerConfig(768, 12, 12, 3072)
  vocab_size: int = 49408
  context_length: int = CONTEXT_LENGTH
  image_size: int = 224
  patch_size: int = 32
  projection_dim: int = 512


def config_from_json(config_json: dict) -> ClipConfig:
  """ClipConfig of a Hugging Face CLIP config.json (older exports nest `*_config_dict`).

  Raises ValueError for an activation other than quick_gelu (OpenAI's) or gelu.
  """
  default = ClipConfig()
  text = config_json.get("text_config") or config_json.get("text_config_dict") or {}
  vision = config_json.get("vision_config") or config_json.get("vision_config_dict") or {}

  def tower(d: dict, base: TowerConfig) -> TowerConfig:
    if d.get("hidden_act", base.activation) not in ("quick_gelu", "gelu"):
      raise ValueError(f"hidden_act {d['hidden_act']!r} is neither quick_gelu nor gelu")
    return TowerConfig(d.get("hidden_size", base.width), d.get("num_hidden_layers", base.layers),
                       d.get("num_attention_heads", base.heads),
                       d.get("intermediate_size", base.mlp_dim),
                       d.get("layer_norm_eps", base.eps), d.get("hidden_act", base.activation))

  return ClipConfig(
      text=tower(text, default.text), vision=tower(vision, default.vision),
      vocab_size=text.get("vocab_size", default.vocab_size),
      context_length=text.get("max_position_embeddings", default.context_length),
      image_size=vision.get("image_size", default.image_size),
      patch_size=vision.get("patch_size", default.patch_size),
      projection_dim=config_json.get("projection_dim", default.projection_dim))


def _layer_shapes(prefix: str, tower: TowerConfig) -> dict[str, tuple[int, ...]]:
  d, m = tower.width, tower.mlp_dim
  shapes = {}
  for i in range(tower.layers):
    p = f"{prefix}.encoder.layers.{i}"
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
      shapes[f"{p}.self_attn.{proj}.weight"], shapes[f"{p}.self_attn.{proj}.bias"] = (d, d), (d,)
    for norm in ("layer_norm1", "layer_norm2"):
      shapes[f"{p}.{norm}.weight"], shapes[f"{p}.{norm}.bias"] = (d,), (d,)
    shapes[f"{p}.mlp.fc1.weight"], shapes[f"{p}.mlp.fc1.bias"] = (m, d), (m,)
    shapes[f"{p}.mlp.fc2.weight"], shapes[f"{p}.mlp.fc2.bias"] = (d, m), (d,)
  return shapes


def expected_shapes(config: ClipConfig) -> dict[str, tuple[int, ...]]:
  """The tensors of Hugging Face's CLIPModel this module reads, by their names in the file."""
  t, v, p = config.text.width, config.vision.width, config.patch_size
  grid = config.image_size // p
  return {
      "text_model.embeddings.token_embedding.weight": (config.vocab_size, t),
      "text_model.embeddings.position_embedding.weight": (config.context_length, t),
      **_layer_shapes("text_model", config.text),
      "text_model.final_layer_norm.weight": (t,), "text_model.final_layer_norm.bias": (t,),
      "vision_model.embeddings.class_embedding": (v,),
      "vision_model.embeddings.patch_embedding.weight": (v, 3, p, p),
      "vision_model.embeddings.position_embedding.weight": (grid * grid + 1, v),
      "vision_model.pre_layrnorm.weight": (v,), "vision_model.pre_layrnorm.bias": (v,),
      **_layer_shapes("vision_model", config.vision),
      "vision_model.post_layernorm.weight": (v,), "vision_model.post_layernorm.bias": (v,),
      "visual_projection.weight": (config.projection_dim, v),
      "text_projection.weight": (config.projection_dim, t),
      "logit_scale": (),
  }


def _stacked_layers(tensors: dict[str, np.ndarray], prefix: str, layers: int) -> dict:
  """The encoder's layers as arrays with a leading layer axis (one lax.scan runs them)."""
  get = lambda i, name: np.asarray(tensors[f"{prefix}.encoder.layers.{i}.{name}"], np.float32)
  stack = lambda name, transpose=False: np.stack(
      [get(i, name).T if transpose else get(i, name) for i in range(layers)])
  dense = lambda name: {"w": stack(f"{name}.weight", True), "b": stack(f"{name}.bias")}
  norm = lambda name: {"scale": stack(f"{name}.weight"), "bias": stack(f"{name}.bias")}
  return {"q": dense("self_attn.q_proj"), "k": dense("self_attn.k_proj"),
          "v": dense("self_attn.v_proj"), "out": dense("self_attn.out_proj"),
          "ln1": norm("layer_norm1"), "ln2": norm("layer_norm2"),
          "fc1": dense("mlp.fc1"), "fc2": dense("mlp.fc2")}


def params_from_tensors(tensors: dict[str, np.ndarray], config: ClipConfig) -> Params:
  """The file's tensors rearranged for JAX: [in, out] dense kernels, HWIO patch kernel."""
  f32 = lambda name: np.asarray(tensors[name], np.float32)
  norm = lambda name: {"scale": f32(f"{name}.weight"), "bias": f32(f"{name}.bias")}
  params = {
      "text": {
          "token_embedding": f32("text_model.embeddings.token_embedding.weight"),
          "position_embedding": f32("text_model.embeddings.position_embedding.weight"),
          "layers": _stacked_layers(tensors, "text_model", config.text.layers),
          "final_ln": norm("text_model.final_layer_norm"),
          "projection": f32("text_projection.weight").T,
      },
      "vision": {
          "patch_kernel": f32("vision_model.embeddings.patch_embedding.weight").transpose(
              2, 3, 1, 0),
          "class_embedding": f32("vision_model.embeddings.class_embedding"),
          "position_embedding": f32("vision_model.embeddings.position_embedding.weight"),
          "pre_ln": norm("vision_model.pre_layrnorm"),
          "layers": _stacked_layers(tensors, "vision_model", config.vision.layers),
          "post_ln": norm("vision_model.post_layernorm"),
          "projection": f32("visual_projection.weight").T,
      },
      "logit_scale": f32("logit_scale"),
  }
  return jax.tree.map(jnp.asarray, params)


def _dense(x: jax.Array, p: dict) -> jax.Array:
  return jnp.matmul(x, p["w"], precision=jax.lax.Precision.HIGHEST) + p["b"]


def _layer_norm(x: jax.Array, p: dict, eps: float) -> jax.Array:
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _activation(x: jax.Array, name: str) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x) if name == "quick_gelu" else jax.nn.gelu(x, False)


def _attention(x_BxTxD: jax.Array, p: dict, heads: int, mask_TxT: jax.Array | None) -> jax.Array:
  b, t, d = x_BxTxD.shape
  split = lambda y: y.reshape(b, t, heads, d // heads)
  q_BxTxHxK = split(_dense(x_BxTxD, p["q"])) * (d // heads) ** -0.5
  k_BxTxHxK, v_BxTxHxK = split(_dense(x_BxTxD, p["k"])), split(_dense(x_BxTxD, p["v"]))
  logits_BxHxTxT = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK, k_BxTxHxK,
                              precision=jax.lax.Precision.HIGHEST)
  if mask_TxT is not None:
    logits_BxHxTxT = jnp.where(mask_TxT, logits_BxHxTxT, jnp.finfo(logits_BxHxTxT.dtype).min)
  out_BxTxHxK = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(logits_BxHxTxT, -1), v_BxTxHxK,
                           precision=jax.lax.Precision.HIGHEST)
  return _dense(out_BxTxHxK.reshape(b, t, d), p["out"])


def _encoder(x_BxTxD: jax.Array, layers: dict, tower: TowerConfig,
             mask_TxT: jax.Array | None) -> jax.Array:
  """Pre-LN layers: x + attention(LN(x)), then x + MLP(LN(x)); scanned over the layer axis."""

  def layer(x, p):
    x = x + _attention(_layer_norm(x, p["ln1"], tower.eps), p, tower.heads, mask_TxT)
    h = _activation(_dense(_layer_norm(x, p["ln2"], tower.eps), p["fc1"]), tower.activation)
    return x + _dense(h, p["fc2"]), None

  return jax.lax.scan(layer, x_BxTxD, layers)[0]


def _unit(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames="config")
def text_embeddings(params: Params, config: ClipConfig, tokens_NxL: jax.Array) -> jax.Array:
  """Unit-norm text embeddings [N, projection_dim], pooled at each row's end-of-text token."""
  p, length = params["text"], tokens_NxL.shape[1]
  x = p["token_embedding"][tokens_NxL] + p["position_embedding"][:length]
  causal_LxL = jnp.tril(jnp.ones((length, length), bool))
  x = _layer_norm(_encoder(x, p["layers"], config.text, causal_LxL), p["final_ln"],
                  config.text.eps)
  end_N = jnp.argmax(tokens_NxL, axis=-1)  # <|endoftext|> has the highest id.
  pooled_NxD = jnp.take_along_axis(x, end_N[:, None, None], axis=1)[:, 0]
  return _unit(jnp.matmul(pooled_NxD, p["projection"], precision=jax.lax.Precision.HIGHEST))


@functools.partial(jax.jit, static_argnames="config")
def image_embeddings(params: Params, config: ClipConfig, pixels_NxSxSx3: jax.Array) -> jax.Array:
  """Unit-norm image embeddings [N, projection_dim] of `preprocess`ed images."""
  p, patch = params["vision"], config.patch_size
  patches_NxGxGxD = jax.lax.conv_general_dilated(
      pixels_NxSxSx3, p["patch_kernel"], (patch, patch), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  n, _, _, d = patches_NxGxGxD.shape
  cls_Nx1xD = jnp.broadcast_to(p["class_embedding"], (n, 1, d))
  x = jnp.concatenate([cls_Nx1xD, patches_NxGxGxD.reshape(n, -1, d)], 1) + p["position_embedding"]
  x = _encoder(_layer_norm(x, p["pre_ln"], config.vision.eps), p["layers"], config.vision, None)
  pooled_NxD = _layer_norm(x[:, 0], p["post_ln"], config.vision.eps)
  return _unit(jnp.matmul(pooled_NxD, p["projection"], precision=jax.lax.Precision.HIGHEST))


def preprocess(images_uint8_NxHxWx3: np.ndarray, size: int = 224) -> np.ndarray:
  """float32 [N, size, size, 3]: shorter side to `size` (PIL bicubic), center crop, CLIP norm."""
  from PIL import Image
  out = np.empty((len(images_uint8_NxHxWx3), size, size, 3), np.float32)
  for n, image in enumerate(images_uint8_NxHxWx3):
    h, w = image.shape[:2]
    short, long = min(h, w), max(h, w)
    new_h, new_w = (size, int(size * long / short)) if h <= w else (int(size * long / short), size)
    resized = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).convert("RGB").resize(
        (new_w, new_h), Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out[n] = resized[top:top + size, left:left + size] / np.float32(255.0)
  return (out - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)


def clip_score(image_embeddings_NxP: np.ndarray, text_embeddings_NxP: np.ndarray) -> float:
  """100 * mean(max(cos(image_i, text_i), 0)): see the module docstring."""
  a = np.asarray(image_embeddings_NxP, np.float64)
  b = np.asarray(text_embeddings_NxP, np.float64)
  cos_N = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
  return float(100.0 * np.maximum(cos_N, 0.0).mean())


# ---------------------------------------------------------------------------------- the files


@dataclasses.dataclass
class Clip:
  """A loaded CLIP folder: parameters, config and tokenizer."""
  params: Params
  config: ClipConfig
  tokenizer: Tokenizer

  def embed_images(self, images_uint8_NxHxWx3: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Unit-norm embeddings, float64 [N, projection_dim], of uint8 RGB images of any size."""
    fn = lambda batch: image_embeddings(
        self.params, self.config, preprocess(batch, self.config.image_size))
    return batching.map_in_fixed_batches(fn, images_uint8_NxHxWx3,
                                         batch_size=batch_size).astype(np.float64)

  def embed_texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-norm embeddings, float64 [N, projection_dim], of texts."""
    tokens_NxL = self.tokenizer(list(texts), self.config.context_length)
    fn = lambda batch: text_embeddings(self.params, self.config, batch)
    return batching.map_in_fixed_batches(fn, tokens_NxL,
                                         batch_size=batch_size).astype(np.float64)


def load(clip_dir: str) -> Clip:
  """Reads a local copy of huggingface.co/openai/clip-vit-base-patch32 (the files of FILES).

  Raises WeightFileError (one line, naming the file) when one is missing or does not fit.
  """
  for name in FILES:
    if not files.is_file(os.path.join(clip_dir, name)):
      raise weights_io.WeightFileError(
          f"{clip_dir}: has no {name} (a CLIP folder holds {', '.join(FILES)})")
  config_path = os.path.join(clip_dir, "config.json")
  try:
    config = config_from_json(json.loads(files.read_text(config_path)))
  except (ValueError, AttributeError) as error:
    raise weights_io.WeightFileError(f"{config_path}: not a CLIP config.json ({error})") from None
  weights_path = os.path.join(clip_dir, "model.safetensors")
  tensors = weights_io.read_safetensors(weights_path)
  weights_io.check_shapes(weights_path, tensors, expected_shapes(config))
  try:
    tokenizer = Tokenizer.from_files(os.path.join(clip_dir, "vocab.json"),
                                     os.path.join(clip_dir, "merges.txt"))
  except (ValueError, KeyError) as error:
    raise weights_io.WeightFileError(
        f"{clip_dir}: vocab.json or merges.txt is not CLIP's ({error})") from None
  return Clip(params_from_tensors(tensors, config), config, tokenizer)
