"""The config schema: size presets per variant, validation rows, JSON round trip, typed configs."""

import dataclasses
import json

import pytest

from mxq_jax import config_lib
from conftest import REPO, load_config

common = config_lib.load_beside(REPO / "configs" / "common.py", "common")

VARIANTS = [("synthetic", None), ("synthetic", "paper"), ("synthetic", "smoke"),
            ("synthetic", "grid_rotary"), ("synthetic", "small_prior"), ("synthetic", "fast"),
            ("mnist", None), ("mnist", "smoke"), ("cub", None), ("cub", "smoke"),
            ("flowers", None), ("flowers", "smoke"), ("coco", None), ("coco", "smoke")]


def smoke():
  return load_config("synthetic", "smoke")


def get_field(config, path):
  for name in path.split("."):
    config = config[name]
  return config


def set_field(config, path, value):
  *parents, name = path.split(".")
  for parent in parents:
    config = config[parent]
  config[name] = value


# ------------------------------------------------------------------------------------ presets

# Key sizes of every configs/NAME.py:ARG: (name, px, tokens, grid, text positions, K, D, vocab,
# stage-1 batch, stage-1 steps, prior width, prior batch). Pinned so that a change to a table or
# a config file shows up here.
KEY_SIZES = {
    ("synthetic", None): ("caption_digits", 32, 24, 8, 16, 512, 64, 96, 32, 5_000, 128, 64),
    ("synthetic", "paper"): ("caption_digits", 64, 64, 8, 8, 256, 128, 96, 384, 5_000, 512, 384),
    ("synthetic", "smoke"): ("caption_digits", 16, 24, 2, 8, 32, 16, 96, 16, 6, 32, 16),
    ("synthetic", "grid_rotary"): ("caption_digits", 32, 24, 8, 16, 512, 64, 96, 32, 5_000, 128, 64),
    ("synthetic", "small_prior"): ("caption_digits", 32, 24, 8, 16, 512, 64, 96, 32, 5_000, 96, 64),
    ("synthetic", "fast"): ("caption_digits", 32, 24, 8, 16, 512, 64, 96, 32, 5_000, 64, 64),
    ("mnist", None): ("caption_mnist", 64, 64, 8, 8, 256, 128, 96, 384, 20_000, 512, 384),
    ("mnist", "smoke"): ("caption_mnist", 16, 24, 2, 8, 32, 16, 96, 16, 6, 32, 16),
    ("cub", None): ("cub", 128, 80, 16, 20, 256, 128, 2_048, 128, 20_000, 512, 128),
    ("cub", "smoke"): ("cub", 16, 24, 2, 8, 32, 16, 48, 16, 6, 32, 16),
    ("flowers", None): ("flowers", 128, 80, 16, 20, 256, 128, 2_048, 128, 20_000, 512, 128),
    ("flowers", "smoke"): ("flowers", 16, 24, 2, 8, 32, 16, 48, 16, 6, 32, 16),
    ("coco", None): ("coco", 128, 80, 16, 20, 256, 128, 8_192, 128, 20_000, 512, 128),
    ("coco", "smoke"): ("coco", 16, 24, 2, 8, 32, 16, 48, 16, 6, 32, 16),
}


@pytest.mark.parametrize("name,arg", VARIANTS)
def test_each_variant_has_its_sizes_and_validates(name, arg):
  config = load_config(name, arg)
  assert (config.data.name, config.data.image_size, config.data.text_length,
          config_lib.image_grid_size(config), config_lib.text_positions(config),
          config.vqvae.codebook_size, config.vqvae.embed_dim, config.data.vocab_size,
          config.vqvae.optim.batch_size, config.vqvae.optim.num_steps, config.prior.dim,
          config.prior.optim.batch_size) == KEY_SIZES[name, arg]
  config_lib.validate(config, num_devices=8)  # a TPU v5e-8's batch split.


def test_every_variant_is_pinned():
  assert set(KEY_SIZES) == set(VARIANTS)


@pytest.mark.parametrize("name", ["cub", "flowers", "coco"])
def test_hardware_variants_are_the_paper_config_in_bf16_at_their_batch(name):
  """:gpu, :v5e-8 and :v5e-32 change only precision and batch, and split over their chips."""
  full = load_config(name, None).to_dict()
  for arg, chips, batch in (("gpu", 1, 128), ("v5e-8", 8, 128), ("v5e-32", 32, 384)):
    config = load_config(name, arg)
    config_lib.validate(config, num_devices=chips)
    assert config.vqvae.dtype == config.prior.dtype == "bfloat16", arg
    assert config.vqvae.optim.batch_size == config.prior.optim.batch_size == batch, arg
    expected = {**full, "vqvae": {**full["vqvae"], "dtype": "bfloat16"},
                "prior": {**full["prior"], "dtype": "bfloat16"}}
    for group in ("vqvae", "prior"):
      expected[group]["optim"] = {**full[group]["optim"], "batch_size": batch}
    assert config.to_dict() == expected, arg


def test_paper_sizes_are_the_schema_defaults():
  """PAPER_SIZES states base_config()'s reference sizes: applying it changes nothing."""
  config = config_lib.base_config()
  config_lib.apply_table(config, common.PAPER_SIZES)
  assert config.to_dict() == config_lib.base_config().to_dict()


@pytest.mark.parametrize("table", ["PAPER_SIZES", "PHOTO_SIZES", "PHOTO_DATASET", "SMOKE_SIZES",
                                   "PHOTO_SMOKE_SIZES"])
def test_a_table_sets_exactly_its_fields(table):
  config = config_lib.base_config()
  config_lib.apply_table(config, getattr(common, table))
  for path, value in getattr(common, table).items():
    assert get_field(config, path) == value, path
  config_lib.validate(config)


def test_smoke_variants_differ_from_the_full_ones_only_by_the_smoke_table():
  """Each :smoke is its full config with the smoke table applied last (later fields win)."""
  for name, smoke_table in (("synthetic", common.SMOKE_SIZES), ("mnist", common.SMOKE_SIZES),
                            ("cub", common.PHOTO_SMOKE_SIZES)):
    expected = load_config(name)
    config_lib.apply_table(expected, smoke_table)
    assert load_config(name, "smoke").to_dict() == expected.to_dict(), name


def test_photo_configs_share_the_photo_table():
  for name in ("cub", "flowers", "coco"):
    config = load_config(name)
    assert all(get_field(config, path) == value
               for path, value in common.PHOTO_DATASET.items()), name


def test_apply_table_refuses_fields_the_schema_lacks():
  config = config_lib.base_config()
  for path in ("vqvae.embed_dims", "vqvae.optim.steps", "nothing.at_all", "seed.x"):
    with pytest.raises(config_lib.ConfigError, match=f"{path}: no such config field"):
      config_lib.apply_table(config, {path: 1})
  assert config.to_dict() == config_lib.base_config().to_dict()


def test_unknown_config_argument():
  with pytest.raises(config_lib.ConfigError,
                     match="unknown config argument 'tiny'; use one of default, paper, smoke"):
    load_config("synthetic", "tiny")
  with pytest.raises(config_lib.ConfigError, match="use one of default, smoke, gpu, v5e-8, v5e-32$"):
    load_config("cub", "paper")


def test_config_files_load_from_any_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert load_config("coco", "smoke").data.vocab_size == 48


# --------------------------------------------------------------------------------- validation

# A value that breaks each row of FIELD_RULES / OPTIM_RULES / SAMPLING_RULES.
BAD_FIELDS = {
    "vqvae.image_channels": (8, 8, 8, 8, 8, 8),
    "vqvae.text_channels": (16, 16, 16),
    "data.vocab_size": 8,
    "data.split": "zero_shot",
    "data.caption_choice": "last",
    "masking.image_patch": 0,
    "masking.image_ratio": 1.0,
    "masking.text_ratio": -0.1,
    "vqvae.fusion_heads": 0,
    "vqvae.codebook_update": "adam",
    "vqvae.codebook_init": "zeros",
    "vqvae.cross_mixer_init": "eye",
    "vqvae.fusion": "mlp",
    "vqvae.codebooks": "three",
    "vqvae.decoder_inputs": "mine",
    "vqvae.dtype": "float16",
    "prior.num_layers": 0,
    "prior.num_heads": 0,
    "prior.dim": 0,
    "prior.mlp_dim": 0,
    "prior.dropout": 1.0,
    "prior.dtype": "float64",
    "prior.code_order": "random",
    "prior.grid_rotary_dims": -4,
    "mesh.fsdp": 0,
    "evaluation.num_samples": 0,
}
BAD_OPTIM = {"num_steps": 0, "batch_size": 0, "learning_rate": 0.0, "warmup_steps": -1,
             "log_every": 0, "eval_every": -1, "checkpoint_every": 0, "keep_checkpoints": 0}
BAD_SAMPLING = {"top_k": 0, "top_p": 0.0, "temperature": -1.0, "image_temperature": 0.0}


def test_every_rule_has_a_bad_value_here():
  assert [field for field, _, _ in config_lib.FIELD_RULES] == list(BAD_FIELDS)
  assert [field for field, _, _ in config_lib.OPTIM_RULES] == list(BAD_OPTIM)
  assert [field for field, _, _ in config_lib.SAMPLING_RULES] == list(BAD_SAMPLING)
  assert len(config_lib.CROSS_RULES) == len(BAD_CROSS)


@pytest.mark.parametrize("field,value", BAD_FIELDS.items())
def test_field_rule_names_the_field_and_value(field, value):
  config = smoke()
  set_field(config, field, value)
  shown = repr(value) if isinstance(value, str) else str(value)
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config)
  assert str(error.value).startswith(f"config.{field}={shown}")


@pytest.mark.parametrize("optim", config_lib.OPTIMS)
@pytest.mark.parametrize("field,value", BAD_OPTIM.items())
def test_optim_rule_names_the_optimizer(optim, field, value):
  config = smoke()
  set_field(config, f"{optim}.{field}", value)
  with pytest.raises(config_lib.ConfigError, match=rf"^config\.{optim}\.{field}={value} must be"):
    config_lib.validate(config)


@pytest.mark.parametrize("field,value", BAD_SAMPLING.items())
def test_sampling_rule_in_the_config_and_as_flags(field, value):
  config = smoke()
  config.sampling[field] = value
  with pytest.raises(config_lib.ConfigError, match=rf"^config\.sampling\.{field}={value} must be"):
    config_lib.validate(config)
  settings = {**dict(top_k=1, top_p=1.0, temperature=1.0, image_temperature=None), field: value}
  with pytest.raises(config_lib.ConfigError, match=rf"^--{field}={value} must be"):
    config_lib.validate_sampling(**settings)


# Each row of CROSS_RULES, in order: (field -> value, the message).
BAD_CROSS = [
    ({"data.image_size": 36},
     "config.data.image_size=36 must be a positive multiple of 8: the image encoder halves it 3 "
     "times (len(config.vqvae.image_channels))"),
    ({"masking.image_patch": 3},
     "config.masking.image_patch=3 must divide config.data.image_size=16"),
    ({"vqvae.text_kernel": 9},
     "config.data.text_length=24 is too short for config.vqvae.text_kernel=9: four VALID convs "
     "need text_length > 32; raise text_length or lower text_kernel"),
    ({"vqvae.fusion_heads": 3}, "config.vqvae.embed_dim=16 must be divisible by "
     "config.vqvae.fusion_heads=3"),
    ({"vqvae.codebook_update": "gradient"},
     "config.vqvae.dead_code_restart and codebook_init='data' need codebook_update='ema'; set "
     "--config.vqvae.codebook_update=ema, or dead_code_restart=False and codebook_init=uniform "
     "for the reference's gradient codebook"),
    ({"vqvae.text_mix_hidden": 15},
     "config.vqvae.cross_mixer_init='routing' needs config.vqvae.text_mix_hidden >= 16 (2 x the "
     "text positions); raise it or use 'random'"),
    ({"prior.num_heads": 3}, "config.prior.dim=32 must be divisible by config.prior.num_heads=3"),
    ({"prior.grid_rotary_dims": 20}, "config.prior.grid_rotary_dims=20 must be a multiple of 4 "
     "and at most the head dim, prior.dim / prior.num_heads = 16"),
]


@pytest.mark.parametrize("fields,message", BAD_CROSS)
def test_cross_field_rule_message(fields, message):
  config = smoke()
  for path, value in fields.items():
    set_field(config, path, value)
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config)
  assert str(error.value) == message


@pytest.mark.parametrize("fields", [
    {"vqvae.codebook_update": "gradient", "vqvae.codebook_init": "uniform",
     "vqvae.dead_code_restart": False},  # the reference's codebook.
    {"vqvae.cross_mixer_init": "random", "vqvae.text_mix_hidden": 2},
    {"sampling.image_temperature": None, "sampling.top_p": 1.0},
    {"vqvae.image_channels": (8,), "masking.image_patch": 16},
])
def test_good_configs_pass(fields):
  config = smoke()
  for path, value in fields.items():
    set_field(config, path, value)
  config_lib.validate(config, num_devices=8)  # raises ConfigError on a bad config.
  with pytest.raises(config_lib.ConfigError):  # the same config on devices it cannot split over.
    config_lib.validate(config, num_devices=config.vqvae.optim.batch_size + 1)


def test_field_messages_say_the_fix():
  config = smoke()
  config.vqvae.codebook_update = "adam"
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config)
  assert str(error.value) == "config.vqvae.codebook_update='adam': use 'ema' or 'gradient'"
  config = smoke()
  config.vqvae.image_channels = ()
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config)
  assert str(error.value) == ("config.vqvae.image_channels=(): give 1 to 5 widths, one per "
                              "stride-2 conv (the reference has 3)")


def test_batch_must_split_over_the_devices():
  config = smoke()
  config.prior.optim.batch_size = 12
  config_lib.validate(config, num_devices=4)
  config_lib.validate(config)  # no device count: not checked.
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config, num_devices=8)
  assert str(error.value) == ("config.prior.optim.batch_size=12 must be divisible by the 8 "
                              "devices of the mesh; pick a multiple")
  with pytest.raises(config_lib.ConfigError, match="^--batch_size=6 must be divisible by the 4"):
    config_lib.check_divisible_batch(6, 4, "--batch_size")
  config_lib.check_divisible_batch(8, 4, "--batch_size")


def test_stages():
  assert config_lib.parse_stages("stage2, stage1") == ("stage1", "stage2")
  config = smoke()
  config.stages = "stage1,train"
  with pytest.raises(config_lib.ConfigError, match="config.stages='stage1,train': use a comma"):
    config_lib.validate(config)


# ---------------------------------------------------------------------------------- from JSON


def test_from_json_file_round_trip(tmp_path):
  config = load_config("cub", "smoke")
  path = tmp_path / "config.json"
  path.write_text(config.to_json())
  restored = config_lib.from_json_file(str(path))
  assert restored.to_dict() == config.to_dict()
  assert restored.vqvae.image_channels == (8, 16, 16)  # a tuple again, not a list.
  config_lib.validate(restored, num_devices=8)


def test_from_json_file_fills_fields_added_later(tmp_path):
  stored = smoke().to_dict()
  del stored["vqvae"]["decoder_inputs"]
  (tmp_path / "config.json").write_text(json.dumps(stored))
  restored = config_lib.from_json_file(str(tmp_path / "config.json"))
  assert restored.vqvae.decoder_inputs == config_lib.base_config().vqvae.decoder_inputs


# ------------------------------------------------------------------------------ typed configs


def test_mxq_vae_config_reads_the_config():
  config = smoke()
  config.vqvae.update(codebooks="separate", fusion="none", decoder_inputs="own",
                      cross_mixer_init="random", dtype="bfloat16", codebook_l2_normalize=True)
  typed = config_lib.mxq_vae_config(config)
  assert (typed.grid_size, typed.text_positions) == (2, 8)
  assert typed.vocab_size == config.data.vocab_size
  assert typed.image_channels == (8, 16, 16) and isinstance(typed.text_channels, tuple)
  assert (typed.fusion, typed.decoder_inputs, typed.cross_mixer_init, typed.dtype) == (
      "none", "own", "random", "bfloat16")
  assert typed.quantizer == config_lib.quantizer_config(config)
  assert (typed.quantizer.codebook_size, typed.quantizer.codebooks, typed.quantizer.update,
          typed.quantizer.init, typed.quantizer.l2_normalize) == (32, "separate", "ema", "data",
                                                                  True)
  with pytest.raises(dataclasses.FrozenInstanceError):
    typed.embed_dim = 8


def test_typed_config_covers_every_model_field():
  """Every config.vqvae field the model's shape depends on reaches the typed config."""
  typed = dataclasses.asdict(config_lib.mxq_vae_config(smoke()))
  quantizer = typed.pop("quantizer")
  not_model = {"optim", "beta"}  # the optimizer and the loss weight: the train step's.
  renamed = {"codebook_size", "codebook_update", "codebook_init", "codebook_l2_normalize",
             "ema_decay", "dead_code_restart", "dead_code_threshold", "codebooks"}
  assert set(smoke().vqvae) - not_model - renamed <= set(typed)
  assert len(quantizer) == len(renamed)


@pytest.mark.parametrize("codebooks,num_codes", [("shared", 32), ("separate", 64)])
def test_model_vocabulary_is_code_vocabulary_size(codebooks, num_codes):
  from flax import nnx
  from mxq_jax.models.mxq_vae import MXQVAE
  config = smoke()
  config.vqvae.codebooks = codebooks
  model = nnx.eval_shape(lambda: MXQVAE(config_lib.mxq_vae_config(config), rngs=nnx.Rngs(0)))
  assert model.num_codes == config_lib.code_vocabulary_size(config) == num_codes


def test_flat_fields_are_the_dotted_names_apply_table_takes():
  config = load_config("synthetic", "smoke")
  flat = config_lib.flat_fields(config.to_dict())
  assert flat["vqvae.optim.num_steps"] == config.vqvae.optim.num_steps
  assert flat["vqvae.image_channels"] == str(config.vqvae.image_channels)  # non-scalars as str.
  scalars = {k: v for k, v in flat.items() if not isinstance(v, str)}
  rebuilt = config_lib.base_config()
  config_lib.apply_table(rebuilt, scalars)
  assert config_lib.flat_fields(rebuilt.to_dict()).items() >= scalars.items()
