r"""Where a train step's time goes: `python -m mxq_jax.bench --parts=modules`.

For each stage, one jitted call of the task's loss records how every submodule (down to
--module_depth levels; `nnx.List`/`nnx.Dict` containers are not a level) is called: its inputs,
keyword arguments and call count (the inputs come back as the program's outputs: one compile,
not the hundreds of single-op ones of an eager call). Each recorded call is then jitted on its
own and timed forward, and forward+backward (a VJP with a random cotangent, to the parameters
and to the floating-point inputs, as in the real step), beside the whole jitted train step. A
module's share is its forward+backward time (times its calls) over the step's: the module that
dominates, or an op that fell off the compiler's fast path, shows in a minute. Shares of one
level add to less than 1; the rest is the loss, the optimizer update and what XLA fuses
across module boundaries. Nested levels (--module_depth=2) overlap their parents.
"""

import contextlib
import dataclasses
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mxq_jax.training import trainer as trainer_lib

_CONTAINERS = (nnx.List, nnx.Dict)


@dataclasses.dataclass
class ModuleCall:
  """The first call of one submodule during the recorded forward, and how often it ran."""
  path: str  # e.g. "image_decoder/up/0".
  module: nnx.Module
  args: tuple
  kwargs: dict
  calls: int = 1


def _is_level(node) -> bool:
  return isinstance(node, nnx.Module) and not isinstance(node, _CONTAINERS)


def submodules(model: nnx.Module, depth: int) -> dict[int, tuple[str, nnx.Module]]:
  """id -> (path, module) of the submodules at most `depth` module levels below `model`."""
  nodes = dict(nnx.iter_graph(model))
  found = {}
  for path, node in nodes.items():
    if not path or not _is_level(node):
      continue
    level = sum(_is_level(nodes.get(path[:i])) for i in range(1, len(path) + 1))
    if level <= depth:
      found[id(node)] = ("/".join(map(str, path)), node)
  return found


@contextlib.contextmanager
def recording_calls(model: nnx.Module, depth: int):
  """Yields {path: ModuleCall}, filled by the calls made inside the block (to `model`'s own
  submodules: under a trace, those of the merged model the traced function calls)."""
  watched = submodules(model, depth)
  calls: dict[str, ModuleCall] = {}
  active: list[int] = []  # ids being called: a subclass calling super().__call__ records once.
  missing = object()
  saved = {}
  for cls in {type(module) for _, module in watched.values()}:
    saved[cls] = cls.__dict__.get("__call__", missing)

    def recording_call(self, *args, _original=cls.__call__, **kwargs):
      entry = watched.get(id(self))
      if entry is None or id(self) in active:
        return _original(self, *args, **kwargs)
      path, _ = entry
      if path in calls:
        calls[path].calls += 1
      else:
        calls[path] = ModuleCall(path, self, args, kwargs)
      active.append(id(self))
      try:
        return _original(self, *args, **kwargs)
      finally:
        active.pop()

    cls.__call__ = recording_call
  try:
    yield calls
  finally:
    for cls, original in saved.items():
      if original is missing:
        del cls.__call__
      else:
        cls.__call__ = original


def _is_rngs(x) -> bool:
  return isinstance(x, nnx.Rngs)


def record_calls(task: trainer_lib.Task, state: trainer_lib.TrainState, batch: dict,
                 depth: int) -> dict[str, ModuleCall]:
  """{path: ModuleCall} of one call of `task`'s loss (training mode), with `state`'s model.

  Traced under `jax.jit`: each first call's array arguments are returned by the program, the
  rest of its arguments kept as they were (an `nnx.Rngs` argument becomes `nnx.Rngs(0)`, as
  `call_programs` replays it). The calls name the modules of the merged model, not the traced
  copies.
  """
  model = trainer_lib.merge_model(task.graphdef, state)
  modules = dict(submodules(model, depth).values())
  graphdef, model_state = nnx.split(model)
  static = {}  # path -> (treedef, non-array leaves, which leaves are arrays, calls).

  def traced(model_state, batch):
    traced_model = nnx.merge(graphdef, model_state)
    with recording_calls(traced_model, depth) as calls:
      task.loss_fn(traced_model, batch, jax.random.key(0))
    arrays = {}
    for path, call in calls.items():
      leaves, treedef = jax.tree.flatten((call.args, call.kwargs), is_leaf=_is_rngs)
      is_array = [isinstance(x, jax.Array) for x in leaves]
      kept = [None if a else (nnx.Rngs(0) if _is_rngs(x) else x)
              for x, a in zip(leaves, is_array)]
      static[path] = (treedef, kept, is_array, call.calls)
      arrays[path] = [x for x, a in zip(leaves, is_array) if a]
    return arrays

  arrays = jax.jit(traced)(model_state, batch)
  recorded = {}
  for path, (treedef, kept, is_array, count) in static.items():
    values = iter(arrays[path])
    leaves = [next(values) if a else x for x, a in zip(kept, is_array)]
    args, kwargs = jax.tree.unflatten(treedef, leaves)
    recorded[path] = ModuleCall(path, modules[path], args, kwargs, count)
  return recorded


def _inexact(x) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)


def call_programs(call: ModuleCall):
  """(forward, forward_backward, arguments): two jitted programs of one recorded call.

  Array inputs become program arguments (the floating ones differentiated); an `nnx.Rngs`
  argument is replaced by a fresh one inside the program; the rest stays static.
  """
  graphdef, params, rest = nnx.split(call.module, nnx.Param, ...)
  leaves, treedef = jax.tree.flatten((call.args, call.kwargs),
                                     is_leaf=lambda x: isinstance(x, nnx.Rngs))
  floats = [i for i, x in enumerate(leaves) if _inexact(x)]
  others = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array) and not _inexact(x)]

  def run(params, float_inputs, other_inputs):
    module = nnx.merge(graphdef, params, rest, copy=True)
    full = [nnx.Rngs(0) if isinstance(x, nnx.Rngs) else x for x in leaves]
    for i, x in [*zip(floats, float_inputs), *zip(others, other_inputs)]:
      full[i] = x
    args, kwargs = jax.tree.unflatten(treedef, full)
    return [y for y in jax.tree.leaves(module(*args, **kwargs)) if jnp.issubdtype(
        y.dtype, jnp.inexact)]

  float_inputs = [leaves[i] for i in floats]
  other_inputs = [leaves[i] for i in others]
  outputs = jax.eval_shape(run, params, float_inputs, other_inputs)
  # Drawn by NumPy: eager jax.random would compile a program for every output shape.
  rng = np.random.default_rng(1)
  cotangents = [jnp.asarray(rng.standard_normal(y.shape, np.float32), y.dtype) for y in outputs]

  def forward_backward(params, float_inputs, other_inputs, cotangents):
    _, vjp = jax.vjp(lambda p, f: run(p, f, other_inputs), params, float_inputs)
    return vjp(cotangents)

  return (jax.jit(run), jax.jit(forward_backward),
          (params, float_inputs, other_inputs), cotangents)


def _seconds_per_call(fn, args, min_seconds: float) -> float:
  compiled = fn.lower(*args).compile()
  jax.block_until_ready(compiled(*args))  # warm-up.
  calls, start = 0, time.perf_counter()
  while calls < 3 or time.perf_counter() - start < min_seconds:
    jax.block_until_ready(compiled(*args))
    calls += 1
  return (time.perf_counter() - start) / calls


def time_call(call: ModuleCall, min_seconds: float) -> dict[str, Any]:
  forward, forward_backward, args, cotangents = call_programs(call)
  forward_s = _seconds_per_call(forward, args, min_seconds)
  both_s = _seconds_per_call(forward_backward, (*args, cotangents), min_seconds)
  params = sum(x.size for x in jax.tree.leaves(args[0]))
  return {"module": call.path, "type": type(call.module).__name__, "calls": call.calls,
          "params": int(params), "forward_ms": round(1e3 * forward_s, 2),
          "forward_backward_ms": round(1e3 * both_s, 2)}


def bench_modules(task: trainer_lib.Task, state: trainer_lib.TrainState, batch: dict,
                  step_seconds: float, depth: int, min_seconds: float) -> dict[str, Any]:
  """Each submodule's timings (first-call order) and share of a `step_seconds` train step,
  with `state`'s parameters (any layout: timed on one device)."""
  state = jax.device_put(state, jax.devices()[0])
  calls = record_calls(task, state, batch, depth)
  rows = []
  for call in calls.values():
    row = time_call(call, min_seconds)
    row["share_of_step"] = round(
        row["calls"] * row["forward_backward_ms"] / 1e3 / step_seconds, 3)
    rows.append(row)
    print(f"bench: {call.path}: {row['forward_backward_ms']} ms forward+backward",
          file=sys.stderr)
  return {"train_step_ms": round(1e3 * step_seconds, 1), "module_depth": depth,
          "modules": rows}


def format_table(name: str, report: dict[str, Any]) -> str:
  """The rows of `bench_modules` as an aligned text table, largest share first."""
  lines = [f"{name}: train step {report['train_step_ms']} ms",
           f"  {'module':<32} {'calls':>5} {'params':>10} {'fwd ms':>9} {'fwd+bwd ms':>11}"
           f" {'share':>6}"]
  for row in sorted(report["modules"], key=lambda r: -r["share_of_step"]):
    lines.append(f"  {row['module']:<32} {row['calls']:>5} {row['params']:>10}"
                 f" {row['forward_ms']:>9.2f} {row['forward_backward_ms']:>11.2f}"
                 f" {row['share_of_step']:>6.1%}")
  return "\n".join(lines)
