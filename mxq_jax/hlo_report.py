r"""What a train step's program asks of the hardware, from its HLO text: the precision report.

`python -m mxq_jax.bench --config=CONFIG --parts=precision [--topology=v5e:2x2]` compiles the
stage-1 and prior train steps of CONFIG in float32 and in bfloat16 (`vqvae.dtype`,
`prior.dtype`; parameters and optimizer state stay float32 in both) and reports them side by
side (docs/precision.md reads the figures):

- FLOPs and bytes accessed (XLA's cost analysis);
- `convert` ops, and every convolution by its form (window, stride, padding, lhs/rhs dilation,
  feature groups, operand dtypes), flagging the forms that have no fast bf16 kernel on GPUs
  (`SLOW_FORMS`); dots by operand dtypes; gathers and scatters by dtype;
- in a bfloat16 program, every op still computing in float32, grouped by why (`REASONS`,
  matched on the op's source location, which the HLO metadata carries): losses, softmax, layer
  norm statistics, the quantizer, the optimizer... An op that no reason explains is listed
  with its source line as "unexplained".

Each program is analysed as lowered (the HLO JAX hands to every backend's compiler: the forms
cuDNN or the TPU compiler must map) and as compiled for this process's backend and, with a
topology, for a TPU slice's compile-only devices. XLA:CPU has no bf16 convolution or dot
kernels: its compiled bf16 program converts them to float32 (its fp32 ops are not classified).
XLA:TPU writes dots as convolutions of its own forms (the slow-form check is not applied to
them), and computes some bf16 elementwise ops in fp32 inside its fusions ("fp32 by the
compiler's choice").
"""

import dataclasses
import math
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence

import ml_collections

# ----------------------------------------------------------------------------- HLO text


@dataclasses.dataclass
class Instruction:
  name: str
  dtype: str  # element type of the result ("f32", "bf16", "s32", "pred"; "tuple").
  elements: int  # of the result (0 for tuples).
  opcode: str
  operands: list[str]
  attributes: str  # everything after the operand list.
  computation: str

  def attribute(self, key: str) -> str | None:
    found = re.search(rf"\b{key}=(\{{[^}}]*\}}|[^,\s]+)", self.attributes)
    return found.group(1) if found else None

  @property
  def stack_frame(self) -> int | None:
    found = re.search(r"stack_frame_id=(\d+)", self.attributes)
    return int(found.group(1)) if found else None

  @property
  def op_name(self) -> str:
    found = re.search(r'op_name="([^"]*)"', self.attributes)
    return found.group(1) if found else ""


@dataclasses.dataclass
class Module:
  computations: dict[str, list[Instruction]]  # in the text's order; callees come first.
  entry: str
  frames: dict[int, tuple[str, str, int, int]]  # id -> (file, function, line, parent id; 0).

  def instructions(self):
    for body in self.computations.values():
      yield from body

  def source(self, frame_id: int | None) -> list[tuple[str, str, int]]:
    """(file, function, line) of a stack frame and its callers, innermost first."""
    chain, seen = [], set()
    while frame_id and frame_id in self.frames and frame_id not in seen:
      seen.add(frame_id)
      file, function, line, frame_id = self.frames[frame_id]
      chain.append((file, function, line))
    return chain


_SHAPE = re.compile(r"([a-z][a-z0-9]*)\[([^\]]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _closing(text: str, start: int) -> int:
  """Index just past the bracket that closes the one at text[start]."""
  depth, pairs = 0, {"(": ")", "{": "}", "[": "]"}
  for i in range(start, len(text)):
    if text[i] in pairs:
      depth += 1
    elif text[i] in pairs.values():
      depth -= 1
      if depth == 0:
        return i + 1
  return len(text)


def _instruction(line: str, computation: str) -> Instruction | None:
  head = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*", line)
  if not head:
    return None
  rest = line[head.end():]
  if rest.startswith("("):  # a tuple's type
    end = _closing(rest, 0)
    dtype, elements, rest = "tuple", 0, rest[end:].lstrip()
  else:
    type_text, _, rest = rest.partition(" ")
    shape = _SHAPE.match(type_text)
    if not shape:
      return None
    dims = [d for d in re.sub(r"<=", "", shape.group(2)).split(",") if d.strip()]
    dtype, elements = shape.group(1), math.prod(int(d) for d in dims)
  opcode = re.match(r"([\w\-]+)\(", rest)
  if not opcode:
    return None
  end = _closing(rest, opcode.end() - 1)
  operands = [o.strip().lstrip("%") for o in rest[opcode.end():end - 1].split(",") if o.strip()]
  return Instruction(head.group(1), dtype, elements, opcode.group(1),
                     [o.split()[-1].lstrip("%") for o in operands], rest[end:], computation)


def _tables(lines: Sequence[str]) -> dict[int, tuple[str, str, int, int]]:
  """The module's FileNames / FunctionNames / FileLocations / StackFrames tables.

  XLA prints a frame's parent id plus one (a root frame shows 1): the parent of a frame is
  `parent_frame_id - 1`, none when that is 0.
  """
  tables, current = defaultdict(dict), None
  for line in lines:
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      current = line
      continue
    entry = re.match(r"(\d+) (.*)$", line) if current else None
    if not entry:
      current = None
      continue
    tables[current][int(entry.group(1))] = entry.group(2)
  unquote = lambda s: s.strip().strip('"')
  locations = {}
  for key, text in tables["FileLocations"].items():
    field = dict(re.findall(r"(\w+)=(\d+)", text))
    locations[key] = (unquote(tables["FileNames"].get(int(field["file_name_id"]), "?")),
                      unquote(tables["FunctionNames"].get(int(field["function_name_id"]), "?")),
                      int(field.get("line", 0)))
  frames = {}
  for key, text in tables["StackFrames"].items():
    field = dict(re.findall(r"(\w+)=(\d+)", text))
    location = locations.get(int(field["file_location_id"]), ("?", "?", 0))
    frames[key] = (*location, max(int(field.get("parent_frame_id", 0)) - 1, 0))
  return frames


def parse(text: str) -> Module:
  """An HLO module's text (`as_text()` of a compiled program, or of a lowered one with
  `debug_info=True`, which carries the stack frames)."""
  lines = text.splitlines()
  computations, entry, current = {}, None, None
  for line in lines:
    if current is None:
      header = _HEADER.match(line)
      if header and not line.startswith("HloModule"):
        current = header.group(2)
        computations[current] = []
        entry = current if header.group(1) else entry
      continue
    if line.strip() == "}":
      current = None
      continue
    instruction = _instruction(line, current)
    if instruction:
      computations[current].append(instruction)
  return Module(computations, entry or list(computations)[-1], _tables(lines))


# ------------------------------------------------------------------------------ the analysis

# Ops that move or re-label data, or hold it: they compute nothing in any precision.
_NOT_COMPUTE = frozenset({
    "parameter", "constant", "iota", "get-tuple-element", "tuple", "bitcast", "reshape",
    "broadcast", "transpose", "copy", "copy-start", "copy-done", "slice", "dynamic-slice",
    "dynamic-update-slice", "concatenate", "pad", "reverse", "gather", "convert",
    "bitcast-convert", "call", "fusion", "while", "conditional", "custom-call", "after-all",
    "opt-barrier", "optimization-barrier", "partition-id", "replica-id", "all-gather",
    "all-reduce", "reduce-scatter", "all-to-all", "collective-permute", "get-dimension-size",
    "rng-get-and-update-state", "rng-bit-generator", "compare", "sort", "select", "clamp",
    "and", "or", "not", "xor", "shift-left", "shift-right-logical", "shift-right-arithmetic",
    "domain", "async-start", "async-done", "send", "recv", "send-done", "recv-done",
})

# Convolution forms with no direct fast bf16 kernel on GPUs (issue 13): what the old decoders'
# transposed convolutions, the strided convs' gradients and the k = 15 text convs lowered to.
SLOW_FORMS = {
    "input_dilated": "lhs_dilate > 1: a transposed convolution (or a strided conv's input "
                     "gradient) over a zero-dilated input",
    "kernel_dilated": "rhs_dilate > 1: a strided convolution's weight gradient",
    "long_1d": "a 1-D convolution with a window of 8 or more (the k = 15 text convs, their "
               "gradients)",
    "bf16_scatter": "a scatter-add in bf16 (an embedding's gradient into a bf16 table)",
}


def _model_file(file: str) -> bool:
  return "/mxq_jax/models/" in file


_STEP_BOOKKEEPING = "step bookkeeping: gradient norm, learning rate, step"
_ARGUMENT = "<argument>"  # the "file" of an op whose only source is the program's argument.

# Why an op of a bfloat16 program computes in float32: (reason, file pattern, function
# pattern, op_name pattern; None: any). Each op's stack is walked from its innermost frame
# outwards; the first frame that a reason matches decides. A frame in the model's own files
# that no reason matches stops the walk ("unexplained"): the model computes in bf16 there.
REASONS = (
    ("losses and metrics (fp32 by policy)", r"optax/losses/|/training/stage[12]\.py$|"
     r"/data/normalization\.py$", r"loss|accuracy|psnr|denormalize", None),
    ("quantizer: distances, code look-up, its losses, EMA codebook (fp32 by policy)",
     r"/models/(quantizer|codebooks)\.py$", None, None),
    ("attention logits and softmax (fp32 by policy)", r"/models/prior\.py$|/models/layers\.py$"
     r"|flax/nnx/nn/attention\.py$", r"attention", None),
    ("layer norm statistics (flax computes mean and variance in fp32)",
     r"flax/nnx/nn/normalization\.py$", None, None),
    ("exact GELU: JAX evaluates erf of bf16 inputs in fp32 (elementwise, fused)",
     r"/models/fusion\.py$", r"FusionLayer\.__call__", r"/erfc?$"),
    ("position and modality embeddings summed in fp32 before the cast (parameter-sized)",
     r"/models/fusion\.py$", r"FusionEncoder\.__call__", None),
    ("embedding look-up in the fp32 table (its gradient: an fp32 scatter-add)",
     r"/models/layers\.py$", r"Embed\.", None),
    ("dropout masks (uniform fp32 random numbers, compared)", r"flax/nnx/nn/stochastic\.py$",
     None, None),
    ("input masking of the fp32 batch, before the model", r"/training/masking\.py$", None,
     None),
    ("optimizer: AdamW, clipping, schedule on fp32 parameters and moments", r"optax/", None,
     None),
    (_STEP_BOOKKEEPING, r"/training/trainer\.py$", r"train_step$", None),
    # optax negates the rate argument itself: that op carries no location of its own.
    (_STEP_BOOKKEEPING, rf"^{_ARGUMENT}$", r"^learning_rate\b", None),
)


def fp32_reason(source: list[tuple[str, str, int]], op_name: str = "") -> str:
  """The `REASONS` entry of an fp32 op from its source (innermost frame first), or
  "unexplained: FILE:LINE FUNCTION" ("unexplained: computed from the argument NAME" for an
  op whose only source is a program argument: `_source`)."""
  for file, function, line in source:
    for reason, file_pattern, function_pattern, op_pattern in REASONS:
      if re.search(file_pattern, file) and (
          function_pattern is None or re.search(function_pattern, function)) and (
          op_pattern is None or re.search(op_pattern, op_name)):
        return reason
    if _model_file(file):
      return f"unexplained: {file.split('/mxq_jax/')[-1]}:{line} {function}"
  if not source:
    return "unexplained: no source location"
  file, function, line = source[0]
  if file == _ARGUMENT:
    return f"unexplained: computed from the argument {function}"
  return f"unexplained: {file.rsplit('/', 1)[-1]}:{line} {function}"


def _call_sites(module: Module) -> dict[str, Instruction]:
  """The (first) instruction that calls or fuses each computation: where the source location
  of an op without one of its own comes from."""
  sites = {}
  for instruction in module.instructions():
    for callee in re.findall(r"\b(?:calls|to_apply|body)=%?([\w.\-]+)", instruction.attributes):
      sites.setdefault(callee, instruction)
  return sites


def _source(module: Module, sites: dict, by_name: dict, instruction: Instruction):
  """(frames, op_name) of an op: its own, else its caller's (an op of a called or fused
  computation), else its nearest operand's (an op that XLA or JAX merged from several, e.g. a
  loss gradient's scalar times a broadcast, keeps only a merged op_name), else the program
  argument it reads (one frame: (_ARGUMENT, the parameter's name, 0))."""
  seen = set()
  while instruction.stack_frame is None and instruction.computation in sites and (
      instruction.computation not in seen):
    seen.add(instruction.computation)
    instruction = sites[instruction.computation]
  frontier, argument = [instruction], None
  for _ in range(4):  # operands, up to four steps back.
    for candidate in frontier:
      if candidate.stack_frame is not None:
        return module.source(candidate.stack_frame), candidate.op_name
      if argument is None and candidate.opcode == "parameter" and (
          candidate.computation == module.entry):
        argument = candidate.name
    frontier = [by_name[o] for c in frontier for o in c.operands if o in by_name]
  return ([(_ARGUMENT, argument, 0)] if argument else []), instruction.op_name


def _multiplicities(module: Module) -> dict[str, int]:
  """How many times each computation runs per step of the program's text (call and fusion
  sites; a while body counts once); reducers (`to_apply` of reduce, scatter, sort...) 0."""
  counts = Counter({module.entry: 1})
  for name in reversed(list(module.computations)):  # callers come after their callees.
    for instruction in module.computations[name]:
      callees = re.findall(r"\b(?:calls|body|condition|true_computation|false_computation)="
                           r"%?([\w.\-]+)", instruction.attributes)
      callees += re.findall(r"%?([\w.\-]+)", instruction.attribute("branch_computations") or "")
      if instruction.opcode in ("call", "async-start"):
        callees += re.findall(r"\bto_apply=%?([\w.\-]+)", instruction.attributes)
      for callee in callees:
        counts[callee] += counts[name]
  return counts


def _window(conv: Instruction) -> dict:
  window = conv.attribute("window") or "{}"
  field = dict(re.findall(r"(\w+)=([\dx_\-]+)", window))
  dims = lambda key, default: [int(v) for v in field[key].split("x")] if key in field else default
  size = dims("size", [])
  return {"size": size, "stride": dims("stride", [1] * len(size)),
          "pad": field.get("pad", "0"), "lhs_dilate": dims("lhs_dilate", [1] * len(size)),
          "rhs_dilate": dims("rhs_dilate", [1] * len(size))}


def analyze(text: str, *, fp32_reasons: bool = True, slow_forms: bool = True,
            compiled: bool = False) -> dict:
  """Counts and forms of one HLO module's text; with `fp32_reasons` its fp32 ops by reason,
  with `slow_forms` its convolutions of `SLOW_FORMS`. `compiled`: an fp32 op on a model line
  that no reason explains is the compiler's (the lowered program computes it in bf16)."""
  module = parse(text)
  runs, sites = _multiplicities(module), _call_sites(module)
  by_name = {i.name: i for i in module.instructions()}
  types = {i.name: i.dtype for i in module.instructions()}
  roots = {name: body[-1].opcode for name, body in module.computations.items() if body}
  operand_types = lambda i: "x".join(types.get(o, "?") for o in i.operands[:2])
  converts, convolutions, dots = Counter(), Counter(), Counter()
  gathers, scatters, slow, fp32 = Counter(), Counter(), Counter(), defaultdict(Counter)
  for instruction in module.instructions():
    count = runs.get(instruction.computation, 0)
    if not count:
      continue  # a reducer's scalar body.
    if instruction.opcode == "convert":
      converts[f"{types.get(instruction.operands[0], '?')}->{instruction.dtype}"] += count
    elif instruction.opcode == "convolution":
      window = _window(instruction)
      form = (f"{'x'.join(map(str, window['size']))} stride {'x'.join(map(str, window['stride']))}"
              f" pad {window['pad']}")
      if max(window["lhs_dilate"], default=1) > 1:
        form += f" lhs_dilate {'x'.join(map(str, window['lhs_dilate']))}"
        slow["input_dilated"] += count
      if max(window["rhs_dilate"], default=1) > 1:
        form += f" rhs_dilate {'x'.join(map(str, window['rhs_dilate']))}"
        slow["kernel_dilated"] += count
      if len(window["size"]) == 1 and window["size"][0] >= 8:
        slow["long_1d"] += count
      groups = instruction.attribute("feature_group_count")
      if groups and groups != "1":
        form += f" feature_groups {groups}"
      batch_groups = instruction.attribute("batch_group_count")
      if batch_groups and batch_groups != "1":
        form += f" batch_groups {batch_groups}"
      convolutions[f"{form}, {operand_types(instruction)}->{instruction.dtype}"] += count
    elif instruction.opcode == "dot":
      dots[f"{operand_types(instruction)}->{instruction.dtype}"] += count
    elif instruction.opcode == "gather":
      gathers[instruction.dtype] += count
    elif instruction.opcode == "scatter":
      reducer = re.search(r"\bto_apply=%?([\w.\-]+)", instruction.attributes)
      kind = roots.get(reducer.group(1), "?") if reducer else "?"
      scatters[f"{instruction.dtype} {kind}"] += count
      if instruction.dtype == "bf16" and kind == "add":
        slow["bf16_scatter"] += count
    if fp32_reasons and instruction.dtype == "f32" and instruction.opcode not in _NOT_COMPUTE:
      reason = fp32_reason(*_source(module, sites, by_name, instruction))
      if compiled and reason.startswith("unexplained: models/"):
        reason = "fp32 by the compiler's choice: " + reason.split(": ", 1)[1]
      fp32[reason]["ops"] += count
      fp32[reason]["elements"] += count * instruction.elements
      if instruction.opcode in ("dot", "convolution"):
        fp32[reason][instruction.opcode + "s"] += count
  fp32_summary = {
      "fp32_ops": sum(r["ops"] for r in fp32.values()),
      "fp32_ops_by_reason": {reason: dict(c) for reason, c in
                             sorted(fp32.items(), key=lambda item: -item[1]["elements"])},
  } if fp32_reasons else {"fp32_ops_by_reason": _CPU_NOTE}
  return {
      "converts": sum(converts.values()),
      "converts_by_types": dict(converts.most_common()),
      "convolutions": sum(convolutions.values()),
      "convolution_forms": dict(convolutions.most_common()),
      "slow_convolution_forms": ({form: slow[form] for form in SLOW_FORMS if slow[form]}
                                 if slow_forms else _TPU_NOTE),
      "dots_by_types": dict(dots.most_common()),
      "gathers_by_dtype": dict(gathers.most_common()),
      "scatters_by_dtype_and_reducer": dict(scatters.most_common()),
      **fp32_summary,
  }


_TPU_NOTE = ("not applicable: XLA:TPU writes dots as convolutions (batched ones with lhs_dilate "
             "and strides), its own forms; read the lowered program's")
_CPU_NOTE = ("not analysed: XLA:CPU computes bf16 dots, convolutions and elementwise ops in "
             "fp32 (its converts), so every op is fp32 here; read the lowered program's")


def _cost(analysis) -> dict:
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  analysis = analysis or {}
  gigas = lambda key: round(float(analysis[key]) / 1e9, 4) if key in analysis else None
  return {"gflops": gigas("flops"), "gbytes_accessed": gigas("bytes accessed")}


def analyze_program(program, where: str, platform: str) -> dict:
  """Lowers and compiles one `aot_lib.Program`; the lowered HLO's analysis and the compiled
  one's (`where` names the compiler: the backend, or the TPU slice; on `platform` "cpu" the
  compiled bf16 program is fp32 throughout, on "tpu" dots are convolutions)."""
  lowered = program.fn.lower(*program.args)
  start = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  return {
      "lowered": {**_cost(lowered.cost_analysis()),
                  **analyze(lowered.as_text(dialect="hlo", debug_info=True))},
      where: {"compile_s": round(seconds, 1), **_cost(compiled.cost_analysis()),
              **analyze(compiled.as_text(), fp32_reasons=platform != "cpu",
                        slow_forms=platform != "tpu", compiled=True)},
  }


# --------------------------------------------------------------------------------- the report

DTYPES = ("float32", "bfloat16")
PROGRAMS = ("stage1/train", "stage2/train")


def with_compute_dtype(config: ml_collections.ConfigDict, dtype: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy.
  config.vqvae.dtype = dtype
  config.prior.dtype = dtype
  config.stages = "stage1,stage2"
  return config


def precision_report(config: ml_collections.ConfigDict, mesh, *, where: str,
                     tpu_mesh=None, tpu_name: str | None = None) -> dict:
  """{program: {dtype: analyses}} for the stage-1 and prior train steps of `config`."""
  from mxq_jax import aot_lib  # pylint: disable=g-import-not-at-top
  report = defaultdict(dict)
  targets = [(mesh, where)] + ([(tpu_mesh, tpu_name)] if tpu_mesh is not None else [])
  for dtype in DTYPES:
    dtype_config = with_compute_dtype(config, dtype)
    for target_mesh, name in targets:
      for program in aot_lib.run_programs(dtype_config, target_mesh):
        if program.name in PROGRAMS:
          analysis = analyze_program(program, name, target_mesh.devices.flat[0].platform)
          if name != where:
            analysis.pop("lowered")  # the same lowering as the host's, sharded otherwise.
          report[program.name].setdefault(dtype, {}).update(analysis)
          print(f"precision: {program.name} {dtype} compiled for {name}", file=sys.stderr)
  return dict(report)


def format_table(report: dict) -> str:
  """The side-by-side table (stderr) and each bf16 program's fp32 ops by reason."""
  lines = [f"{'program':<14}{'dtype':<10}{'HLO':<22}{'GFLOP':>9}{'GB accessed':>13}"
           f"{'converts':>10}{'convs':>7}{'slow convs':>12}  dots by operand types"]
  for program, by_dtype in report.items():
    for dtype, analyses in by_dtype.items():
      for where, a in analyses.items():
        dots = ", ".join(f"{k} {v}" for k, v in a["dots_by_types"].items())
        forms = a["slow_convolution_forms"]
        slow = sum(forms.values()) if isinstance(forms, dict) else "n/a"
        lines.append(f"{program:<14}{dtype:<10}{where:<22}{a['gflops'] or 0:>9.3f}"
                     f"{a['gbytes_accessed'] or 0:>13.4f}{a['converts']:>10}"
                     f"{a['convolutions']:>7}{slow:>12}  {dots}")
  for program, by_dtype in report.items():
    for where, a in by_dtype.get("bfloat16", {}).items():
      if "fp32_ops" not in a:
        continue  # XLA:CPU's compiled program: fp32 throughout.
      lines.append(f"\n{program} bfloat16 ({where}): {a['fp32_ops']} ops in fp32, by reason "
                   "(ops, elements)")
      lines += [f"  {c['ops']:>6} {c['elements']:>12}  {reason}"
                for reason, c in a["fp32_ops_by_reason"].items()]
      if isinstance(a["slow_convolution_forms"], dict):
        for form, count in a["slow_convolution_forms"].items():
          lines.append(f"  SLOW: {count} x {SLOW_FORMS[form]}")
  return "\n".join(lines)
