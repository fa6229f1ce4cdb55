"""Partition rules: which mesh axes each parameter (and its optimizer state) is split over.

Rules are an ordered sequence of (regex, tactic) pairs from `config.train.partition_rules`,
matched (re.search) against a parameter's path such as
`noise_net/dit/blocks/adaLN_modulation/kernel`; the first match decides. Tactics:

  replicate   whole on every device.
  fsdp        split the larger of the last two axes that the fsdp axis divides, when the
              array has at least `fsdp_min_size` elements; otherwise replicated.
  tensor_out  split the last axis (output features) over "tensor" (column parallel: qkv,
              MLP fc1 kernel and bias), then FSDP over the remaining matrix axis.
  tensor_in   split the second-to-last axis (input features) over "tensor" (row parallel:
              attention proj, MLP fc2), then FSDP over the last axis.

Only the last two axes are candidates, and the leading layer axis of arrays under a scanned
stack (paths matching `STACKED_PATTERN`, e.g. `noise_net/dit/blocks/...`) is never split. A
tensor tactic with a tensor axis of size 1 is plain FSDP. Optimizer state and EMA params follow
the parameter they belong to (matched by path suffix and shape); everything else (step,
counters) is replicated. Every decision is logged once, when the shardings are built.
"""

import logging
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uwm_jax.training.mesh import FSDP, TENSOR
from uwm_jax.tree_paths import path_name

log = logging.getLogger(__name__)

REPLICATE, FSDP_TACTIC, TENSOR_OUT, TENSOR_IN = "replicate", "fsdp", "tensor_out", "tensor_in"
TACTICS = (REPLICATE, FSDP_TACTIC, TENSOR_OUT, TENSOR_IN)

# The default policy is `config.train.partition_rules` (uwm_jax/config_base.py): the AdaLN
# modulation layers (most of the parameters: `python -m uwm_jax.summarize` counts them) and
# every other large matrix are FSDP-sharded, attention and MLP are tensor parallel when the
# tensor axis is > 1, small arrays replicated.
# nn.scan stacks its blocks' params on a leading layer axis under ".../blocks/" (unscanned
# blocks are named "blocks_0", "blocks_1", ...).
STACKED_PATTERN = r"/blocks/"


def _fsdp_axis(shape: Tuple[int, ...], candidates: Sequence[int], fsdp: int):
  """The largest candidate axis divisible by the fsdp size, or None."""
  ok = [a for a in candidates if shape[a] % fsdp == 0 and shape[a] >= fsdp]
  return max(ok, key=lambda a: (shape[a], a)) if ok else None


def partition_spec(shape: Tuple[int, ...], tactic: str, mesh_shape: Dict[str, int],
                   fsdp_min_size: int, stacked: bool = False) -> Tuple[PartitionSpec, str]:
  """The PartitionSpec of one array under one tactic, and a short reason for the log.

  stacked: the leading axis is a layer axis (scanned blocks) and is never split.
  """
  if tactic not in TACTICS:
    raise ValueError(f"Unknown partition tactic {tactic!r}; known: {TACTICS}.")
  ndim = len(shape)
  axes = [None] * ndim
  fsdp, tensor = mesh_shape.get(FSDP, 1), mesh_shape.get(TENSOR, 1)
  notes = []
  first = 1 if stacked else 0
  if ndim <= first or tactic == REPLICATE:
    return PartitionSpec(), "replicated"
  candidates = list(range(max(first, ndim - 2), ndim))
  if tactic in (TENSOR_OUT, TENSOR_IN) and tensor > 1:
    ax = ndim - 1 if tactic == TENSOR_OUT or len(candidates) == 1 else ndim - 2
    if shape[ax] % tensor == 0:
      axes[ax] = TENSOR
      candidates.remove(ax)
      notes.append(f"axis {ax} over tensor")
    else:
      notes.append(f"axis {ax} ({shape[ax]}) not divisible by tensor={tensor}")
  if fsdp > 1:
    size = int(np.prod(shape))
    if size < fsdp_min_size:
      notes.append(f"{size} < fsdp_min_size elements: not FSDP")
    else:
      ax = _fsdp_axis(shape, candidates, fsdp)
      if ax is None:
        notes.append(f"no axis divisible by fsdp={fsdp}")
      else:
        axes[ax] = FSDP
        notes.append(f"axis {ax} over fsdp")
  while axes and axes[-1] is None:
    axes.pop()
  spec = PartitionSpec(*axes)
  return spec, ("; ".join(notes) or "replicated")


def match_rule(name: str, rules: Sequence[Tuple[str, str]]) -> Tuple[str, str]:
  for pattern, tactic in rules:
    if re.search(pattern, name):
      return pattern, tactic
  return "(no rule)", REPLICATE


def tree_partition_specs(tree: Any, mesh: Mesh, rules: Sequence[Tuple[str, str]],
                         fsdp_min_size: int, prefix: str = "",
                         log_decisions: bool = True, decisions: Optional[list] = None) -> Any:
  """A tree of PartitionSpecs for a tree of arrays (or ShapeDtypeStructs) under `rules`.
  Each decision is logged at DEBUG; `decisions` (when given) collects (rule, tactic, bytes,
  sharded) per array for `rule_table`."""
  mesh_shape = dict(mesh.shape)

  def decide(path, x):
    name = path_name(path)
    pattern, tactic = match_rule(name, rules)
    stacked = re.search(STACKED_PATTERN, "/" + name) is not None
    spec, reason = partition_spec(tuple(x.shape), tactic, mesh_shape, fsdp_min_size, stacked)
    if log_decisions:
      log.debug("sharding %s%s %s: rule %r -> %s: %s (%s)", prefix, name, tuple(x.shape),
                pattern, tactic, spec, reason)
    if decisions is not None:
      nbytes = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
      decisions.append((pattern, tactic, nbytes, any(a is not None for a in spec)))
    return spec

  return jax.tree_util.tree_map_with_path(decide, tree)


def _suffix_table(tree: Any, specs: Any) -> Dict[Tuple[str, ...], Tuple[tuple, PartitionSpec]]:
  table = {}
  for (path, x), spec in zip(jax.tree_util.tree_flatten_with_path(tree)[0],
                             jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, PartitionSpec))):
    table[tuple(path_name(path).split("/"))] = (tuple(x.shape), spec)
  return table


def follow_specs(tree: Any, table: Dict[Tuple[str, ...], Tuple[tuple, PartitionSpec]]) -> Any:
  """Specs for a tree whose leaves mirror parameters (Adam moments, EMA params): a leaf whose
  path ends with a parameter's path and has its shape gets that parameter's spec; any other
  leaf (counters, empty states) is replicated."""

  def follow(path, x):
    parts = tuple(path_name(path).split("/"))
    for i in range(len(parts)):
      hit = table.get(parts[i:])
      if hit is not None and hit[0] == tuple(x.shape):
        return hit[1]
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(follow, tree)


def state_partition_specs(abstract_state: Any, mesh: Mesh, rules: Sequence[Tuple[str, str]],
                          fsdp_min_size: int,
                          log_decisions: bool = True) -> Any:
  """PartitionSpecs for a whole TrainState: rules decide `params` and `frozen`; optimizer state
  and EMA params follow their parameter; scalars are replicated."""
  decisions = []
  param_specs = tree_partition_specs(abstract_state.params, mesh, rules, fsdp_min_size,
                                     "params/", log_decisions, decisions)
  frozen_specs = tree_partition_specs(abstract_state.frozen, mesh, rules, fsdp_min_size,
                                      "frozen/", log_decisions, decisions)
  if log_decisions:
    log.info("%s", rule_table(decisions))
  table = _suffix_table(abstract_state.params, param_specs)
  specs = follow_specs(abstract_state, table)
  return specs.replace(params=param_specs, frozen=frozen_specs)


def rule_table(decisions: Sequence[Tuple[str, str, int, bool]]) -> str:
  """One table of the sharding decisions, per (rule, tactic): arrays, MiB, arrays sharded."""
  rows: Dict[Tuple[str, str], List[int]] = {}
  for pattern, tactic, nbytes, sharded in decisions:
    row = rows.setdefault((pattern, tactic), [0, 0, 0])
    row[0] += 1
    row[1] += nbytes
    row[2] += int(sharded)
  width = max([len(repr(p)) for p, _ in rows] + [4])
  lines = ["Parameter sharding by rule (per-array decisions at DEBUG level):",
           f"  {'rule':<{width}}  {'tactic':<10} {'arrays':>6} {'MiB':>9} {'sharded':>7}"]
  for (pattern, tactic), (n, nbytes, sharded) in rows.items():
    lines.append(f"  {pattern!r:<{width}}  {tactic:<10} {n:>6} {nbytes / 2**20:>9.1f} "
                 f"{sharded:>7}")
  return "\n".join(lines)


def to_shardings(specs: Any, mesh: Mesh) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda s: isinstance(s, PartitionSpec))


def summarize(abstract_tree: Any, specs: Any, mesh: Mesh) -> str:
  """"N of M parameters sharded; per-device bytes X of Y" for the log."""
  total = sharded = per_device = 0
  leaves = jax.tree.leaves(abstract_tree)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, PartitionSpec))
  for x, spec in zip(leaves, spec_leaves):
    n = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
    div = 1
    for ax in spec:
      for name in (ax if isinstance(ax, tuple) else (ax,)):
        if name is not None:
          div *= mesh.shape[name]
    total += n
    per_device += n // div
    sharded += n if div > 1 else 0
  return (f"{sharded / max(total, 1):.1%} of {total / 2**20:.1f} MiB sharded; "
          f"{per_device / 2**20:.1f} MiB per device")
