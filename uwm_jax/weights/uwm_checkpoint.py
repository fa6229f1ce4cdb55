"""The released PyTorch UWM checkpoints (`models.pt`, docs/weights.md) into uwm_jax params.

`models.pt` is a `torch.save`d dict: `model` (the UnifiedWorldModel state dict: the noise net
under `noise_pred_net.`, the GroupNorm ResNet-18 under `obs_encoder.img_encoder.model.`, the SDXL
VAE under `obs_encoder.vae.vae.` plus the latent `shift`/`scale`), `action_normalizer` and
`lowdim_normalizer` (pickled objects with `scale`/`offset` arrays, or None), `step`, and the
optimizer/scheduler/scaler states (ignored).

The model config is inferred: every candidate config (DROID, LIBERO) is checked against the
state-dict shapes and the one that fits is used; none fitting is an error that names, per
candidate, the keys that do not fit. Normalizers become the dataset-statistics contract
`{"action": {"min": offset - scale, "max": offset + scale}}`; a checkpoint without an action
normalizer (LIBERO: actions are not normalised) gets identity statistics (min -1, max 1).
"""

import dataclasses
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import jax
import ml_collections
import numpy as np

from uwm_jax.cli_config import load_config
from uwm_jax.model import block_layout
from uwm_jax.model import codecs as codecs_lib
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.weights import keymap
from uwm_jax.weights import torch_pickle

NOISE_NET_PREFIX = "noise_pred_net."
RESNET_PREFIX = "obs_encoder.img_encoder.model."
VAE_PREFIX = "obs_encoder.vae.vae."
VAE_SHIFT_KEY = "obs_encoder.vae.shift"
VAE_SCALE_KEY = "obs_encoder.vae.scale"
CANDIDATE_CONFIGS = ("configs/droid.py", "configs/libero.py")


@dataclasses.dataclass
class ConvertedUWM:
  params: dict  # {"image_encoder", "noise_net"}
  frozen: dict  # SDXL VAE params
  config: ml_collections.ConfigDict
  dataset_stats: dict
  step: int
  config_path: str  # the config file the checkpoint was matched to ("" when given as a dict)
  has_action_normalizer: bool  # False: identity action statistics were written


# ------------------------------------------------------------------ noise-net key names
def noise_net_torch_key(path: keymap.Path) -> str:
  """Flax noise-net leaf path -> key under `noise_pred_net.` (docs/weights.md).

  patch_encoder -> obs_patchifier.patch_encoder, action_encoder/fc_0 -> action_encoder.0,
  dit/blocks_3/... -> blocks.3...., adaLN_modulation -> adaLN_modulation.1 (after the SiLU).
  """
  name = keymap.default_torch_key(path)
  if name.startswith("dit."):
    name = name[len("dit."):]
  if name.startswith(("patch_encoder.", "patch_decoder.")):
    name = "obs_patchifier." + name
  for mlp in ("action_encoder", "action_decoder"):
    if name.startswith(mlp + ".fc."):
      name = mlp + "." + name[len(mlp + ".fc."):]
  return name.replace("adaLN_modulation.", "adaLN_modulation.1.")


# ------------------------------------------------------------------ templates
def _unscanned(model_cfg) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(model_cfg)
  cfg.scan_layers = False
  return cfg


def templates(model_cfg) -> Tuple[dict, dict]:
  """Shapes of (params, frozen) for this model config with unscanned DiT blocks."""
  model = UnifiedWorldModel(_unscanned(model_cfg))
  params = jax.eval_shape(model.init_params, jax.random.PRNGKey(0))
  frozen = jax.eval_shape(model.init_frozen, jax.random.PRNGKey(0))
  return params, frozen


def _parts(model_cfg):
  """(name, prefix, template, torch_key) for every part of the state dict."""
  params_t, frozen_t = templates(model_cfg)
  parts = [("noise_net", NOISE_NET_PREFIX, params_t["noise_net"], noise_net_torch_key),
           ("image_encoder", RESNET_PREFIX, params_t["image_encoder"], keymap.default_torch_key)]
  if model_cfg.codec == "sdxl_vae":
    parts.append(("vae", VAE_PREFIX, frozen_t, keymap.default_torch_key))
  return parts


def _extra_keys(model_cfg):
  return {VAE_SHIFT_KEY, VAE_SCALE_KEY} if model_cfg.codec == "sdxl_vae" else set()


def shape_problems(shapes: Dict[str, Tuple[int, ...]], model_cfg) -> list:
  """Every key of a `model` state dict that does not fit this model config (empty = fits)."""
  problems, used = [], set(_extra_keys(model_cfg))
  for _, prefix, tmpl, torch_key in _parts(model_cfg):
    p, u = keymap.shape_problems(shapes, tmpl, torch_key=torch_key, prefix=prefix)
    problems += p
    used |= u
  problems += [f"unexpected key {k!r}" for k in sorted(shapes) if k not in used]
  for key in _extra_keys(model_cfg):
    if key not in shapes:
      problems.append(f"missing key {key!r}")
  return problems


def infer_config(shapes: Dict[str, Tuple[int, ...]],
                 candidates: Sequence[str] = CANDIDATE_CONFIGS
                 ) -> Tuple[str, ml_collections.ConfigDict]:
  """The candidate config whose model fits every shape of the state dict -> (path, config)."""
  report = []
  for spec in candidates:
    config = load_config(spec)
    problems = shape_problems(shapes, config.model)
    if not problems:
      return spec, config
    report.append(f"  {spec}: {len(problems)} problem(s), e.g. " + "; ".join(problems[:3]))
  raise keymap.WeightImportError(
      "The checkpoint's state dict fits none of the candidate configs:\n" + "\n".join(report)
      + "\nPass the matching config explicitly (--config).")


# ------------------------------------------------------------------ normalizers
def normalizer_stats(normalizer, dim: int, name: str) -> Optional[dict]:
  """A reference normalizer (scale, offset) -> {"min": offset - scale, "max": offset + scale};
  None -> None. Raises naming `name` when it has no scale/offset or the wrong size."""
  if normalizer is None:
    return None
  attrs = torch_pickle.holder_attributes(normalizer)
  missing = [a for a in ("scale", "offset") if a not in attrs]
  if missing:
    raise keymap.WeightImportError(
        f"{name} ({normalizer!r}) has no attribute(s) {missing}; attributes: {sorted(attrs)}.")
  scale, offset = (np.asarray(_to_numpy(attrs[a]), np.float64).reshape(-1)
                   for a in ("scale", "offset"))
  if scale.shape != (dim,) or offset.shape != (dim,):
    raise keymap.WeightImportError(
        f"{name}: scale {scale.shape} / offset {offset.shape} do not match the model's "
        f"dimension {dim}.")
  return {"min": (offset - scale).tolist(), "max": (offset + scale).tolist()}


def identity_stats(dim: int) -> dict:
  """Statistics that normalise to the identity (scale 1, offset 0)."""
  return {"min": [-1.0] * dim, "max": [1.0] * dim}


def _to_numpy(x):
  """A torch tensor (any float dtype, bf16 included) -> numpy; anything else unchanged."""
  if not hasattr(x, "detach"):
    return x
  x = x.detach().cpu()
  return (x.float() if x.is_floating_point() else x).numpy()


def dataset_stats(checkpoint: dict, model_cfg) -> dict:
  """The dataset-statistics contract from a checkpoint's normalizers (see module doc)."""
  action = normalizer_stats(checkpoint.get("action_normalizer"), model_cfg.action_dim,
                            "action_normalizer")
  stats = {"action": action if action is not None else identity_stats(model_cfg.action_dim)}
  if model_cfg.low_dim_dim:
    low = normalizer_stats(checkpoint.get("lowdim_normalizer"), model_cfg.low_dim_dim,
                           "lowdim_normalizer")
    stats["low_dim"] = low if low is not None else identity_stats(model_cfg.low_dim_dim)
  return stats


# ------------------------------------------------------------------ conversion
def _check_vae_normalisation(state_dict, source: str) -> None:
  """The codec hard-codes latent = (z * 0.13025 - 0) / 3: the file must agree."""
  for key, want in ((VAE_SHIFT_KEY, codecs_lib.VAE_LATENT_SHIFT),
                    (VAE_SCALE_KEY, codecs_lib.VAE_LATENT_SCALE)):
    got = np.asarray(state_dict[key], np.float64)
    if not np.allclose(got, want):
      raise keymap.WeightImportError(
          f"{source}: {key!r} is {got.reshape(-1).tolist()}; the sdxl_vae codec uses {want}.")


def convert_model_state_dict(state_dict, model_cfg, source: str = "models.pt") -> Tuple[dict, dict]:
  """A UnifiedWorldModel state dict ({key: array}) -> (params, frozen) for `model_cfg`.

  The DiT blocks are stacked for `nn.scan` when model_cfg.scan_layers, else kept as blocks_i.
  """
  shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
  problems = shape_problems(shapes, model_cfg)
  if problems:
    raise keymap.WeightImportError(
        f"{source} does not fit the config ({len(problems)} problem(s)): "
        + "; ".join(problems[:8]))
  if model_cfg.codec == "sdxl_vae":
    _check_vae_normalisation(state_dict, source)
  out = {}
  for name, prefix, tmpl, torch_key in _parts(model_cfg):
    out[name], _ = keymap.convert_tree(state_dict, tmpl, torch_key=torch_key, prefix=prefix,
                                       source=source)
  if model_cfg.scan_layers:
    out["noise_net"]["dit"] = block_layout.stack_blocks(out["noise_net"]["dit"])
  return ({"image_encoder": out["image_encoder"], "noise_net": out["noise_net"]},
          out.get("vae", {}))


def read_checkpoint(path: str) -> dict:
  """Load `models.pt` (no reference code needed) and check it has a `model` state dict."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found.")
  ckpt = torch_pickle.load_torch_file(path)
  if not isinstance(ckpt, dict) or "model" not in ckpt:
    keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
    raise keymap.WeightImportError(
        f"{path} is not a UWM checkpoint: expected a dict with key 'model', got {keys}.")
  return ckpt


def convert_checkpoint(path: str, config: Union[str, ml_collections.ConfigDict, None] = None,
                       scan_layers: Optional[bool] = None) -> ConvertedUWM:
  """`models.pt` -> ConvertedUWM.

  config: a config spec (`file.py[:variant]`) or ConfigDict to use instead of inferring one
  (DROID / LIBERO) from the shapes; scan_layers: override model.scan_layers of the output.
  """
  ckpt = read_checkpoint(path)
  state_dict = {k: _to_numpy(v) for k, v in ckpt["model"].items()}
  if state_dict and all(k.startswith("module.") for k in state_dict):  # a DDP-wrapped save
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  if config is None:
    config_path, cfg = infer_config({k: tuple(v.shape) for k, v in state_dict.items()})
  elif isinstance(config, str):
    config_path, cfg = config, load_config(config)
  else:
    config_path, cfg = "", ml_collections.ConfigDict(config)
  if scan_layers is not None:
    cfg.model.scan_layers = bool(scan_layers)
  params, frozen = convert_model_state_dict(state_dict, cfg.model, source=path)
  step = ckpt.get("step")
  return ConvertedUWM(params=params, frozen=frozen, config=cfg,
                      dataset_stats=dataset_stats(ckpt, cfg.model),
                      step=int(step) if step is not None else 0, config_path=config_path,
                      has_action_normalizer=ckpt.get("action_normalizer") is not None)
