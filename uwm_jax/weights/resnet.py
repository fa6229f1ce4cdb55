"""ResNet-18 weights into `uwm_jax.model.resnet.ResNet18GN` (the GroupNorm image encoder).

Two sources:
- torchvision ImageNet weights (`resnet18-f37072fd.pth`, a plain state dict): the convolutions
  are copied; as the reference does (docs/model.md, "Observation encoder"), every BatchNorm is
  replaced by a fresh GroupNorm, so the BatchNorm running statistics AND affine weights are
  discarded and every GroupNorm starts at scale 1 / bias 0; the 1000-class `fc` is discarded and a fresh
  Linear(512 -> feature_dim) is drawn with PyTorch's default init (U(-1/sqrt(512), 1/sqrt(512))
  for weight and bias).
- a trained GroupNorm ResNet inside a reference `models.pt`: everything (GroupNorm affines and
  the 768-d `fc` included) is copied (`convert_state_dict(..., from_torchvision=False)`).
"""

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from uwm_jax.model import resnet as resnet_lib
from uwm_jax.weights import keymap

_NORMS = ("bn1", "bn2", "downsample_1")
_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def template(feature_dim: int, width: int):
  module = resnet_lib.ResNet18GN(feature_dim, width)
  dummy = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), dummy)["params"]


def _is_norm(path: keymap.Path) -> bool:
  return len(path) >= 2 and path[-2] in _NORMS


def _is_fc(path: keymap.Path) -> bool:
  return path[0] == "fc"


def _torchvision_fill(width: int, seed: int):
  """Values for the leaves not taken from a torchvision file: GroupNorm 1/0 and a fresh fc
  (PyTorch's default Linear init: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
  rng = np.random.default_rng(seed)
  fan_in = width * 2**(len(resnet_lib.STAGE_BLOCKS) - 1)

  def fill(path, shape):
    if _is_norm(path):
      return np.ones(shape) if path[-1] == "scale" else np.zeros(shape)
    if _is_fc(path):
      return rng.uniform(-1.0, 1.0, shape) / np.sqrt(fan_in)
    return None

  return fill


def _torchvision_ignored(key: str) -> bool:
  """Keys of a torchvision file the reference drops: BatchNorm (all of it) and the 1000-way fc."""
  parts = key.split(".")
  module = parts[-2] if len(parts) >= 2 else ""
  is_bn = module.startswith("bn") or (len(parts) >= 3 and parts[-3] == "downsample"
                                      and module == "1")
  return is_bn or parts[0] == "fc" or parts[-1] in _BN_BUFFERS


def convert_state_dict(state_dict, *, feature_dim: int, width: int, prefix: str = "",
                       from_torchvision: bool, seed: int = 0,
                       source: str = "the ResNet weights") -> Tuple[dict, set]:
  """A ResNet-18 state dict (keys under `prefix`) -> (ResNet18GN params, keys used).

  from_torchvision: treat it as torchvision ImageNet weights (norms reset, fresh fc drawn with
  `seed`); otherwise copy the GroupNorm affines and fc from the state dict.
  """
  fill = _torchvision_fill(width, seed) if from_torchvision else None
  return keymap.convert_tree(state_dict, template(feature_dim, width), prefix=prefix,
                             source=source, fill=fill)


def load_torchvision_resnet18(path: str, *, feature_dim: int = 768, width: int = 64,
                              seed: int = 0) -> dict:
  """torchvision `resnet18-*.pth` -> ResNet18GN params (BatchNorm discarded, see module doc)."""
  # Late: torch is optional (weight import and LIBERO only).
  import torch  # pylint: disable=import-outside-toplevel
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, dict):
    raise keymap.WeightImportError(f"{path} does not hold a state dict (got {type(state)}).")
  state_dict = {k: v.float().numpy() for k, v in state.items()}
  params, used = convert_state_dict(state_dict, feature_dim=feature_dim, width=width,
                                    from_torchvision=True, seed=seed, source=path)
  keymap.check_all_used(state_dict, used, path, ignore=_torchvision_ignored)
  if "bn1.running_mean" not in state_dict:
    raise keymap.WeightImportError(
        f"{path} has no BatchNorm statistics ('bn1.running_mean'): not torchvision ImageNet "
        f"weights. A GroupNorm ResNet from a UWM checkpoint is imported with `convert uwm`.")
  return params
