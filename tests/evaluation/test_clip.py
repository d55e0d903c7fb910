"""CLIP's tokenizer against published token ids; its towers on random weights in HF's layout."""

import os

import numpy as np
import pytest
from PIL import Image

import weight_files
from mxq_jax import config_lib
from mxq_jax.evaluation import clip

# Token ids of OpenAI's tokenizer (the first is the one Hugging Face's docs show).
KNOWN_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407],
    "This bird's beak is SHORT, pointed!": [49406, 589, 3329, 568, 36498, 533, 3005, 267, 20703,
                                            256, 49407],
}


@pytest.fixture(scope="module")
def tokenizer():
  return clip.Tokenizer(weight_files.CLIP_VOCAB,
                        [tuple(m.split()) for m in weight_files.CLIP_MERGES])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return clip.load(weight_files.write_tiny_clip_dir(str(tmp_path_factory.mktemp("clip"))))


def test_tokenizer_gives_clips_ids(tokenizer):
  for text, ids in KNOWN_IDS.items():
    tokens = tokenizer([text])[0]
    assert tokens[:len(ids)].tolist() == ids, text
    assert not tokens[len(ids):].any()


def test_tokenizer_reads_the_published_files(tmp_path):
  folder = weight_files.write_tiny_clip_dir(str(tmp_path))
  tokenizer = clip.Tokenizer.from_files(os.path.join(folder, "vocab.json"),
                                        os.path.join(folder, "merges.txt"))
  assert tokenizer(["a photo of a cat"])[0, :7].tolist() == KNOWN_IDS["a photo of a cat"]


def test_long_captions_are_cut_to_77_tokens_ending_in_end_of_text(tokenizer):
  tokens = tokenizer(["a " * 200, "a cat"])
  assert tokens.shape == (2, 77) and tokens.dtype == np.int32
  assert tokens[0, 0] == 49406 and tokens[0, -1] == 49407 and (tokens[0, 1:-1] == 320).all()
  assert tokens[1, :4].tolist() == [49406, 320, 2368, 49407] and not tokens[1, 4:].any()


def test_pretokenize_follows_clips_pattern():
  assert clip.pretokenize("it's 42nd, ok!! <|endoftext|>") == [
      "it", "'s", "4", "2", "nd", ",", "ok", "!!", "<|endoftext|>"]
  assert clip.pretokenize("café x!'s ½") == ["café", "x", "!'", "s", "½"]
  assert clip.clean("  A “Curly”\tQuote &amp;  ﬁne ＡＢＣ ") == 'a "curly" quote & fine abc'


def test_published_layout():
  shapes = clip.expected_shapes(clip.ClipConfig())
  assert sum(int(np.prod(s)) for s in shapes.values()) == 151_277_313  # CLIP ViT-B/32.
  assert shapes["vision_model.embeddings.patch_embedding.weight"] == (768, 3, 32, 32)
  assert shapes["vision_model.embeddings.position_embedding.weight"] == (50, 768)
  assert shapes["text_model.encoder.layers.11.mlp.fc1.weight"] == (2048, 512)
  assert shapes["visual_projection.weight"] == (512, 768)
  assert shapes["logit_scale"] == ()
  published = {"projection_dim": 512, "text_config": {"hidden_size": 512,
               "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12,
               "hidden_act": "quick_gelu"}, "vision_config_dict": {"hidden_size": 768,
               "patch_size": 32, "num_attention_heads": 12}}
  assert clip.config_from_json(published) == clip.ClipConfig()


def test_embeddings_are_unit_512_d_and_deterministic(model):
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  image_emb = model.embed_images(images, batch_size=2)
  text_emb = model.embed_texts(["a photo of a cat", "a photo of a dog"], batch_size=2)
  for emb in (image_emb, text_emb):
    assert emb.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    assert not np.allclose(emb[0], emb[1])
  np.testing.assert_array_equal(model.embed_images(images, batch_size=2), image_emb)


def test_text_tower_is_causal_and_pools_at_end_of_text(model):
  tokens = np.zeros((2, 77), np.int32)
  tokens[:, :4] = [49406, 320, 2368, 49407]
  tokens[1, 4:] = 1929  # after <|endoftext|>: invisible to it under the causal mask.
  emb = np.asarray(clip.text_embeddings(model.params, model.config, tokens))
  np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)
  tokens[1, 2] = 1929  # before it: changes it.
  emb = np.asarray(clip.text_embeddings(model.params, model.config, tokens))
  assert not np.allclose(emb[0], emb[1], atol=1e-3)


def test_clip_score_definition():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((4, 512))
  assert clip.clip_score(a, a) == pytest.approx(100.0)
  assert clip.clip_score(a, 3.0 * a) == pytest.approx(100.0)
  assert clip.clip_score(a, -a) == 0.0  # negative similarity is clipped, not subtracted.
  e = np.eye(2)
  assert clip.clip_score(e, e[::-1]) == pytest.approx(0.0)
  half = np.array([[1.0, 0.0], [1.0, 0.0]])
  other = np.array([[0.5, np.sqrt(0.75)], [1.0, 0.0]])
  assert clip.clip_score(half, other) == pytest.approx((50.0 + 100.0) / 2)


def test_preprocess_resizes_the_shorter_side_and_center_crops():
  rng = np.random.default_rng(0)
  wide = rng.integers(0, 256, (100, 300, 3), dtype=np.uint8)
  resized = np.asarray(Image.fromarray(wide).resize((672, 224), Image.Resampling.BICUBIC))
  want = (resized[:, 224:448] / 255.0 - clip.IMAGE_MEAN) / clip.IMAGE_STD
  np.testing.assert_allclose(clip.preprocess(wide[None])[0], want, atol=1e-5)
  square = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  assert clip.preprocess(square).shape == (2, 224, 224, 3)


def test_missing_or_misshapen_files_are_one_line_config_errors(tmp_path):
  folder = weight_files.write_tiny_clip_dir(str(tmp_path / "a"))
  os.remove(os.path.join(folder, "merges.txt"))
  with pytest.raises(config_lib.ConfigError, match="has no merges.txt"):
    clip.load(folder)
  config = weight_files.tiny_clip_config()
  tensors = weight_files.random_clip_tensors(config)
  config["text_config"]["hidden_size"] = 32  # config.json and weights disagree.
  folder = weight_files.write_clip_dir(str(tmp_path / "b"), config, tensors,
                                       weight_files.CLIP_VOCAB, weight_files.CLIP_MERGES)
  with pytest.raises(config_lib.ConfigError, match=r"model.safetensors: 'text_model.embeddings"
                                                   r".token_embedding.weight' has shape "
                                                   r"\(49408, 64\), expected \(49408, 32\)") as e:
    clip.load(folder)
  assert "\n" not in str(e.value)
