"""Checkpoint compatibility: a checkpoint of a differently shaped model is refused in one line
that names the differing fields; fields added to the schema later match at their old value."""

import pytest

from mxq_jax import config_lib
from mxq_jax.training import checkpoints


def test_a_matching_record_or_none_passes():
  signature = {"embed_dim": 16, "image_channels": (8, 16)}
  checkpoints.check_compatible(None, signature, "D")  # no checkpoint yet.
  # JSON stores tuples as lists: the same model.
  checkpoints.check_compatible({"signature": {"embed_dim": 16, "image_channels": [8, 16]}},
                               signature, "D")
  with pytest.raises(config_lib.ConfigError):  # while another width is refused.
    checkpoints.check_compatible({"signature": {"embed_dim": 16, "image_channels": [8, 32]}},
                                 signature, "D")


def test_a_different_model_is_refused_naming_the_fields():
  saved = {"signature": {"embed_dim": 16, "codebook_size": 32, "a": 1, "b": 2, "c": 3}}
  with pytest.raises(config_lib.ConfigError) as error:
    checkpoints.check_compatible(
        saved, {"embed_dim": 32, "codebook_size": 64, "a": 0, "b": 0, "c": 3}, "W/stage1")
  message = str(error.value)
  assert message.startswith("W/stage1 holds checkpoints of a different model (")
  assert "a: checkpoint 1 vs config 0; b: checkpoint 2 vs config 0; codebook_size: " in message
  assert message.count(" vs config ") == 3 and "; ...)" in message  # 4 diffs, 3 shown.
  assert "\n" not in message and "--workdir" in message


@pytest.mark.parametrize("field, old_value", sorted(checkpoints.LATER_FIELDS.items()))
def test_fields_added_later_match_older_checkpoints_at_their_implicit_value(field, old_value):
  older = {"signature": {"embed_dim": 16}}  # written before `field` existed.
  checkpoints.check_compatible(older, {"embed_dim": 16, field: old_value}, "D")
  with pytest.raises(config_lib.ConfigError, match=f"{field}: checkpoint None vs config"):
    checkpoints.check_compatible(older, {"embed_dim": 16, field: "something else"}, "D")


def test_the_optimizer_is_checked_where_the_checkpoint_recorded_it():
  older = {"signature": {"embed_dim": 16, "stage1": {"embed_dim": 16}}}  # before it was.
  current = {"embed_dim": 16, "optimizer": "adamw",
             "stage1": {"embed_dim": 16, "optimizer": "adamw"}}
  checkpoints.check_compatible(older, current, "D")
  saved = {"signature": dict(current, optimizer="clip_by_global_norm, adamw")}
  with pytest.raises(config_lib.ConfigError, match="optimizer: checkpoint 'clip_by_global_norm"):
    checkpoints.check_compatible(saved, current, "D")


def test_nested_signatures_are_compared_too():
  saved = {"signature": {"stage1": {"fusion": "transformer", "embed_dim": 16}}}
  checkpoints.check_compatible(saved, {"stage1": {"embed_dim": 16}}, "D")
  with pytest.raises(config_lib.ConfigError, match="stage1: checkpoint"):
    checkpoints.check_compatible(saved, {"stage1": {"embed_dim": 8}}, "D")


def test_reading_a_missing_directory_creates_nothing(tmp_path):
  directory = str(tmp_path / "none" / "checkpoints")
  assert checkpoints.latest_step(directory) is None
  assert checkpoints.read_latest_meta(directory) is None
  checkpoints.check_directory(directory, {"embed_dim": 16})
  assert not (tmp_path / "none").exists()
