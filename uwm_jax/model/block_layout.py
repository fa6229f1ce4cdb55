"""The two parameter layouts of the DiT stack (`model.dit.DiTStack`) and the conversion between them.

Scanned (`model.scan_layers=True`, the training default): one subtree `blocks` whose leaves
are stacked on a leading depth axis, (depth, ...). Unrolled (`scan_layers=False`, the TPU
presets): one subtree per block, `blocks_0` .. `blocks_{depth-1}`. Both hold the same numbers and
compute the same function (tests/test_model_block_layout.py).

Inference runs unrolled (`inference_layout`, applied when a checkpoint is loaded for the
evaluator and the policy server): inside the sampler's loop over diffusion steps, XLA:CPU copies
each scanned block's parameter slice out of the stack on every iteration (~130 MB per block for
the DROID config), which made the batch-1 DROID policy ~1.5x slower on CPU (docs/training.md,
"Where the time goes (CPU)"). Training keeps the config's layout (a scanned stack compiles
faster).
"""

import re
from typing import Tuple

import jax
import ml_collections
import numpy as np

BLOCKS = "blocks"  # DiTStack's submodule name: `blocks` (scanned) or `blocks_<i>` (unrolled)
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


def inference_layout(params: dict, model_cfg: ml_collections.ConfigDict
                     ) -> Tuple[dict, ml_collections.ConfigDict]:
  """(params, model config) of a checkpoint -> the same model with its DiT blocks unrolled:
  params["noise_net"]["dit"] unstacked and a copy of the config with scan_layers=False.
  Already unrolled: returned unchanged."""
  if not model_cfg.scan_layers:
    return params, model_cfg
  noise_net = dict(params["noise_net"])
  noise_net["dit"] = unstack_blocks(noise_net["dit"])
  cfg = ml_collections.ConfigDict(model_cfg.to_dict())
  cfg.scan_layers = False
  return dict(params, noise_net=noise_net), cfg
