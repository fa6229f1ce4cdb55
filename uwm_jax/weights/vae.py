"""The SDXL VAE from a diffusers AutoencoderKL folder into `uwm_jax.model.vae.AutoencoderKL`.

A folder holds `config.json` and `diffusion_pytorch_model.safetensors` (as `stabilityai/sdxl-vae`
ships it; an fp16 variant or a `.bin` file are read too). The safetensors file is read with
numpy, so converting the VAE needs neither torch nor diffusers. Older files name the mid-block
attention `query/key/value/proj_attn`; they are renamed as diffusers does when loading.
"""

import json
import os
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from uwm_jax.model import vae as vae_lib
from uwm_jax.weights import keymap

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.bin")
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# Config fields whose value the Flax AutoencoderKL hard-codes: (field, required value, default
# when the field is absent from config.json).
_FIXED_FIELDS = (
    ("in_channels", 3, 3), ("out_channels", 3, 3), ("act_fn", "silu", "silu"),
    ("norm_num_groups", vae_lib.NORM_GROUPS, 32), ("use_quant_conv", True, True),
    ("use_post_quant_conv", True, True), ("mid_block_add_attention", True, True),
)


def read_config(folder: str) -> dict:
  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: expected a diffusers AutoencoderKL folder "
                            f"({CONFIG_FILE} + {WEIGHT_FILES[0]}).")
  with open(path) as f:
    return json.load(f)


def module_kwargs(config: dict, source: str = "config.json") -> dict:
  """diffusers AutoencoderKL config -> `AutoencoderKL` attributes; raises naming the field that
  the Flax module cannot represent."""
  cls = config.get("_class_name", "AutoencoderKL")
  if cls != "AutoencoderKL":
    raise keymap.WeightImportError(f"{source}: _class_name is {cls!r}, expected 'AutoencoderKL'.")
  for field, required, default in _FIXED_FIELDS:
    if config.get(field, default) != required:
      raise keymap.WeightImportError(
          f"{source}: field {field!r} is {config.get(field)!r}; the Flax AutoencoderKL needs "
          f"{required!r}.")
  chans = tuple(int(c) for c in config["block_out_channels"])
  for field, block in (("down_block_types", "DownEncoderBlock2D"),
                       ("up_block_types", "UpDecoderBlock2D")):
    types = tuple(config.get(field, (block,) * len(chans)))
    if types != (block,) * len(chans):
      raise keymap.WeightImportError(
          f"{source}: field {field!r} is {list(types)}; expected {len(chans)} x {block!r}.")
  return dict(block_out_channels=chans, layers_per_block=int(config.get("layers_per_block", 1)),
              latent_channels=int(config.get("latent_channels", 4)))


def check_sdxl(config: dict, source: str = "config.json") -> None:
  """Raise unless the VAE is the SDXL architecture with the 0.13025 scaling factor that
  `uwm_jax.model.codecs.VAECodec` assumes."""
  kwargs = module_kwargs(config, source)
  expected = dict(block_out_channels=vae_lib.SDXL_BLOCK_OUT_CHANNELS, layers_per_block=2,
                  latent_channels=4)
  for field, value in expected.items():
    if kwargs[field] != value:
      raise keymap.WeightImportError(
          f"{source}: field {field!r} is {kwargs[field]}; the model's sdxl_vae codec needs "
          f"{value} (the SDXL VAE).")
  factor = config.get("scaling_factor")
  if factor is None or abs(float(factor) - vae_lib.SDXL_SCALING_FACTOR) > 1e-9:
    raise keymap.WeightImportError(
        f"{source}: scaling_factor is {factor}; the sdxl_vae codec scales latents by "
        f"{vae_lib.SDXL_SCALING_FACTOR} (the SDXL VAE).")


def read_weights(folder: str) -> Dict[str, np.ndarray]:
  """The folder's weight file as {diffusers key: float32 numpy array}."""
  for name in WEIGHT_FILES:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      continue
    if name.endswith(".safetensors"):
      # Late: the weight import's readers load only for the format found.
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
      return {k: v.astype(np.float32) for k, v in load_file(path).items()}
    import torch  # pylint: disable=import-outside-toplevel
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise FileNotFoundError(f"No weight file in {folder}: expected one of {WEIGHT_FILES}.")


def rename_deprecated_attention(state_dict: Dict[str, object]) -> Dict[str, object]:
  """`....attentions.0.query.weight` -> `....attentions.0.to_q.weight` (and key/value/proj_attn)."""
  out = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if len(parts) >= 3 and parts[-2] in _DEPRECATED_ATTENTION and "attentions" in parts:
      key = ".".join(parts[:-2] + [_DEPRECATED_ATTENTION[parts[-2]], parts[-1]])
    out[key] = value
  return out


def template(kwargs: dict, image_size: int = 64):
  """Shapes of the Flax AutoencoderKL params for these attributes (nothing is allocated)."""
  module = vae_lib.AutoencoderKL(**kwargs)
  dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), dummy)["params"]


def convert_state_dict(state_dict, kwargs: dict, *, prefix: str = "",
                       source: str = "the VAE weights") -> Tuple[dict, set]:
  """diffusers AutoencoderKL state dict (keys under `prefix`) -> (Flax params, keys used).

  Keys are read as `prefix + <diffusers key>`; deprecated attention names are accepted.
  """
  renamed = rename_deprecated_attention({k[len(prefix):]: k for k in state_dict
                                         if k.startswith(prefix)})
  view = {new: state_dict[old] for new, old in renamed.items()}
  params, used = keymap.convert_tree(view, template(kwargs), source=source)
  return params, {renamed[k] for k in used}


def load_diffusers_vae(folder: str, *, require_sdxl: bool = True) -> Tuple[dict, dict]:
  """A diffusers AutoencoderKL folder -> (Flax params, AutoencoderKL attributes).

  require_sdxl: also check that it is the SDXL VAE the `sdxl_vae` codec expects.
  """
  config = read_config(folder)
  source = os.path.join(folder, CONFIG_FILE)
  kwargs = module_kwargs(config, source)
  if require_sdxl:
    check_sdxl(config, source)
  state_dict = read_weights(folder)
  params, used = convert_state_dict(state_dict, kwargs, source=f"VAE weights in {folder}")
  keymap.check_all_used(state_dict, used, f"VAE weights in {folder}")
  return params, kwargs
