"""Shape and parameter summaries computed with `jax.eval_shape` (nothing is allocated)."""

from typing import Dict

import jax
import numpy as np

from uwm_jax.model.uwm import UnifiedWorldModel


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def abstract_params(model: UnifiedWorldModel):
  """(params, frozen) as ShapeDtypeStruct trees."""
  return jax.eval_shape(model.init, jax.random.key(0))


def _is_adaln(path) -> bool:
  return any(getattr(k, "key", None) == "adaLN_modulation" for k in path)


def parameter_counts(model: UnifiedWorldModel) -> Dict[str, int]:
  """Parameter counts per component: trainable (image encoder, noise net and its parts) and
  frozen (codec)."""
  params, frozen = abstract_params(model)
  net = params["noise_net"]
  counts = {}
  dit = net.get("dit", {})
  flat = jax.tree_util.tree_flatten_with_path(dit)[0]
  counts["noise_net.blocks.adaLN_modulation"] = int(
      sum(np.prod(x.shape) for p, x in flat if _is_adaln(p)))
  counts["noise_net.blocks.attn+mlp"] = count(dit) - counts["noise_net.blocks.adaLN_modulation"]
  for name in sorted(net):
    if name != "dit":
      counts[f"noise_net.{name}"] = count(net[name])
  counts["noise_net"] = count(net)
  counts["image_encoder"] = count(params["image_encoder"])
  counts["trainable"] = count(params)
  counts["frozen_codec"] = count(frozen)
  return counts


def describe(config) -> str:
  """The text `python -m uwm_jax.summarize` prints."""
  model = UnifiedWorldModel(config.model)
  d = model.dims
  lines = ["Token layout",
           f"  action tokens     {d.num_action_tokens}",
           f"  obs tokens        {d.num_obs_tokens}  ({d.num_views} views x "
           f"{d.patches_per_view} patches of {d.patch_shape})",
           f"  register tokens   {d.num_register_tokens}",
           f"  total tokens      {d.num_tokens}",
           "Shapes",
           f"  AdaLN condition   {d.cond_dim}  (global cond {d.global_cond_dim} + timestep "
           f"embedding {d.timestep_embed_dim})",
           f"  next-obs latent   {d.latent_shape}  (V, C, T, h, w; codec {config.model.codec})",
           f"  window            {d.window} frames (T_o {d.num_obs_frames}, H_a {d.action_len})",
           f"  action            ({d.action_len}, {d.action_dim})",
           "Parameters"]
  for name, n in parameter_counts(model).items():
    lines.append(f"  {name:<36s} {n:>14,d}")
  return "\n".join(lines)
