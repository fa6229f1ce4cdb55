"""A fresh model whose image encoder and/or codec start from imported pretrained weights.

This is the starting point of a pretraining run as the reference builds it: ImageNet ResNet-18
(BatchNorm discarded, `uwm_jax.weights.resnet`) and the frozen SDXL VAE; everything else (the
noise net, the new 768-d `fc`) freshly initialised.
"""

from typing import Optional, Tuple

import jax

from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.weights import keymap
from uwm_jax.weights import resnet as resnet_weights
from uwm_jax.weights import vae as vae_weights


def _check_same_shapes(name: str, got, want) -> None:
  got_shapes = {k: tuple(v.shape) for k, v in keymap.tree_paths(got).items()}
  want_shapes = {k: tuple(v.shape) for k, v in keymap.tree_paths(want).items()}
  if got_shapes != want_shapes:
    diff = sorted(set(got_shapes.items()) ^ set(want_shapes.items()))[:4]
    raise keymap.WeightImportError(
        f"The imported {name} does not fit the model config; differing leaves: {diff}.")


def init_with_pretrained(config, *, vae_dir: Optional[str] = None,
                         resnet_path: Optional[str] = None,
                         rng: Optional[jax.Array] = None) -> Tuple[dict, dict]:
  """(params, frozen) of `UnifiedWorldModel(config.model)` initialised with `rng` (default
  PRNGKey(config.seed)), then: params["image_encoder"] <- torchvision ResNet-18 at
  `resnet_path`; frozen <- the SDXL VAE folder `vae_dir` (needs model.codec == "sdxl_vae")."""
  model_cfg = config.model
  if rng is None:
    rng = jax.random.PRNGKey(config.seed)
  if vae_dir is not None and model_cfg.codec != "sdxl_vae":
    raise keymap.WeightImportError(
        f"A VAE was given but model.codec is {model_cfg.codec!r}, not 'sdxl_vae'.")
  model = UnifiedWorldModel(model_cfg)
  k_params, k_frozen = jax.random.split(rng)
  encoder = frozen = None
  if resnet_path is not None:  # imported first: a bad file fails before the model is built
    encoder = resnet_weights.load_torchvision_resnet18(
        resnet_path, feature_dim=model_cfg.image_feature_dim, width=model_cfg.resnet_width,
        seed=int(config.seed))
    _check_same_shapes("ResNet-18", encoder,
                       jax.eval_shape(model.init_params, k_params)["image_encoder"])
  if vae_dir is not None:
    frozen, _ = vae_weights.load_diffusers_vae(vae_dir, require_sdxl=True)
    _check_same_shapes("VAE", frozen, jax.eval_shape(model.init_frozen, k_frozen))
  params = jax.device_get(jax.jit(model.init_params)(k_params))
  if encoder is not None:
    params = dict(params, image_encoder=encoder)
  if frozen is None:
    frozen = jax.device_get(jax.jit(model.init_frozen)(k_frozen))
  return params, frozen
