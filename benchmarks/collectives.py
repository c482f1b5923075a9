"""Pod scale: the collectives of one outer step, read from the compiled HLO.

For each preset, mesh and optimizer the script compiles ``train.pretrain``'s jitted step
from abstract inputs (``benchmarks.compiled_memory.compile_step``: nothing of model size
is allocated) on 8 host CPU devices and walks the optimized HLO module
(``compiled.as_text()``) from its ENTRY computation through every call, fusion, async
wrapper and ``while`` body. A collective inside a ``while`` loop runs once per iteration,
so each one is counted ``prod(trip counts)`` times: the trip count of every enclosing loop
(the K-micro-batch scan, the layer ``nnx.scan``, Nexus's inner scan) is read from the
``known_trip_count`` XLA records in the while op's ``backend_config``; a loop without one
stops the script rather than being counted once. Asynchronous pairs count once, at their
``-start``. Which branch of a ``conditional`` runs is not known from the HLO, so a
collective under one is counted at every execution of the conditional, an upper bound
that the report lists apart (``nexus-multisteps`` applies its outer update, with the
gradient clip's norm, under a ``lax.cond`` taken on one call of K).

Bytes are per device and per outer step, from the HLO shapes (pred and s8 1 byte, bf16 2,
f32 and s32 4, tuples summed):

  * all-reduce, reduce-scatter, all-to-all, collective-permute: the operand bytes;
  * all-gather: the result bytes.

Either way that is the full message S over the replica group, the size that ring
algorithms are quoted in. Each collective also records its replica group size n (from
the explicit ``{{0,1,..}}``, the iota ``[2,4]<=[8]`` or the ``mesh[...] {axes}`` form).

XLA:CPU runs no collective in bf16: it converts bf16 operands to f32, communicates, and
converts the result back. The compiled bytes are those f32 bytes; a second figure
("bf16 at 2 B", ``native_bytes``) counts at 2 bytes every operand that arrives through
a bf16 -> f32 convert and leaves through an f32 -> bf16 one, which is what a GPU or TPU,
running bf16 collectives, would send. The times below use that second figure.

Time per outer step, a bandwidth-only ring model (latency ignored) with ``bw`` the bytes a
device sends per second in one direction:

  all-reduce                      2 (n - 1) / n * S / bw
  all-gather, reduce-scatter,     (n - 1) / n * S / bw
  all-to-all
  collective-permute              S / bw

at three interconnects (``INTERCONNECTS``), every collective at the same bandwidth: a TPU
v5p slice's ICI, H100s within one NVLink node of 8, and H100s in different nodes over one
400 Gb/s InfiniBand NIC per GPU. Beside it, the step's compute at peak: the model's
training FLOPs (``LlamaConfig.flops_per_token``: matmuls only, no remat recompute) times
the step's tokens, over the devices and the chip's bf16 peak: a lower bound on step time.

The collectives are those of XLA's CPU SPMD partitioner and CPU pass pipeline; a GPU or
TPU compile partitions alike but may combine, decompose or schedule them differently (its
pipelines turn an all-reduce whose result each device slices into a reduce-scatter,
which XLA:CPU leaves as an all-reduce).

Run from the repository root (8 host devices are forced unless XLA_FLAGS sets a count):
  python -m benchmarks.collectives [--presets 130m,520m,2.3b]
      [--meshes data=8 fsdp=8 data=2,fsdp=4] [--optimizers adamw,nexus,nexus-multisteps]
      [--micro-batch-size 64] [--seq-len 4096] [--microbatches 4]
Writes ``results.md`` and ``results.json`` to ``--out`` (default
``benchmarks/out/collectives``; the committed tables in ``benchmarks/collectives/`` are
written with ``--out benchmarks/collectives``); the last line printed is the JSON.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

# pylint: disable=wrong-import-position
import argparse
import dataclasses
import math
import re
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.common import add_batch_flags, add_out_flag, batch_overrides, write_report
from benchmarks.compiled_memory import compile_step
from train import parallel
from train.presets import get_run_preset

OPTIMIZERS = ("adamw", "nexus", "nexus-multisteps")
MESHES = ("data=8", "fsdp=8", "data=2,fsdp=4")
# The one that sums K micro-batch gradients before a single optimizer update.
ACCUMULATION = "adamw"
KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
GIB = 2**30

# Peak dense bf16 matmul throughput per chip, FLOP/s.
# Google Cloud TPU v5p documentation ("TPU v5p", key specifications): 459 TFLOPs bf16.
TPU_V5P_BF16_FLOPS = 459e12
# NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: 1,979 TFLOPS bf16 *with sparsity*,
# so 989 TFLOPS dense.
H100_SXM_BF16_FLOPS = 989e12

# Interconnect bandwidth per device, bytes/s in ONE direction (what a ring step sends).
# Google Cloud TPU v5p documentation: inter-chip interconnect 4,800 Gbps per chip, which
# the same page's newer table gives as 1,200 GBps bidirectional: 600 GB/s each way, over
# all of the chip's torus links (a collective along one torus axis uses fewer of them, so
# this is the optimistic end).
TPU_V5P_ICI_BYTES = 4800e9 / 8
# NVIDIA H100 datasheet, H100 SXM: NVLink 900 GB/s, the total of both directions.
H100_NVLINK_BYTES = 900e9 / 2
# NVIDIA ConnectX-7 / Quantum-2 InfiniBand NDR: 400 Gb/s per port in each direction; one
# NIC per GPU, as in DGX H100 and HGX H100 nodes.
INFINIBAND_NDR_BYTES = 400e9 / 8


@dataclasses.dataclass(frozen=True)
class Interconnect:
  name: str
  label: str
  bytes_per_second: float
  peak_flops: float


INTERCONNECTS = (
  Interconnect("tpu_v5p_ici", "TPU v5p ICI", TPU_V5P_ICI_BYTES, TPU_V5P_BF16_FLOPS),
  Interconnect("h100_nvlink", "H100 NVLink (one node)", H100_NVLINK_BYTES, H100_SXM_BF16_FLOPS),
  Interconnect(
    "h100_infiniband", "H100 over 400G InfiniBand", INFINIBAND_NDR_BYTES, H100_SXM_BF16_FLOPS
  ),
)

# ----------------------------------------------------------------------------------------
# The HLO walker.

# Bytes per element; sub-byte types round up, as XLA pads them to a byte.
ELEMENT_BYTES = {
  "pred": 1,
  "s4": 1,
  "u4": 1,
  "s8": 1,
  "u8": 1,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
  "f8e4m3": 1,
  "f8e5m2fnuz": 1,
  "f8e4m3fnuz": 1,
  "f8e4m3b11fnuz": 1,
  "f8e3m4": 1,
  "f8e8m0fnu": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([^\s(]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([^\s=]+) = (.*)$")
_OPCODE = re.compile(r"\s*([a-z][a-z0-9\-]*)\(")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
# Attributes that name computations run by the instruction (to_apply: reducers, which hold
# no collectives, are left out on purpose).
_SINGLE_CALLS = re.compile(
  r"\b(calls|body|condition|true_computation|false_computation)=%?([^\s,{}]+)"
)
_LIST_CALLS = re.compile(r"\b(calls|branch_computations|called_computations)=\{([^}]*)\}")
_COLLECTIVE = re.compile(
  r"^(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?$"
)


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string; a tuple's elements are summed, layouts ignored.

  Example:
    >>> shape_bytes("(f32[2,16]{1,0}, bf16[8]{0}, pred[], s32[])")
    149
  """
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    if dtype not in ELEMENT_BYTES:
      if dtype == "token":
        continue
      raise ValueError(f"unknown HLO element type {dtype!r} in {shape!r}")
    total += ELEMENT_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _balanced(text: str, start: int) -> int:
  """Index just past the bracket group that opens at ``text[start]``."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  stack = []
  for i in range(start, len(text)):
    char = text[i]
    if char in pairs:
      stack.append(pairs[char])
    elif stack and char == stack[-1]:
      stack.pop()
      if not stack:
        return i + 1
  raise ValueError(f"unbalanced brackets in HLO: {text[start : start + 200]!r}")


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str
  opcode: str
  operands: list[str]
  attributes: str
  root: bool
  arguments: str = ""  # the text inside the opcode's parentheses


def _parse_instruction(line: str) -> Instruction | None:
  match = _INSTRUCTION.match(line)
  if match is None:
    return None
  root, name, rest = match.groups()
  if rest.startswith("("):
    end = _balanced(rest, 0)
  else:
    end = rest.index(" ")
  shape, rest = rest[:end], rest[end:]
  opcode = _OPCODE.match(rest)
  if opcode is None:
    raise ValueError(f"no opcode in HLO line: {line[:200]!r}")
  open_paren = opcode.end() - 1
  close = _balanced(rest, open_paren)
  operands = re.findall(r"%([^\s,()]+)", rest[open_paren:close])
  return Instruction(
    name,
    shape,
    opcode.group(1),
    operands,
    rest[close:],
    bool(root),
    rest[open_paren + 1 : close - 1],
  )


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
  """The computations of an HLO module's text, by name, and the ENTRY computation's name."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = None, None
  for line in text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header:
        current = header.group(2)
        computations[current] = []
        if header.group(1):
          entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    instruction = _parse_instruction(line)
    if instruction is not None:
      computations[current].append(instruction)
  if entry is None:
    raise ValueError("the HLO text has no ENTRY computation")
  return computations, entry


def group_size(attributes: str, devices: int) -> int:
  """Devices per replica group of a collective, from its ``replica_groups``.

  Example:
    >>> group_size("replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}", 8)
    4
    >>> group_size("replica_groups=[2,4]<=[8], to_apply=%add", 8)
    4
    >>> group_size("replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, to_apply=%a", 8)
    4
    >>> group_size("replica_groups=mesh['a'=4,'b'=2], device_ids=([2,4]T(1,0)) {'a','b'}", 8)
    8
    >>> group_size("replica_groups={}, to_apply=%add", 8)
    8
  """
  # The mesh form may carry a device order between the axes and the group's axis names:
  # mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}.
  mesh = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attributes)
  if mesh:
    sizes = {name: int(size) for name, size in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
    size = 1
    for item in filter(None, (part.strip() for part in mesh.group(2).split(","))):
      # A sub-axis is written 'name':(pre)size; it contributes its own size.
      sub = re.fullmatch(r"'([^']+)':\((\d+)\)(\d+)", item)
      size *= int(sub.group(3)) if sub else sizes[item.strip("'")]
    return size
  iota = re.search(r"replica_groups=\[([\d,]+)\]<=", attributes)
  if iota:
    return int(iota.group(1).split(",")[-1])
  explicit = re.search(r"replica_groups=\{(\{[^}]*\})?", attributes)
  if explicit:
    if explicit.group(1) is None:  # {} is every device in one group
      return devices
    return len([d for d in explicit.group(1).strip("{}").split(",") if d.strip()])
  pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attributes)
  if pairs:
    return len(set(re.findall(r"\d+", pairs.group(1))))
  raise ValueError(f"no replica groups in collective attributes {attributes[:200]!r}")


@dataclasses.dataclass
class Collective:
  """One collective instruction of the module and how often an outer step runs it.

  ``bytes`` is the message as compiled, per execution and per device (see the module
  docstring). ``native_bytes`` counts at 2 bytes per element the operands that XLA:CPU
  widened from bfloat16 to float32 just for the collective (its pipeline runs no bf16
  collectives: it converts to f32, communicates, and converts back), which a GPU or TPU
  sends as bf16.
  """

  kind: str
  name: str
  computation: str
  group: int
  bytes: int
  native_bytes: int
  executions: int
  loops: tuple[int, ...]  # trip counts of the enclosing while loops, outermost first
  op_name: str
  conditional: bool = False  # under a conditional: executions is an upper bound


def _called(instruction: Instruction) -> list[tuple[str, str]]:
  """(attribute, computation) pairs that ``instruction`` runs, quoted strings removed."""
  attributes = _STRING.sub('""', instruction.attributes)
  called = [(key, name) for key, name in _SINGLE_CALLS.findall(attributes)]
  for key, names in _LIST_CALLS.findall(attributes):
    called += [(key, name.strip().lstrip("%")) for name in names.split(",") if name.strip()]
  return called


# Instructions that move or view data without changing its element type.
_LAYOUT_OPS = ("bitcast", "copy", "reshape", "transpose")


class _Module:
  """An HLO module's instructions by (computation, name), and each computation's root."""

  def __init__(self, text: str):
    self.computations, self.entry = parse_module(text)
    self.instructions = {
      (computation, instruction.name): instruction
      for computation, instructions in self.computations.items()
      for instruction in instructions
    }
    self.roots = {
      computation: next(i for i in instructions if i.root)
      for computation, instructions in self.computations.items()
      if any(i.root for i in instructions)
    }
    self.users: dict[tuple[str, str], list[tuple[Instruction, int]]] = {}
    self.parameters: dict[tuple[str, int], str] = {}
    for computation, instructions in self.computations.items():
      for instruction in instructions:
        for position, operand in enumerate(instruction.operands):
          self.users.setdefault((computation, operand), []).append((instruction, position))
        if instruction.opcode == "parameter":
          self.parameters[(computation, int(instruction.arguments))] = instruction.name

  def shape(self, computation: str, name: str) -> str:
    return self.instructions[(computation, name)].shape

  def widened_from_bf16(self, computation: str, name: str) -> bool:
    """Whether value ``name`` is a bf16 value converted to f32 (through layout-only ops,
    and into the fusion that computes it)."""
    instruction = self.instructions[(computation, name)]
    if instruction.opcode in _LAYOUT_OPS and instruction.operands:
      return self.widened_from_bf16(computation, instruction.operands[0])
    if instruction.opcode == "convert":
      source = self.shape(computation, instruction.operands[0])
      return source.startswith("bf16[") and instruction.shape.startswith("f32[")
    if instruction.opcode == "fusion":
      callee = dict(_called(instruction)).get("calls")
      if callee in self.roots:
        return self.widened_from_bf16(callee, self.roots[callee].name)
    return False

  def narrowed_to_bf16(self, computation: str, name: str, index: int | None = None) -> bool:
    """Whether every use of value ``name`` (of its tuple element ``index``) converts it to
    bf16 first (through layout-only ops, and into the fusions that consume it)."""
    uses = 0
    for user, position in self.users.get((computation, name), []):
      if user.opcode == "get-tuple-element":
        element = int(re.search(r"index=(\d+)", user.attributes).group(1))
        if index is not None and element != index:
          continue
        narrowed = self.narrowed_to_bf16(computation, user.name)
      elif user.opcode == "convert":
        narrowed = user.shape.startswith("bf16[")
      elif user.opcode in _LAYOUT_OPS:
        narrowed = self.narrowed_to_bf16(computation, user.name)
      elif user.opcode == "fusion":
        callee = dict(_called(user)).get("calls")
        parameter = self.parameters.get((callee, position))
        narrowed = parameter is not None and self.narrowed_to_bf16(callee, parameter)
      else:
        narrowed = False
      if not narrowed:
        return False
      uses += 1
    return uses > 0

  def widened_for_collective(self, computation: str, collective: Instruction, i: int) -> bool:
    """Whether operand ``i`` of ``collective`` is bf16 data that XLA:CPU widened to f32
    around it: converted from bf16 on the way in and back to bf16 on the way out. (A
    value the program itself converts from bf16 to f32 before communicating stays f32
    afterwards, so it does not count.)"""
    tuple_result = collective.shape.startswith("(")
    return self.widened_from_bf16(computation, collective.operands[i]) and self.narrowed_to_bf16(
      computation, collective.name, i if tuple_result else None
    )


def collectives(text: str, devices: int, conditionals: str = "fail") -> list[Collective]:
  """Every collective that one run of the module's ENTRY computation executes.

  Walks the call graph from ENTRY; a ``while`` body counts ``known_trip_count`` times per
  execution of the loop, its condition once more. Raises ValueError for a loop without
  a known trip count.

  Args:
    text: the optimized HLO module, ``compiled.as_text()``.
    devices: the devices of the program (the group of ``replica_groups={}``).
    conditionals: what to do with a collective inside a ``conditional``, whose branch is
      chosen at run time: ``"fail"`` raises ValueError; ``"upper"`` counts it at every
      execution of the conditional, whichever branch holds it (an upper bound), and
      marks it ``conditional``.
  """
  if conditionals not in ("fail", "upper"):
    raise ValueError(f"conditionals must be 'fail' or 'upper', got {conditionals!r}")
  module = _Module(text)
  found: list[Collective] = []

  def measure(computation: str, instruction: Instruction, kind: str, start: bool):
    operands = [
      (shape_bytes(module.shape(computation, operand)), operand) for operand in instruction.operands
    ]
    operand_bytes = sum(size for size, _ in operands)
    native_operand_bytes = sum(
      size // 2 if module.widened_for_collective(computation, instruction, i) else size
      for i, (size, _) in enumerate(operands)
    )
    if kind == "all-gather":
      # An all-gather-start's shape is (operands, results); the results are the rest.
      size = shape_bytes(instruction.shape)
      size = size - operand_bytes if start else size
      native = size * native_operand_bytes // max(operand_bytes, 1)
    else:
      size, native = operand_bytes, native_operand_bytes
    return size, native

  def walk(computation: str, executions: int, loops: tuple[int, ...], conditional: bool):
    for instruction in module.computations[computation]:
      kind = _COLLECTIVE.match(instruction.opcode)
      if kind:
        if conditional and conditionals == "fail":
          raise ValueError(
            f"{instruction.opcode} {instruction.name} runs under a conditional; "
            "which branch executes is unknown, so it cannot be counted"
          )
        size, native = measure(computation, instruction, kind.group(1), bool(kind.group(2)))
        op_name = re.search(r'op_name="([^"]*)"', instruction.attributes)
        found.append(
          Collective(
            kind=kind.group(1),
            name=instruction.name,
            computation=computation,
            group=group_size(instruction.attributes, devices),
            bytes=size,
            native_bytes=native,
            executions=executions,
            loops=loops,
            op_name=op_name.group(1) if op_name else "",
            conditional=conditional,
          )
        )
      # The -done and -update halves of async pairs name the same computation as -start.
      if instruction.opcode.endswith(("-done", "-update")):
        continue
      called = _called(instruction)
      if instruction.opcode == "while":
        trip = _TRIP_COUNT.search(instruction.attributes)
        if trip is None:
          raise ValueError(
            f"while {instruction.name} in {computation} has no known_trip_count in its "
            "backend_config; its collectives cannot be counted per outer step"
          )
        trips = int(trip.group(1))
        for key, callee in called:
          count = trips if key == "body" else trips + 1
          walk(callee, executions * count, (*loops, trips), conditional)
      else:
        under = conditional or instruction.opcode == "conditional"
        for _, callee in called:
          walk(callee, executions, loops, under)

  walk(module.entry, 1, (), False)
  return found


# ----------------------------------------------------------------------------------------
# Time.


def ring_seconds(kind: str, group: int, message_bytes: float, bandwidth: float) -> float:
  """Bandwidth-only ring time of one collective of ``message_bytes`` over ``group`` devices.

  Example:
    >>> ring_seconds("all-reduce", 8, 8e9, 1e9)  # 2 * 7/8 * 8 s
    14.0
  """
  if group <= 1:
    return 0.0
  if kind == "all-reduce":
    factor = 2 * (group - 1) / group
  elif kind == "collective-permute":
    factor = 1.0
  else:
    factor = (group - 1) / group
  return factor * message_bytes / bandwidth


def summarize(found: list[Collective]) -> dict:
  """Per kind: executed count and bytes per device per outer step; times per interconnect."""
  kinds = {}
  for kind in KINDS:
    mine = [c for c in found if c.kind == kind]
    kinds[kind] = {
      "count": sum(c.executions for c in mine),
      "bytes": sum(c.executions * c.bytes for c in mine),
      "native_bytes": sum(c.executions * c.native_bytes for c in mine),
      "groups": sorted({c.group for c in mine}),
    }
  seconds = {
    link.name: sum(
      c.executions * ring_seconds(c.kind, c.group, c.native_bytes, link.bytes_per_second)
      for c in found
    )
    for link in INTERCONNECTS
  }
  # Where the traffic sits: bytes by loop nest and group, e.g. "4x32 n=8" for a layer scan
  # inside the micro-batch scan over groups of 8, "1 n=8" for the step's top level.
  nests: dict[str, dict[str, int]] = {}
  for c in found:
    nest = ("x".join(map(str, c.loops)) or "1") + f" n={c.group}"
    entry = nests.setdefault(c.kind, {}).setdefault(nest, 0)
    nests[c.kind][nest] = entry + c.executions * c.bytes
  return {
    "kinds": kinds,
    "total_bytes": sum(k["bytes"] for k in kinds.values()),
    "total_native_bytes": sum(k["native_bytes"] for k in kinds.values()),
    # Counted as if their branch ran at every execution of their conditional.
    "conditional_count": sum(c.executions for c in found if c.conditional),
    "conditional_bytes": sum(c.executions * c.bytes for c in found if c.conditional),
    "comm_seconds": seconds,
    "bytes_by_loop_nest": nests,
    "sites": [
      {
        "kind": c.kind,
        "group": c.group,
        "bytes_each": c.bytes,
        "native_bytes_each": c.native_bytes,
        "executions": c.executions,
        "loops": list(c.loops),
        "op_name": c.op_name[:160],
        "conditional": c.conditional,
      }
      for c in found
    ],
  }


# ----------------------------------------------------------------------------------------
# The benchmark.


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.collectives", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--presets", default="130m,520m,2.3b")
  parser.add_argument(
    "--meshes", nargs="+", default=list(MESHES), help="one or more meshes, e.g. data=2,fsdp=4"
  )
  parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
  add_batch_flags(parser)
  add_out_flag(parser, "collectives")
  return parser.parse_args(argv)


def measure(preset: str, mesh_text: str, mesh, optimizer: str, overrides: dict) -> dict:
  """Compiles one step and counts its collectives; the row of the report."""
  config, training, compiled, seconds = compile_step(preset, optimizer, mesh, overrides)
  started = time.perf_counter()
  # nexus_multisteps applies the outer update under a lax.cond on its last call of K.
  found = collectives(compiled.as_text(), mesh.size, conditionals="upper")
  row = {
    "preset": preset,
    "mesh": mesh_text,
    "optimizer": optimizer,
    "params": int(sum(leaf.size for leaf in jax.tree.leaves(training.abstract_state.params))),
    "microbatches": config.microbatches,
    "tokens_per_step": config.tokens_per_step,
    "compile_seconds": round(seconds, 1),
    "walk_seconds": round(time.perf_counter() - started, 2),
    **summarize(found),
  }
  # Gradients are summed in float32 (train.step promotes them), whatever the params' dtype.
  row["gradient_bytes"] = int(
    sum(
      leaf.size * jnp.promote_types(leaf.dtype, jnp.float32).itemsize
      for leaf in jax.tree.leaves(training.abstract_state.params)
    )
  )
  flops = training.model_config.flops_per_token(config.seq_len) * config.tokens_per_step
  row["flops_per_step"] = flops
  row["compute_seconds"] = {
    link.name: flops / mesh.size / link.peak_flops for link in INTERCONNECTS
  }
  row["comm_over_compute"] = {
    link.name: round(row["comm_seconds"][link.name] / row["compute_seconds"][link.name], 4)
    for link in INTERCONNECTS
  }
  return row


def _cell(kind: dict) -> str:
  if not kind["count"]:
    return "-"
  return f"{kind['count']:,} / {kind['bytes'] / GIB:.3f}"


def markdown(rows: list[dict], command: str) -> str:
  ok = [row for row in rows if "error" not in row]
  lines = [
    f"Command: `{command}` (jax {jax.__version__}, {jax.device_count()} host "
    f"{jax.default_backend()} devices; abstract inputs only).",
    "",
    "Collectives per outer step, per device: executed count / GiB as compiled "
    "(all-reduce, reduce-scatter, all-to-all: operand bytes; all-gather: result bytes). "
    "groups: the replica group sizes seen. bf16 at 2 B: the total with the operands that "
    "XLA:CPU widened from bf16 to f32 for the collective counted at 2 bytes, as a GPU or "
    "TPU sends them. / accumulation: total bytes over accumulation's "
    f"(`{ACCUMULATION}`) at the same preset and mesh.",
    "",
    "| preset | mesh | optimizer | K | all-reduce | all-gather | reduce-scatter | "
    "all-to-all | collective-permute | groups | total GiB | bf16 at 2 B | / accumulation |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
  ]
  for row in ok:
    groups = sorted({g for kind in row["kinds"].values() for g in kind["groups"]})
    ratio = row.get("bytes_over_accumulation")
    lines.append(
      f"| {row['preset']} | {row['mesh']} | {row['optimizer']} | {row['microbatches']} | "
      + " | ".join(_cell(row["kinds"][kind]) for kind in KINDS)
      + f" | {','.join(map(str, groups))} | {row['total_bytes'] / GIB:.3f} | "
      + f"{row['total_native_bytes'] / GIB:.3f} | "
      + (f"{ratio:.3f} |" if ratio is not None else "- |")
    )
  lines += [
    "",
    "Where the bytes run: GiB per outer step (as compiled) by the trip counts of the "
    "enclosing loops (outermost first; `1` is the step's top level) and the replica "
    "group size n.",
    "",
    "| preset | mesh | optimizer | all-reduce | all-gather | other |",
    "|---|---|---|---|---|---|",
  ]
  for row in ok:
    nests = row["bytes_by_loop_nest"]

    def where(kinds, nests=nests):
      parts = [
        f"{nest}: {size / GIB:.3f}"
        for kind in kinds
        for nest, size in sorted(nests.get(kind, {}).items())
      ]
      return "; ".join(parts) or "-"

    lines.append(
      f"| {row['preset']} | {row['mesh']} | {row['optimizer']} | {where(['all-reduce'])} | "
      f"{where(['all-gather'])} | {where(['reduce-scatter', 'all-to-all', 'collective-permute'])} |"
    )
  lines += [
    "",
    "Time per outer step, ms: the ring model's communication at each interconnect, "
    "from the bytes with bf16 at 2 B (every collective at that bandwidth, none "
    "overlapped with compute), against compute at the chip's bf16 peak (model FLOPs, "
    "without remat's recompute, / devices / peak).",
    "",
    "| preset | mesh | optimizer | v5p compute | v5p ICI comm | / compute | H100 compute | "
    "H100 NVLink comm | / compute | H100 IB comm | / compute |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in ok:
    comm, compute = row["comm_seconds"], row["compute_seconds"]
    cells = []
    for link in INTERCONNECTS:
      if link.name != "h100_infiniband":  # the H100 columns share one compute time
        cells.append(f"{compute[link.name] * 1e3:,.1f}")
      cells += [
        f"{comm[link.name] * 1e3:,.1f}",
        f"{row['comm_over_compute'][link.name]:.3f}",
      ]
    lines.append(
      f"| {row['preset']} | {row['mesh']} | {row['optimizer']} | " + " | ".join(cells) + " |"
    )
  floors = {row["preset"]: row for row in ok}
  lines += [
    "",
    "The floor for accumulation under pure data parallelism: one all-reduce of the "
    "float32 gradient per outer step over all devices, ms.",
    "",
    "| preset | params | f32 gradient GiB | v5p ICI | H100 NVLink | H100 IB |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for preset, row in floors.items():
    devices = jax.device_count()
    times = [
      ring_seconds("all-reduce", devices, row["gradient_bytes"], link.bytes_per_second) * 1e3
      for link in INTERCONNECTS
    ]
    lines.append(
      f"| {preset} | {row['params'] / 1e6:,.1f}M | {row['gradient_bytes'] / GIB:.3f} | "
      + " | ".join(f"{t:,.1f}" for t in times)
      + " |"
    )
  bounded = [row for row in ok if row["conditional_count"]]
  if bounded:
    lines += [
      "",
      "Collectives under a `conditional` (counted at every execution of the conditional, "
      "an upper bound):",
      "",
    ]
    lines += [
      f"- {r['preset']} {r['mesh']} {r['optimizer']}: {r['conditional_count']:,} "
      f"executions, {r['conditional_bytes']:,} bytes per outer step"
      for r in bounded
    ]
  failed = [row for row in rows if "error" in row]
  if failed:
    lines += ["", "Failed:", ""]
    lines += [f"- {r['preset']} {r['mesh']} {r['optimizer']}: {r['error']}" for r in failed]
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = parse_args(argv)
  overrides = batch_overrides(args)
  presets = [name.strip() for name in args.presets.split(",") if name.strip()]
  optimizers = [name.strip() for name in args.optimizers.split(",") if name.strip()]
  try:
    meshes = {
      text: parallel.make_mesh(parallel.parse_mesh(text, jax.device_count()), False)
      for text in args.meshes
    }
    for preset in presets:
      for optimizer in optimizers:
        get_run_preset(preset, optimizer=optimizer, **overrides)
  except ValueError as error:  # ConfigError included: its message names the fix
    raise SystemExit(f"error: {error}") from None
  flags = sys.argv[1:] if argv is None else argv
  command = " ".join(["python -m benchmarks.collectives", *flags])
  print(
    f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} devices; meshes "
    f"{', '.join(meshes)}; abstract inputs only",
    flush=True,
  )
  rows = []
  for preset in presets:
    for mesh_text, mesh in meshes.items():
      for optimizer in optimizers:
        try:
          row = measure(preset, mesh_text, mesh, optimizer, overrides)
        except Exception as error:  # a failed compile is a result to report, not a crash
          rows.append(
            {"preset": preset, "mesh": mesh_text, "optimizer": optimizer, "error": repr(error)}
          )
          print(f"{preset} {mesh_text} {optimizer}: FAILED {error!r}", flush=True)
          continue
        rows.append(row)
        kinds = row["kinds"]
        print(
          f"{preset} {mesh_text} {optimizer}: compiled in {row['compile_seconds']:.0f} s; "
          + ", ".join(
            f"{kind} {kinds[kind]['count']} x / {kinds[kind]['bytes'] / GIB:.3f} GiB"
            for kind in KINDS
            if kinds[kind]["count"]
          ),
          flush=True,
        )
  for row in rows:
    base = next(
      (
        r
        for r in rows
        if r["preset"] == row["preset"]
        and r["mesh"] == row["mesh"]
        and r["optimizer"] == ACCUMULATION
        and "error" not in r
      ),
      None,
    )
    if "error" not in row and base is not None and base["total_bytes"]:
      row["bytes_over_accumulation"] = round(row["total_bytes"] / base["total_bytes"], 4)
  text = markdown(rows, command)
  print("\n" + text)
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "results.md").write_text(text)
  constants = {
    "tpu_v5p_bf16_flops": TPU_V5P_BF16_FLOPS,
    "h100_sxm_bf16_flops": H100_SXM_BF16_FLOPS,
    "tpu_v5p_ici_bytes_per_second_one_way": TPU_V5P_ICI_BYTES,
    "h100_nvlink_bytes_per_second_one_way": H100_NVLINK_BYTES,
    "infiniband_ndr_bytes_per_second_one_way": INFINIBAND_NDR_BYTES,
  }
  result = {
    "command": command,
    "date": time.strftime("%Y-%m-%d"),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "overrides": overrides,
    "constants": constants,
    "rows": rows,
  }
  write_report(args.out / "results.json", result)


if __name__ == "__main__":
  main()
