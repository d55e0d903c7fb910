"""The precision report (`python -m mxq_jax.bench --parts=precision`, `mxq_jax/hlo_report.py`)
on configs/synthetic.py:smoke with dropout on (the paper's 0.1): the bf16 train steps hold none
of the convolution forms that are slow on GPUs, their dots are bf16 x bf16 but for the listed
fp32 ones, and every op left in fp32 has a reason; the fp32 programs show what the detectors
find when the forms are there."""

import jax
import pytest

from conftest import load_config
from mxq_jax import aot_lib, hlo_report, sharding

ATTENTION = "attention logits and softmax (fp32 by policy)"
QUANTIZER = "quantizer: distances, code look-up, its losses, EMA codebook (fp32 by policy)"


def smoke_with_dropout():
  config = load_config("synthetic", "smoke")
  config.vqvae.dropout = config.prior.dropout = 0.1  # the paper's: flax's attention dropout path.
  return config


@pytest.fixture(scope="module")
def lowered():
  """{(program, dtype): analysis of the lowered train step} (lowering only: seconds)."""
  config = smoke_with_dropout()
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  analyses = {}
  for dtype in hlo_report.DTYPES:
    for program in aot_lib.run_programs(hlo_report.with_compute_dtype(config, dtype), mesh):
      if program.name in hlo_report.PROGRAMS:
        text = program.fn.lower(*program.args).as_text(dialect="hlo", debug_info=True)
        analyses[program.name, dtype] = hlo_report.analyze(text)
  return analyses


def test_bf16_convolutions_have_no_slow_form(lowered):
  bf16 = lowered["stage1/train", "bfloat16"]
  # The up-convs' 2x2 stride-1 phases (forward, input and weight gradients) remain.
  assert bf16["convolutions"] > 0
  assert all(form.endswith(", bf16xbf16->bf16") for form in bf16["convolution_forms"])
  assert bf16["slow_convolution_forms"] == {}
  assert not any("dilate" in form for form in bf16["convolution_forms"])
  # fp32 keeps flax's strided encoder convs (3 at :smoke): their weight gradients are
  # kernel-dilated, and the input gradients of the two that follow a conv input-dilated.
  assert lowered["stage1/train", "float32"]["slow_convolution_forms"] == {
      "input_dilated": 2, "kernel_dilated": 3}


@pytest.mark.parametrize("program", hlo_report.PROGRAMS)
def test_bf16_dots_are_bf16_but_the_listed_fp32_ones(lowered, program):
  bf16 = lowered[program, "bfloat16"]
  dots = bf16["dots_by_types"]
  assert dots["bf16xbf16->bf16"] > 0
  assert all(types == "bf16xbf16->bf16" for types in dots if types.endswith("->bf16"))
  fp32_dots = sum(count for types, count in dots.items() if types.endswith("->f32"))
  by_reason = {reason: c["dots"] for reason, c in bf16["fp32_ops_by_reason"].items()
               if c.get("dots")}
  assert sum(by_reason.values()) == fp32_dots > 0
  assert set(by_reason) <= {ATTENTION, QUANTIZER}
  # No bf16 scatter-add (the embeddings' gradients go into their fp32 tables).
  assert not any(kind.startswith("bf16") for kind in bf16["scatters_by_dtype_and_reducer"])
  assert "f32 add" in bf16["scatters_by_dtype_and_reducer"]


@pytest.mark.parametrize("program, expected", [
    ("stage1/train", {"losses and metrics", "quantizer", "attention", "layer norm", "optimizer",
                      "embedding", "exact GELU", "dropout"}),
    ("stage2/train", {"losses and metrics", "attention", "layer norm", "optimizer",
                      "embedding", "dropout"}),
])
def test_every_fp32_op_of_a_bf16_program_has_a_reason(lowered, program, expected):
  reasons = lowered[program, "bfloat16"]["fp32_ops_by_reason"]
  assert not [reason for reason in reasons if reason.startswith("unexplained")]
  assert [key for key in expected if not any(key in reason for reason in reasons)] == []
  # In the fp32 program the model's own ops are fp32 and no reason explains them: the
  # classifier does not explain everything away.
  fp32 = lowered[program, "float32"]["fp32_ops_by_reason"]
  assert any(reason.startswith("unexplained: models/") for reason in fp32)


# The lowered form of optax's `-learning_rate`, which carries no source location of its own.
UNLOCATED = """HloModule jit_step, entry_computation_layout={(f32[], f32[4]{0})->(f32[], f32[4]{0})}

ENTRY main.1 {
  learning_rate.1 = f32[] parameter(0), metadata={op_name="learning_rate"}
  neg.1 = f32[] negate(learning_rate.1)
  x.1 = f32[4]{0} parameter(1), metadata={op_name="x"}
  neg.2 = f32[4]{0} negate(x.1)
  ROOT tuple.1 = (f32[], f32[4]{0}) tuple(neg.1, neg.2)
}
"""


def test_an_op_without_a_location_is_placed_by_the_argument_it_reads():
  reasons = hlo_report.analyze(UNLOCATED)["fp32_ops_by_reason"]
  assert reasons == {
      "step bookkeeping: gradient norm, learning rate, step": {"ops": 1, "elements": 1},
      "unexplained: computed from the argument x.1": {"ops": 1, "elements": 4}}


def test_report_of_compiled_programs(monkeypatch):
  """precision_report and its table, on the prior alone (two compiles of seconds)."""
  monkeypatch.setattr(hlo_report, "PROGRAMS", ("stage2/train",))
  config = smoke_with_dropout()
  report = hlo_report.precision_report(
      config, sharding.make_mesh(config.mesh, jax.devices()[:1]), where="compiled_cpu")
  assert list(report) == ["stage2/train"]
  fp32, bf16 = (report["stage2/train"][dtype] for dtype in hlo_report.DTYPES)
  for analyses in (fp32, bf16):
    assert set(analyses) == {"lowered", "compiled_cpu"}
    assert analyses["compiled_cpu"]["gflops"] > 0
    assert analyses["compiled_cpu"]["gbytes_accessed"] > 0
  # bf16 activations: fewer bytes in the lowered program, more converts.
  assert bf16["lowered"]["gbytes_accessed"] < fp32["lowered"]["gbytes_accessed"]
  assert bf16["lowered"]["converts"] > fp32["lowered"]["converts"]
  # XLA:CPU computes bf16 in fp32: its compiled program is not classified.
  assert isinstance(bf16["compiled_cpu"]["fp32_ops_by_reason"], str)
  table = hlo_report.format_table(report)
  assert "stage2/train  bfloat16  lowered" in table
  assert "stage2/train bfloat16 (lowered):" in table and "unexplained" not in table
