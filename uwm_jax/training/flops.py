"""An analytic FLOP count of one training step, and MFU.

Counts matrix multiplies and convolutions only (2 FLOPs per multiply-add); norms, activations
and softmax are ignored, as is usual for MFU. A training step costs 3x the forward FLOPs of
the trained parts (ResNet + noise network: forward, and a backward of twice the forward) plus
one forward of the frozen codec's encoder on the next observations (none when the next-obs
latents come from a latent cache, `data.latent_cache_dir`).
"""

import dataclasses
import math
from typing import Optional, Tuple

from uwm_jax import dims as dims_lib
from uwm_jax.model import resnet as resnet_lib
from uwm_jax.model import vae as vae_lib


def _conv_out(size: int, kernel: int, stride: int, pad_total: int) -> int:
  return (size + pad_total - kernel) // stride + 1


def conv_flops(hw_out: Tuple[int, int], kernel: int, c_in: int, c_out: int) -> int:
  return 2 * hw_out[0] * hw_out[1] * kernel * kernel * c_in * c_out


def resnet18_flops(crop_shape: Tuple[int, int], width: int, feature_dim: int) -> int:
  """Forward FLOPs of `ResNet18GN` on one image."""
  H, W = crop_shape
  H, W = _conv_out(H, 7, 2, 6), _conv_out(W, 7, 2, 6)
  total = conv_flops((H, W), 7, 3, width)
  H, W = _conv_out(H, 3, 2, 2), _conv_out(W, 3, 2, 2)  # max pool
  c_in = width
  for stage, blocks in enumerate(resnet_lib.STAGE_BLOCKS):
    c = width * 2**stage
    for b in range(blocks):
      stride = 2 if (stage > 0 and b == 0) else 1
      Ho, Wo = _conv_out(H, 3, stride, 2), _conv_out(W, 3, stride, 2)
      total += conv_flops((Ho, Wo), 3, c_in, c) + conv_flops((Ho, Wo), 3, c, c)
      if stride != 1 or c_in != c:
        total += conv_flops((Ho, Wo), 1, c_in, c)
      H, W, c_in = Ho, Wo, c
  return total + 2 * c_in * feature_dim


def vae_encoder_flops(crop_shape: Tuple[int, int],
                      channels: Tuple[int, ...] = vae_lib.SDXL_BLOCK_OUT_CHANNELS,
                      layers_per_block: int = 2, latent_channels: int = 4) -> int:
  """Forward FLOPs of the SDXL AutoencoderKL encoder (+ quant conv) on one image."""
  H, W = crop_shape

  def resnet(hw, c_in, c_out):
    f = conv_flops(hw, 3, c_in, c_out) + conv_flops(hw, 3, c_out, c_out)
    return f + (conv_flops(hw, 1, c_in, c_out) if c_in != c_out else 0)

  total = conv_flops((H, W), 3, 3, channels[0])
  c_in = channels[0]
  for i, c in enumerate(channels):
    for _ in range(layers_per_block):
      total += resnet((H, W), c_in, c)
      c_in = c
    if i < len(channels) - 1:
      H, W = _conv_out(H, 3, 2, 1), _conv_out(W, 3, 2, 1)
      total += conv_flops((H, W), 3, c, c)
  n = H * W
  total += 2 * resnet((H, W), c_in, c_in)
  total += 4 * 2 * n * c_in * c_in + 2 * 2 * n * n * c_in  # q, k, v, out + attention
  total += conv_flops((H, W), 3, c_in, 2 * latent_channels)
  return total + conv_flops((H, W), 1, 2 * latent_channels, 2 * latent_channels)


def noise_net_flops(model_cfg) -> int:
  """Forward FLOPs of the noise-prediction network for one sample."""
  d = dims_lib.model_dims(model_cfg)
  E, N, Dc, L = model_cfg.embed_dim, d.num_tokens, d.cond_dim, model_cfg.depth
  hidden_mlp = model_cfg.mlp_ratio * E
  block = (2 * Dc * 6 * E  # AdaLN modulation (once per sample)
           + 2 * N * E * 3 * E + 2 * 2 * N * N * E + 2 * N * E * E  # attention
           + 2 * 2 * N * E * hidden_mlp)  # MLP
  head = 2 * Dc * 2 * E + 2 * N * E * E
  Dt = d.timestep_embed_dim
  timestep = 2 * d.num_timesteps * Dt * 4 * Dt + 2 * 4 * Dt * Dt
  h = 4 * max(d.action_dim, E)
  action = 2 * d.action_len * (d.action_dim * h + h * E) * 2  # encoder + decoder
  patches = 2 * 2 * d.num_obs_tokens * d.patch_dim * E  # patch encoder + decoder
  return L * block + head + timestep + action + patches


@dataclasses.dataclass(frozen=True)
class StepFlops:
  image_encoder: int  # forward, per sample
  noise_net: int  # forward, per sample
  codec_encoder: int  # forward, per sample (frozen: no backward)

  @property
  def per_sample(self) -> int:
    """Training FLOPs per sample: 3 x trained forward + codec forward."""
    return 3 * (self.image_encoder + self.noise_net) + self.codec_encoder


def train_step_flops(model_cfg, latent_cache: bool = False) -> StepFlops:
  """latent_cache: the next-obs latents are read from a latent cache (no codec encoding)."""
  d = dims_lib.model_dims(model_cfg)
  images = d.num_views * d.num_obs_frames
  img = images * resnet18_flops(tuple(model_cfg.crop_shape), model_cfg.resnet_width,
                                model_cfg.image_feature_dim)
  codec = 0
  if d.num_timesteps == 2 and model_cfg.codec == "sdxl_vae" and not latent_cache:
    codec = images * vae_encoder_flops(tuple(model_cfg.crop_shape))
  return StepFlops(image_encoder=img, noise_net=noise_net_flops(model_cfg), codec_encoder=codec)


def policy_flops(model_cfg, num_inference_steps: int) -> int:
  """FLOPs of one policy call for one sample: the ResNet on every current frame, then the noise
  network once per DDIM step (no codec: the marginalised latent is noise)."""
  images = train_step_flops(model_cfg, latent_cache=True).image_encoder
  return images + num_inference_steps * noise_net_flops(model_cfg)


# Dense bf16 peak FLOP/s per chip (vendor figures), matched against jax's device_kind.
PEAK_FLOPS = (
    ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12),
    ("TPU v5", 459e12), ("TPU v4", 275e12), ("TPU v3", 123e12), ("H200", 989e12),
    ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12),
)


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> Optional[float]:
  """FLOP/s one device can do (override > 0 wins); None when unknown (e.g. CPU)."""
  if override_tflops:
    return override_tflops * 1e12
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def mfu(flops_per_step: float, steps_per_s: float, num_devices: int,
        peak_per_device: Optional[float]) -> float:
  """Model FLOP utilisation in [0, 1]; NaN when the peak is unknown."""
  if not peak_per_device:
    return math.nan
  return flops_per_step * steps_per_s / (num_devices * peak_per_device)
