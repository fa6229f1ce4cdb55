"""The Unified World Model: observation encoder + latent codec + noise-prediction network.

`UnifiedWorldModel` is a plain Python object holding Flax modules; every method is a pure
function of explicit params, so it composes with jit, grad and sharding:

  params = {"image_encoder": ..., "noise_net": ...}   trained
  frozen = codec params ({} for the pixels codec)      never given to the optimizer
"""

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from uwm_jax import dims as dims_lib
from uwm_jax.model.codecs import make_codec
from uwm_jax.model.image_transforms import transform_views
from uwm_jax.model.layers import dtype_of
from uwm_jax.model.noise_net import NoisePredictionNet
from uwm_jax.model.resnet import ResNet18GN


class UnifiedWorldModel:

  def __init__(self, model_cfg):
    self.cfg = ml_collections.FrozenConfigDict(model_cfg)
    self.dims = dims_lib.model_dims(self.cfg)
    if self.cfg.image_encoder != "resnet18":
      raise ValueError(f"Unknown model.image_encoder {self.cfg.image_encoder!r}.")
    self.image_encoder = ResNet18GN(self.cfg.image_feature_dim, self.cfg.resnet_width,
                                    dtype_of(self.cfg.compute_dtype),
                                    coord_channels=self.cfg.get("image_coord_channels", False))
    self.noise_net = NoisePredictionNet(self.cfg)
    self.codec = make_codec(self.cfg) if self.dims.num_timesteps == 2 else None

  @property
  def predicts_next_obs(self) -> bool:
    return self.dims.num_timesteps == 2

  # ---------------------------------------------------------------- parameters
  def _dummy_inputs(self, batch_size: int = 1):
    d = self.dims
    return dict(
        global_cond=jnp.zeros((batch_size, d.global_cond_dim), jnp.float32),
        noisy_action=jnp.zeros((batch_size, d.action_len, d.action_dim), jnp.float32),
        t_action=jnp.zeros((batch_size,), jnp.int32),
        noisy_latent=(jnp.zeros((batch_size,) + d.latent_shape, jnp.float32)
                      if self.predicts_next_obs else None),
        t_obs=jnp.zeros((batch_size,), jnp.int32) if self.predicts_next_obs else None,
    )

  def init_params(self, rng: jax.Array) -> dict:
    """Trainable params {"image_encoder", "noise_net"}."""
    k_img, k_net = jax.random.split(rng)
    images = jnp.zeros((1,) + self.dims.crop_shape + (3,), jnp.float32)
    return {
        "image_encoder": self.image_encoder.init(k_img, images)["params"],
        "noise_net": self.noise_net.init(k_net, **self._dummy_inputs())["params"],
    }

  def init_frozen(self, rng: jax.Array) -> dict:
    """Frozen codec params (random until pretrained weights are imported; {} for DP)."""
    return self.codec.init(rng) if self.codec is not None else {}

  def init(self, rng: jax.Array) -> Tuple[dict, dict]:
    """-> (params, frozen), compiled once per model (eager init is slow on CPU)."""
    return self._jitted_init(rng)

  @functools.cached_property
  def _jitted_init(self):

    def init(rng):
      k_params, k_frozen = jax.random.split(rng)
      return self.init_params(k_params), self.init_frozen(k_frozen)

    return jax.jit(init)

  # ---------------------------------------------------------------- observations
  def transform(self, obs: jax.Array, next_obs: Optional[jax.Array], rng: jax.Array,
                train: bool):
    """uint8 (B, V, T_o, H, W, 3) current [and next] frames -> float [0, 1] crops.

    Current and next frames of a (sample, view) share one crop and jitter draw.
    """
    T = obs.shape[2]
    frames = obs if next_obs is None else jnp.concatenate([obs, next_obs], axis=2)
    out = transform_views(frames, rng, self.cfg, train)
    if next_obs is None:
      return out, None
    return out[:, :, :T], out[:, :, T:]

  def global_cond(self, params: dict, obs_images: jax.Array,
                  low_dim: Optional[jax.Array] = None) -> jax.Array:
    """(B, V, T_o, h, w, 3) float -> (B, V*T_o*F [+ T_o*D_low]) in (view, frame, feature) order."""
    B = obs_images.shape[0]
    feats = self.image_encoder.apply({"params": params["image_encoder"]},
                                     obs_images.reshape((-1,) + obs_images.shape[3:]))
    parts = [feats.reshape(B, -1).astype(jnp.float32)]
    if self.cfg.low_dim_dim:
      if low_dim is None:
        raise ValueError("model.low_dim_dim > 0 but the batch has no 'low_dim'.")
      parts.append(low_dim.reshape(B, -1).astype(jnp.float32))
    return jnp.concatenate(parts, axis=-1)

  def encode_next_obs(self, frozen: dict, next_images: jax.Array, rng: jax.Array) -> jax.Array:
    """(B, V, T_o, h, w, 3) float [0, 1] -> latent (B, V, C, T_o, h', w'); no gradient."""
    return jax.lax.stop_gradient(self.codec.encode(frozen, next_images, rng))

  def next_latent_from_moments(self, mean: jax.Array, std: jax.Array,
                               rng: jax.Array) -> jax.Array:
    """Cached posterior moments (a latent cache), each (B, V, C, T_o, h', w') -> the latent
    `encode_next_obs` would give for the same key: float32, no gradient."""
    return jax.lax.stop_gradient(self.codec.sample(
        mean.astype(jnp.float32), std.astype(jnp.float32), rng))

  def decode_latent(self, frozen: dict, latent: jax.Array) -> jax.Array:
    """latent (B, V, C, T_o, h', w') -> (B, V, T_o, h, w, 3) float [0, 1]."""
    return self.codec.decode(frozen, latent)

  # ---------------------------------------------------------------- denoiser
  def predict_noise(self, params: dict, cond: jax.Array, noisy_action: jax.Array,
                    t_action: jax.Array, noisy_latent: Optional[jax.Array] = None,
                    t_obs: Optional[jax.Array] = None):
    """-> (eps_action (B, H_a, A), eps_latent (B, V, C, T, h, w) or None)."""
    return self.noise_net.apply({"params": params["noise_net"]}, cond, noisy_action, t_action,
                                noisy_latent, t_obs)
