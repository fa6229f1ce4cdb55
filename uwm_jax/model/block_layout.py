"""The parameter layouts of the DiT stack (`model.dit`) and the conversions between them.

Blocks. Scanned (`model.scan_layers=True`, the training default): one subtree `blocks` whose
leaves are stacked on a leading depth axis, (depth, ...). Unrolled (`scan_layers=False`, the TPU
presets): one subtree per block, `blocks_0` .. `blocks_{depth-1}`.
Modulation. One kernel (D_c, F) per AdaLN modulation (`split_modulation=False`, training and
checkpoints, the reference's layout) or its observation rows and timestep rows as `kernel_0` /
`kernel_1` (`split_modulation=True`, `dit.ConditionDense`).
Every layout holds the same numbers and computes the same function up to float rounding
(tests/test_model_block_layout.py).

Inference runs unrolled and split (`inference_layout`, applied when a checkpoint is loaded for
the evaluator and the policy server; docs/results/policy-inference-layout.md): inside the
sampler's loop over diffusion steps XLA:CPU copies each scanned block's parameter slice out of
the stack on every iteration (~130 MB per block for the DROID config), and with one modulation
kernel every step multiplies all of its rows although only the timestep rows change. Training
keeps the config's layout (a scanned stack compiles faster).
"""

import re
from typing import Tuple

import jax
import ml_collections
import numpy as np

from uwm_jax import dims as dims_lib
from uwm_jax.model.dit import BLOCKS, MODULATION, part_kernel

_INDEXED = re.compile(rf"^{BLOCKS}_(\d+)$")


def stack_blocks(tree: dict) -> dict:
  """Unrolled {blocks_0: t0, blocks_1: t1, ...} -> scanned {blocks: leaves stacked on axis 0}.
  Other keys are kept; a tree without indexed blocks is returned as is."""
  indexed = sorted((int(m.group(1)), k) for k in tree if (m := _INDEXED.match(k)))
  if not indexed:
    return tree
  if [i for i, _ in indexed] != list(range(len(indexed))):
    raise ValueError(f"Blocks {[k for _, k in indexed]} are not numbered 0..n-1.")
  out = {k: v for k, v in tree.items() if not _INDEXED.match(k)}
  out[BLOCKS] = jax.tree.map(lambda *xs: np.stack(xs), *[tree[k] for _, k in indexed])
  return out


def unstack_blocks(tree: dict) -> dict:
  """Scanned {blocks: leaves (depth, ...)} -> unrolled {blocks_0: ..., blocks_{depth-1}: ...}.
  Other keys are kept; a tree without `blocks` is returned as is. Leaves keep their array
  type (a device array's slices stay on its device)."""
  if BLOCKS not in tree:
    return tree
  stacked = tree[BLOCKS]
  depths = {x.shape[0] for x in jax.tree.leaves(stacked)}
  if len(depths) != 1:
    raise ValueError(f"Stacked blocks disagree on the depth axis: {sorted(depths)}.")
  depth = depths.pop()
  out = {k: v for k, v in tree.items() if k != BLOCKS}
  for i in range(depth):
    out[f"{BLOCKS}_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out


def split_modulation_kernels(tree, rows: int):
  """Every `adaLN_modulation` {kernel (D_c, F), bias} in `tree` -> {kernel_0 (rows, F),
  kernel_1 (D_c - rows, F), bias} (dit.ConditionDense's split layout; rows = the observation
  condition's width). Works on scanned stacks too (the row axis is then axis 1)."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == MODULATION and isinstance(value, dict) and "kernel" in value:
      kernel = value["kernel"]
      axis = kernel.ndim - 2  # (..., D_c, F)
      if not 0 < rows < kernel.shape[axis]:
        raise ValueError(f"{MODULATION} kernel {kernel.shape} cannot be split at row {rows}.")
      index = lambda sl: (slice(None),) * axis + (sl,)
      out[key] = {part_kernel(0): kernel[index(slice(0, rows))],
                  part_kernel(1): kernel[index(slice(rows, None))], "bias": value["bias"]}
    else:
      out[key] = split_modulation_kernels(value, rows)
  return out


def inference_layout(params: dict, model_cfg: ml_collections.ConfigDict
                     ) -> Tuple[dict, ml_collections.ConfigDict]:
  """(params, model config) of a checkpoint -> the same model in the inference layout: DiT
  blocks unrolled (params["noise_net"]["dit"] unstacked, scan_layers False) and the AdaLN
  modulation kernels split into observation and timestep rows (split_modulation True), with a
  copy of the config. Already in that layout: returned unchanged."""
  scanned = bool(model_cfg.scan_layers)
  split = bool(model_cfg.get("split_modulation", False))  # older checkpoints lack the field
  if not scanned and split:
    return params, model_cfg
  noise_net = dict(params["noise_net"])
  if scanned:
    noise_net["dit"] = unstack_blocks(noise_net["dit"])
  if not split:
    noise_net = split_modulation_kernels(noise_net, dims_lib.model_dims(model_cfg).global_cond_dim)
  cfg = ml_collections.ConfigDict(model_cfg.to_dict())
  cfg.scan_layers, cfg.split_modulation = False, True
  return dict(params, noise_net=noise_net), cfg
