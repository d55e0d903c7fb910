r"""The paper's ablations trained, scored and tabulated side by side: `mxq_jax.ablations`.

  python -m mxq_jax.ablations --config=configs/synthetic.py --workdir=DIR \
      [--seeds=0,1] [--variants=mxq_vae,no_masking,separate_no_fusion,own_decoders]

Each (variant, seed) runs `run.train_and_evaluate` into DIR/<variant>/seed_<s>, with the
variant's overrides (`variants()`) applied over the config and config.seed = s: the same command
skips finished runs and resumes interrupted ones. Then DIR/ablations.md gets one row per
variant from the evaluate stage's DIR/<variant>/seed_<s>/samples/metrics.json: the mean over
seeds, and the sample standard deviation where there are several.

Config overrides apply to every variant, so a shorter budget is a matter of flags, e.g.
  --config.vqvae.optim.num_steps=2000 --config.prior.optim.num_steps=900 \
  --config.evaluation.num_samples=500
(use a new DIR for a new budget: a finished run is not retrained to fewer steps).
"""

import functools
import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from mxq_jax import config_lib, files, run
from mxq_jax.evaluation import evaluator

TABLE_NAME = "ablations.md"

# (header, metrics.json key, decimals): what the table shows, in order. Arrows: which way is
# better. The metrics are defined in `mxq_jax.evaluate`'s docstring.
COLUMNS = (
    ("coherence ↑", "coherence", 3),
    ("digit agr. ↑", "digit_agreement", 3),
    ("color agr. ↑", "color_agreement", 3),
    ("position agr. ↑", "position_agreement", 3),
    ("size agr. ↑", "size_agreement", 3),
    ("caption validity ↑", "caption_validity", 3),
    ("attribute TVD ↓", "attribute_tvd", 3),
    ("combinations ↑", "combinations", 1),
    ("feature FID ↓", "feature_fid", 2),
    ("novelty ↑", "novelty", 3),
    ("stage-1 image digit kept ↑", "stage1_image_digit_kept", 3),
    ("stage-1 pair kept ↑", "stage1_pair_kept", 3),
    ("image from caption: digit ↑", "from_caption_image_digit_kept", 3),
    ("caption from image: digit ↑", "from_image_caption_digit_kept", 3),
)


def variants() -> dict[str, dict[str, object]]:
  """Variant name -> config overrides (dotted field -> value), applied over the given config.

  mxq_vae:            the config as given (the paper's model: fusion Transformer, one shared
                      codebook, cross decoders, masked inputs).
  no_masking:         trained on unmasked pairs (image and text masking ratios 0): does masking
                      make the codes carry cross-modal meaning?
  separate_no_fusion: no fusion Transformer and one codebook per modality (K codes each, text
                      ids offset by K); the codes are still concatenated, modelled by the same
                      prior and read by the same cross decoders: no joint code space.
  own_decoders:       fusion and the shared codebook, but each decoder reads only its own
                      modality's code positions: no cross decoding.
  """
  return {
      "mxq_vae": {},
      "no_masking": {"masking.image_ratio": 0.0, "masking.text_ratio": 0.0},
      "separate_no_fusion": {"vqvae.fusion": "none", "vqvae.codebooks": "separate"},
      "own_decoders": {"vqvae.decoder_inputs": "own"},
  }


def variant_config(config: ml_collections.ConfigDict, overrides: Mapping[str, object],
                   seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` (dotted fields, which must exist) and seed = `seed`."""
  config = config.copy_and_resolve_references().lock()  # locked: a misspelt field raises.
  for path, value in overrides.items():
    *parents, field = path.split(".")
    setattr(functools.reduce(getattr, parents, config), field, value)
  config.seed = seed
  return config


def run_dir(workdir: str, variant: str, seed: int) -> str:
  return os.path.join(workdir, variant, f"seed_{seed}")


def read_metrics(run_workdir: str) -> dict | None:
  """A run's evaluate metrics (samples/metrics.json), or None when it has none yet."""
  path = os.path.join(run.samples_dir(run_workdir), evaluator.METRICS_NAME)
  return files.read_json(path) or None


# ------------------------------------------------------------------------------- the table


def _cell(values: Sequence[float], num_seeds: int, decimals: int) -> str:
  """Mean [± sample std], and (n=k) when only k of the row's seeds have the metric."""
  if not values:
    return "—"
  text = f"{np.mean(values):.{decimals}f}"
  if len(values) > 1:
    text += f" ± {np.std(values, ddof=1):.{decimals}f}"
  if len(values) < num_seeds:
    text += f" (n={len(values)})"
  return text


def _describe(overrides: Mapping[str, object]) -> str:
  if not overrides:
    return "the config as given"
  return ", ".join(f"`{path}={value}`" for path, value in overrides.items())


def ablation_table(results: Mapping[str, Mapping[int, Mapping[str, float] | None]],
                   command: str) -> str:
  """Markdown: one row per variant of `results` (variant -> seed -> metrics, None: missing)."""
  headers = ["variant", *(header for header, _, _ in COLUMNS), "seeds"]
  lines = [
      "# MXQ-VAE ablations", "", "```", command, "```", "",
      "| " + " | ".join(headers) + " |",
      "|" + "---|" + "---:|" * len(COLUMNS) + "---|",
  ]
  for variant, by_seed in results.items():
    done = {seed: m for seed, m in by_seed.items() if m is not None}
    cells = [_cell([float(m[key]) for m in done.values() if key in m], len(done), decimals)
             for _, key, decimals in COLUMNS]
    seeds = ", ".join(map(str, done)) or "none"
    missing = [seed for seed in by_seed if seed not in done]
    if missing:
      seeds += f" (no metrics: {', '.join(map(str, missing))})"
    lines.append("| " + " | ".join([variant, *cells, seeds]) + " |")
  lines += [
      "",
      "Mean over the seeds listed, ± the sample standard deviation where there are several. "
      "—: no seed of the variant has the metric; (n=k): only k seeds have it. The metrics are "
      "described in `mxq_jax/evaluation/evaluator.py`.",
      "",
  ]
  known = variants()
  lines += [f"- `{name}`: {_describe(known[name])}" for name in results if name in known]
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- the run


def share_classifier(workdir: str, variant_dir: str, seed: int) -> None:
  """One attribute classifier per seed for every variant: it depends on the data and the seed
  only, so each variant would train the very same network (minutes each). The first variant's
  is kept in DIR/classifier_seed_S and copied into each later variant's workdir."""
  shared, own = os.path.join(workdir, f"classifier_seed_{seed}"), os.path.join(variant_dir,
                                                                              "classifier")
  if jax.process_index() != 0:
    return
  if files.is_dir(shared) and not files.exists(own):
    files.copy_tree(shared, own)
  elif files.is_dir(own) and not files.exists(shared):
    # Renamed whole: never a half-copied classifier. On gs:// the rename too copies object by
    # object: a crash inside it can leave part of one, to delete by hand.
    files.copy_tree(own, f"{shared}.tmp")
    files.rename(f"{shared}.tmp", shared)


def run_ablations(config: ml_collections.ConfigDict, workdir: str, names: Sequence[str],
                  seeds: Sequence[int], command: str) -> str:
  """Trains and evaluates every (variant, seed) still unfinished; writes and returns the table.

  Every variant's config is validated before anything trains, so a bad override fails at once.
  """
  overrides = variants()
  configs = {(name, seed): variant_config(config, overrides[name], seed)
             for name in names for seed in seeds}
  config_lib.validate(config, jax.device_count())  # the base config's errors need no prefix.
  for (name, _), variant in configs.items():
    try:
      config_lib.validate(variant, jax.device_count())
    except config_lib.ConfigError as error:
      raise config_lib.ConfigError(f"variant {name}: {error}") from None
  for (name, seed), variant in configs.items():
    logging.info("ablations: %s, seed %d", name, seed)
    share_classifier(workdir, run_dir(workdir, name, seed), seed)
    run.train_and_evaluate(variant, run_dir(workdir, name, seed))
    share_classifier(workdir, run_dir(workdir, name, seed), seed)
  results = {name: {seed: read_metrics(run_dir(workdir, name, seed)) for seed in seeds}
             for name in names}
  table = ablation_table(results, command)
  if jax.process_index() == 0:
    path = os.path.join(workdir, TABLE_NAME)
    files.write_text(path, table)
    logging.info("ablations: wrote %s", path)
  return table


def parse_selection(variant_flag: Sequence[str] | None,
                    seed_flag: Sequence[str]) -> tuple[list[str], list[int]]:
  """--variants and --seeds as lists (duplicates dropped); ConfigError (one line) if bad."""
  known = variants()
  names = list(dict.fromkeys(variant_flag or known))
  unknown = [name for name in names if name not in known]
  if unknown or not names:
    raise config_lib.ConfigError(
        f"--variants={','.join(variant_flag or [])}: unknown {', '.join(unknown) or 'empty'}; "
        f"use some of {','.join(known)}")
  try:
    seeds = list(dict.fromkeys(int(seed) for seed in seed_flag))
  except ValueError:
    seeds = []
  if not seeds:
    raise config_lib.ConfigError(
        f"--seeds={','.join(seed_flag)}: give comma-separated integers, e.g. --seeds=0,1")
  return names, seeds
