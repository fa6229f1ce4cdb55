"""A checkpoint loaded for inference: what the evaluator and the policy server both read.

  load_checkpoint(checkpoints_dir, step=None) -> LoadedCheckpoint(directory, step, params,
      frozen, config, stats): the inference params (EMA when on) and frozen codec of the given
      step or the newest one that loads (`uwm_jax.runs.checkpoint.load_params_step`), in the
      inference layout; its config with a complete `eval` section (`merged_config`); its
      dataset statistics
  check_same_config   a config given beside a checkpoint must match its model and diffusion
"""

import dataclasses
import json
import os
from typing import Optional

import ml_collections

from uwm_jax import config_base
from uwm_jax.model import block_layout
from uwm_jax.model.layers import COMPUTE_DTYPES
from uwm_jax.runs import checkpoint as ckpt

# Config sections that must agree between a checkpoint and a config given beside it.
MATCHING_SECTIONS = ("model", "diffusion")


class ConfigMismatchError(ValueError):
  """A checkpoint was trained with another config than the one given."""


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def check_same_config(checkpoint_config, config, checkpoint_path: str = "") -> None:
  """Raise ConfigMismatchError naming the fields where the model/diffusion configs differ."""
  diffs = []
  for section in MATCHING_SECTIONS:
    a = _flatten(json.loads(checkpoint_config[section].to_json_best_effort()), f"{section}.")
    b = _flatten(json.loads(config[section].to_json_best_effort()), f"{section}.")
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        diffs.append(f"{key}: checkpoint {a.get(key)!r} vs config {b.get(key)!r}")
  if diffs:
    shown = "; ".join(diffs[:6]) + (f"; ... ({len(diffs)} fields)" if len(diffs) > 6 else "")
    raise ConfigMismatchError(f"Checkpoint {checkpoint_path} was trained with another config: "
                              f"{shown}.")


def merged_config(checkpoint_config, config=None, eval_overrides: Optional[dict] = None):
  """The checkpoint's config whose `eval` section is: the defaults, updated with the
  checkpoint's (or, when given, `config`'s) eval fields, then with `eval_overrides`."""
  out = ml_collections.ConfigDict(checkpoint_config.to_dict())
  section = config_base.eval_config()  # also fills fields newer than the checkpoint
  source = config.eval if config is not None else out.get("eval", {})
  for key, value in source.items():
    if key in section:
      section[key] = type(section[key])(value)
  for key, value in (eval_overrides or {}).items():
    if key not in section:
      raise KeyError(f"Unknown eval field {key!r}; known: {sorted(section.keys())}.")
    section[key] = type(section[key])(value)
  out.eval = section
  return out


@dataclasses.dataclass
class LoadedCheckpoint:
  """What inference needs from a checkpoint (`load_checkpoint`)."""
  directory: str  # the `checkpoints` folder
  step: int
  params: dict
  frozen: dict
  config: ml_collections.ConfigDict  # the checkpoint's config with a complete `eval` section
  stats: dict  # dataset statistics


def load_checkpoint(checkpoint_dir: str, step: Optional[int] = None, *, config=None,
                    eval_overrides: Optional[dict] = None,
                    compute_dtype: str = "") -> LoadedCheckpoint:
  """The inference params, frozen codec, config (`merged_config`) and dataset statistics of a
  checkpoint (latest step when None): what the evaluator and the policy server
  (`uwm_jax.serve`) load, in the inference layout whatever layout training used
  (`model.block_layout.inference_layout`: DiT blocks unrolled, modulation kernels split; the
  returned config says so: model.scan_layers False, model.split_modulation True). `config`: a
  config the checkpoint must match (model, diffusion). `compute_dtype` ("float32" or
  "bfloat16"; "" = the checkpoint's): the precision the networks compute in (the parameters
  stay float32), e.g. bf16 for a CPU policy server (docs/serving.md, "Latency")."""
  if compute_dtype and compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, not "
                     f"{compute_dtype!r}.")
  directory = ckpt.resolve_checkpoints_dir(checkpoint_dir)
  # The given step, or the newest that loads (a corrupt one is skipped with a warning).
  step, params, frozen, ckpt_config, stats = ckpt.load_params_step(directory, step)
  if config is not None:
    check_same_config(ckpt_config, config, os.path.join(directory, str(step)))
  full = merged_config(ckpt_config, config, eval_overrides)
  if compute_dtype:
    full.model.compute_dtype = compute_dtype
  params, full.model = block_layout.inference_layout(params, full.model)
  return LoadedCheckpoint(directory, step, params, frozen, full, stats)
