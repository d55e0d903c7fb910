"""Writers of weight files in the published formats, for tests: torch's .pth without torch.

`write_pth` lays a state dict out as `torch.save` does (torch/serialization.py `_save` and
caffe2/serialize/inline_container.cc `PyTorchStreamWriter`): a stored zip whose records sit
under a folder named after the file, `data.pkl` first, then `byteorder`, `data/{key}` (each
record's bytes aligned to 64 with an "FB" extra field), `version`; the pickle (protocol 2) holds
an OrderedDict of `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
OrderedDict())` with storages as persistent ids `('storage', torch.FloatStorage, key, 'cpu',
numel)`. `legacy=True` writes the pre-1.6 layout (`_legacy_save`). The pickle opcodes are
written by hand: pickling the real globals would need torch importable.
"""

import json
import os
import pickle
import struct
import zipfile

import numpy as np

_STORAGE_NAMES = {"float64": "DoubleStorage", "float32": "FloatStorage",
                  "float16": "HalfStorage", "int64": "LongStorage", "int32": "IntStorage",
                  "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage",
                  "bool": "BoolStorage", "bfloat16": "BFloat16Storage"}


class _Opcodes:
  """Just enough of pickle protocol 2 to write a state dict the way torch's pickler does."""

  def __init__(self):
    self.out = bytearray(pickle.PROTO + b"\x02")

  def glob(self, module: str, name: str):
    self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()

  def str(self, text: str):
    data = text.encode()
    self.out += pickle.BINUNICODE + struct.pack("<I", len(data)) + data

  def int(self, value: int):
    self.out += pickle.BININT + struct.pack("<i", value)

  def tuple(self, items):
    self.out += pickle.MARK
    for item in items:
      self.int(item)
    self.out += pickle.TUPLE

  def empty_ordered_dict(self):
    self.glob("collections", "OrderedDict")
    self.out += pickle.EMPTY_TUPLE + pickle.REDUCE


def _pickle_state_dict(tensors: dict, storage_keys: dict[int, str], legacy: bool) -> bytes:
  """tensors: {name: (storage array, offset, shape, stride)}; storage_keys: id(array) -> key."""
  ops = _Opcodes()
  ops.empty_ordered_dict()
  ops.out += pickle.MARK
  for name, (storage, offset, shape, stride) in tensors.items():
    ops.str(name)
    ops.glob("torch._utils", "_rebuild_tensor_v2")
    ops.out += pickle.MARK
    ops.out += pickle.MARK  # The persistent id of the storage.
    ops.str("storage")
    ops.glob("torch", _STORAGE_NAMES[storage.dtype.name])
    ops.str(storage_keys[id(storage)])
    ops.str("cpu")
    ops.int(storage.size)
    if legacy:
      ops.out += pickle.NONE  # No view.
    ops.out += pickle.TUPLE + pickle.BINPERSID
    ops.int(offset)
    ops.tuple(shape)
    ops.tuple(stride)
    ops.out += pickle.NEWFALSE  # requires_grad.
    ops.empty_ordered_dict()  # backward_hooks.
    ops.out += pickle.TUPLE + pickle.REDUCE
  ops.out += pickle.SETITEMS + pickle.STOP
  return bytes(ops.out)


def _as_views(state_dict: dict) -> dict:
  """{name: array or (storage, offset, shape, stride)} -> all as (storage, ...) tuples."""
  views = {}
  for name, value in state_dict.items():
    if isinstance(value, tuple):
      views[name] = value
    else:
      array = np.asarray(value)
      strides = tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim))
      views[name] = (array.reshape(-1), 0, array.shape, strides)  # C order, like torch.
  return views


def _storages(views: dict) -> tuple[dict[int, str], list[np.ndarray]]:
  keys, arrays = {}, []
  for storage, *_ in views.values():
    if id(storage) not in keys:
      keys[id(storage)] = str(len(keys))
      arrays.append(storage)
  return keys, arrays


def _write_stored_record(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
  """A stored record whose data starts at a multiple of 64, padded as torch pads it."""
  start = archive.fp.tell() + 30 + len(name) + 4  # local header, name, "FB" + length.
  padding = -start % 64
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
  archive.writestr(info, data)


def write_pth(path: str, state_dict: dict, legacy: bool = False) -> None:
  """torch.save(OrderedDict(state_dict), path) without torch.

  Values are arrays, or (storage_1d, offset, shape, stride) to write a view of a storage that
  several tensors share (as a transposed or sliced tensor is saved).
  """
  views = _as_views(state_dict)
  keys, storages = _storages(views)
  data_pkl = _pickle_state_dict(views, keys, legacy)
  if legacy:
    with open(path, "wb") as f:
      for header in (0x1950A86A20F9469CFC6C, 1001,
                     {"protocol_version": 1001, "little_endian": True,
                      "type_sizes": {"short": 2, "int": 4, "long": 8}}):
        f.write(pickle.dumps(header, protocol=2))
      f.write(data_pkl)
      f.write(pickle.dumps(sorted(keys.values()), protocol=2))
      for key in sorted(keys.values()):
        storage = storages[int(key)]
        f.write(struct.pack("<q", storage.size) + storage.astype(storage.dtype.newbyteorder("<"))
                .tobytes())
    return
  folder = os.path.splitext(os.path.basename(path))[0]
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    _write_stored_record(archive, f"{folder}/data.pkl", data_pkl)
    _write_stored_record(archive, f"{folder}/byteorder", b"little")
    for key, storage in zip(sorted(keys.values(), key=int), storages):
      _write_stored_record(archive, f"{folder}/data/{key}", storage.tobytes())
    _write_stored_record(archive, f"{folder}/version", b"3\n")


# ------------------------------------------------------------------- random published weights


def random_inception_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """Every tensor of pytorch-fid's file, in its names and shapes, with He-scaled random convs."""
  from mxq_jax.evaluation import inception
  rng = np.random.default_rng(seed)
  state = {}
  for name, (out, cin, kh, kw) in inception.conv_shapes().items():
    fan_in = cin * kh * kw
    state[f"{name}.conv.weight"] = (rng.standard_normal((out, cin, kh, kw), np.float32)
                                    * np.float32(np.sqrt(2.0 / fan_in)))
    state[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, out).astype(np.float32)
    state[f"{name}.bn.bias"] = rng.uniform(-0.1, 0.1, out).astype(np.float32)
    state[f"{name}.bn.running_mean"] = rng.uniform(-0.1, 0.1, out).astype(np.float32)
    state[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, out).astype(np.float32)
    state[f"{name}.bn.num_batches_tracked"] = np.array(0, np.int64)
  state["fc.weight"] = rng.standard_normal((1008, 2048), np.float32) * np.float32(0.01)
  state["fc.bias"] = np.zeros(1008, np.float32)
  return state


def tiny_clip_config(width: int = 64, layers: int = 2, heads: int = 2) -> dict:
  """A config.json in the published layout, narrower and shallower; vocabulary and 224 px kept."""
  text = {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": heads,
          "num_hidden_layers": layers, "max_position_embeddings": 77, "vocab_size": 49408,
          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 2}
  vision = {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": heads,
            "num_hidden_layers": layers, "image_size": 224, "patch_size": 32,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
  return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 512,
          "logit_scale_init_value": 2.6592, "text_config": text, "text_config_dict": None,
          "vision_config": vision, "vision_config_dict": None}


def random_clip_tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Every tensor of Hugging Face's CLIPModel for `config`, in its names and shapes."""
  from mxq_jax.evaluation import clip
  rng = np.random.default_rng(seed)
  tensors = {}
  for name, shape in clip.expected_shapes(clip.config_from_json(config)).items():
    if name.endswith(("layer_norm1.weight", "layer_norm2.weight", "layernorm.weight",
                      "layrnorm.weight", "final_layer_norm.weight")):
      tensors[name] = np.ones(shape, np.float32)
    else:
      scale = 1.0 / np.sqrt(shape[-1]) if len(shape) >= 2 else 0.02
      tensors[name] = (rng.standard_normal(shape, np.float32) * np.float32(scale))
  tensors["logit_scale"] = np.array(np.log(100.0), np.float32)
  # Older exports also hold the position ids buffers; readers must ignore them.
  tensors["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
  return tensors


def write_clip_dir(folder: str, config: dict, tensors: dict[str, np.ndarray],
                   vocab: dict[str, int], merges: list[str]) -> str:
  """A folder laid out as huggingface.co/openai/clip-vit-base-patch32 ships it."""
  from mxq_jax.evaluation import weights_io
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  weights_io.write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
  with open(os.path.join(folder, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  with open(os.path.join(folder, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  return folder


# A slice of CLIP's published vocabulary: the 29 merges (in their published order) and the
# pieces with their published ids that three test captions need. BPE applies the lowest-ranked
# merge present, so merges never applied to these captions can be left out without changing
# their tokens. Checked against OpenAI's own tokenizer on the full vocabulary.
CLIP_MERGES = [
    "i n", "t h", "o r", "t o</w>", "i s</w>", "a t</w>", "e d</w>", "o f</w>", "s h",
    "' s</w>", "b e", "i r", "th is</w>", "h o", "p o", "d o", "t ed</w>", "p ho", "b ir",
    "or t</w>", "pho to</w>", "a k</w>", "do g</w>", "c at</w>", "sh ort</w>", "bir d</w>",
    "in ted</w>", "po inted</w>", "be ak</w>",
]
CLIP_VOCAB = {
    "!</w>": 256, ",</w>": 267, "a</w>": 320, "is</w>": 533, "of</w>": 539, "'s</w>": 568,
    "this</w>": 589, "photo</w>": 1125, "dog</w>": 1929, "cat</w>": 2368, "short</w>": 3005,
    "bird</w>": 3329, "pointed</w>": 20703, "beak</w>": 36498, "<|startoftext|>": 49406,
    "<|endoftext|>": 49407,
}


def write_tiny_clip_dir(folder: str, seed: int = 0) -> str:
  """A CLIP folder in the published layout, 2 layers of width 64, with CLIP_VOCAB/MERGES."""
  config = tiny_clip_config()
  return write_clip_dir(folder, config, random_clip_tensors(config, seed), CLIP_VOCAB,
                        CLIP_MERGES)
