"""PyTorch counterparts of the reference's modules, written from docs/model.md: the weight-import
parity tests (tests/test_weights_*.py, their oracle) and `benchmarks.train_step --torch` both
use them (torch: the weights extra). They live with the benchmarks, outside the installed
package, so that imports go one way: tests -> benchmarks -> uwm_jax (scripts/import_graph.py).

Module and parameter names follow the reference's state dicts (docs/weights.md, "State-dict
layout of `models.pt`"; torchvision's ResNet-18): `TorchResNet18` (BatchNorm as torchvision, or GroupNorm(c/16) as the reference),
`TorchNoiseNet` (the DualNoisePredictionNet) and `TorchUWM` (the `models.pt` `model` layout:
`noise_pred_net.`, `obs_encoder.img_encoder.model.`, `obs_encoder.vae.{vae.,shift,scale}`).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------ ResNet-18
def _norm(channels: int, kind: str) -> nn.Module:
  if kind == "bn":
    return nn.BatchNorm2d(channels)
  return nn.GroupNorm(max(1, channels // 16), channels, eps=1e-5)


class BasicBlock(nn.Module):

  def __init__(self, cin: int, cout: int, stride: int, norm: str):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = _norm(cout, norm)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = _norm(cout, norm)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      _norm(cout, norm))

  def forward(self, x):
    h = F.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class TorchResNet18(nn.Module):
  """torchvision's ResNet-18 layout. norm "bn" (torchvision) or "gn" (the reference's swap)."""

  def __init__(self, width: int = 64, num_outputs: int = 1000, norm: str = "bn"):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = _norm(width, norm)
    cin = width
    for stage in range(4):
      cout = width * 2**stage
      stride = 1 if stage == 0 else 2
      setattr(self, f"layer{stage + 1}", nn.Sequential(BasicBlock(cin, cout, stride, norm),
                                                       BasicBlock(cout, cout, 1, norm)))
      cin = cout
    self.fc = nn.Linear(cin, num_outputs)

  def forward(self, images):
    """(N, 3, H, W) in [0, 1] -> (N, num_outputs); ImageNet normalisation inside (as the
    reference's ResNetImageEncoder)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (images - mean) / std
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    for stage in range(4):
      x = getattr(self, f"layer{stage + 1}")(x)
    return self.fc(x.mean(dim=(2, 3)))


# ------------------------------------------------------------------ noise net
def sinusoidal(t, dim: int):
  half = dim // 2
  freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
  args = t.float()[:, None] * freqs[None]
  return torch.cat([args.sin(), args.cos()], dim=-1)


def modulate(x, shift, scale):
  return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    B, N, E = x.shape
    q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    return self.proj(out.transpose(1, 2).reshape(B, N, E))


class Mlp(nn.Module):

  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class AdaLNBlock(nn.Module):

  def __init__(self, dim: int, cond_dim: int, heads: int, mlp_ratio: int = 4):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    self.attn = Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    self.mlp = Mlp(dim, mlp_ratio * dim)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

  def forward(self, x, c):
    s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=-1)
    x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, sc1))
    return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s2, sc2))


class FinalLayer(nn.Module):

  def __init__(self, dim: int, cond_dim: int):
    super().__init__()
    self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
    self.linear = nn.Linear(dim, dim)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

  def forward(self, x, c):
    shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
    return self.linear(modulate(self.norm(x), shift, scale))


class Patchifier(nn.Module):

  def __init__(self, views, chans, latent_thw, patch, dim):
    super().__init__()
    self.views, self.patch = views, patch
    self.grid = tuple(s // p for s, p in zip(latent_thw, patch))
    self.patch_encoder = nn.Conv3d(chans, dim, patch, patch)
    self.patch_decoder = nn.Linear(dim, chans * math.prod(patch))

  def patchify(self, x):
    B, V = x.shape[:2]
    feats = self.patch_encoder(x.flatten(0, 1))  # (B V) E t h w
    return feats.reshape(B, V, feats.shape[1], -1).permute(0, 1, 3, 2).reshape(
        B, -1, feats.shape[1])

  def unpatchify(self, tokens):
    B = tokens.shape[0]
    t, h, w = self.grid
    pt, ph, pw = self.patch
    x = self.patch_decoder(tokens)
    x = x.reshape(B, self.views, t, h, w, -1, pt, ph, pw)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
    return x.reshape(B, self.views, x.shape[2], t * pt, h * ph, w * pw)


class DualTimestep(nn.Module):

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim
    self.proj = nn.Sequential(nn.Linear(2 * dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

  def forward(self, t1, t2):
    return self.proj(torch.cat([sinusoidal(t1, self.dim), sinusoidal(t2, self.dim)], dim=-1))


class TorchNoiseNet(nn.Module):
  """The DualNoisePredictionNet (docs/model.md "Noise network") with its state-dict names."""

  def __init__(self, *, global_cond_dim, views, chans, latent_thw, patch, action_len, action_dim,
               embed_dim, timestep_embed_dim, depth, heads, registers):
    super().__init__()
    self.obs_patchifier = Patchifier(views, chans, latent_thw, patch, embed_dim)
    hidden = 4 * max(action_dim, embed_dim)
    self.action_encoder = nn.Sequential(nn.Linear(action_dim, hidden), nn.Mish(),
                                        nn.Linear(hidden, embed_dim))
    self.action_decoder = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Mish(),
                                        nn.Linear(hidden, action_dim))
    self.timestep_embedding = DualTimestep(timestep_embed_dim)
    obs_len = views * math.prod(self.obs_patchifier.grid)
    self.registers = nn.Parameter(torch.randn(1, registers, embed_dim) * 0.02)
    self.pos_embed = nn.Parameter(torch.randn(1, action_len + obs_len + registers, embed_dim)
                                  * 0.02)
    cond = global_cond_dim + timestep_embed_dim
    self.blocks = nn.ModuleList(AdaLNBlock(embed_dim, cond, heads) for _ in range(depth))
    self.head = FinalLayer(embed_dim, cond)
    self.action_len, self.obs_len = action_len, obs_len

  def forward(self, global_cond, action, action_t, next_obs, next_obs_t):
    B = action.shape[0]
    action_t = action_t.expand(B) if action_t.dim() == 0 else action_t
    next_obs_t = next_obs_t.expand(B) if next_obs_t.dim() == 0 else next_obs_t
    x = torch.cat([self.action_encoder(action), self.obs_patchifier.patchify(next_obs),
                   self.registers.expand(B, -1, -1)], dim=1) + self.pos_embed
    c = torch.cat([global_cond, self.timestep_embedding(action_t, next_obs_t)], dim=-1)
    for block in self.blocks:
      x = block(x, c)
    x = self.head(x, c)
    a = self.action_decoder(x[:, :self.action_len])
    o = self.obs_patchifier.unpatchify(x[:, self.action_len:self.action_len + self.obs_len])
    return a, o


# ------------------------------------------------------------------ the whole model
class VAEHolder(nn.Module):
  """`obs_encoder.vae` of the reference: the diffusers VAE plus the latent shift/scale."""

  def __init__(self, vae: nn.Module):
    super().__init__()
    self.vae = vae
    self.register_buffer("shift", torch.zeros(1, 4, 1, 1))
    self.register_buffer("scale", torch.full((1, 4, 1, 1), 3.0))


class ImageEncoder(nn.Module):

  def __init__(self, resnet: nn.Module):
    super().__init__()
    self.model = resnet


class ObsEncoder(nn.Module):

  def __init__(self, resnet: nn.Module, vae: nn.Module):
    super().__init__()
    self.img_encoder = ImageEncoder(resnet)
    self.vae = VAEHolder(vae)


class TorchUWM(nn.Module):
  """Only the module tree (hence the state-dict keys) of the reference's UnifiedWorldModel."""

  def __init__(self, noise_net: nn.Module, resnet: nn.Module, vae: nn.Module):
    super().__init__()
    self.obs_encoder = ObsEncoder(resnet, vae)
    self.noise_pred_net = noise_net


SDXL_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", sample_size=1024,
    scaling_factor=0.13025)


def sdxl_vae(device: str = "cpu") -> nn.Module:
  from diffusers import AutoencoderKL  # pylint: disable=import-outside-toplevel
  with torch.device(device):
    return AutoencoderKL(**SDXL_VAE_CONFIG)


def reference_noise_net(model_cfg) -> TorchNoiseNet:
  """The reference's noise net for a uwm_jax model config (latent shape from its codec)."""
  from uwm_jax.dims import latent_shape  # pylint: disable=import-outside-toplevel
  V, chans, T, h, w = latent_shape(model_cfg)
  return TorchNoiseNet(
      global_cond_dim=V * T * model_cfg.image_feature_dim, views=V, chans=chans,
      latent_thw=(T, h, w), patch=tuple(model_cfg.latent_patch_shape),
      action_len=model_cfg.action_len, action_dim=model_cfg.action_dim,
      embed_dim=model_cfg.embed_dim, timestep_embed_dim=model_cfg.timestep_embed_dim,
      depth=model_cfg.depth, heads=model_cfg.num_heads, registers=model_cfg.num_registers)


def reference_resnet(model_cfg) -> TorchResNet18:
  """The reference's GroupNorm ResNet-18 image encoder for a uwm_jax model config."""
  return TorchResNet18(model_cfg.resnet_width, model_cfg.image_feature_dim, norm="gn")


def reference_uwm(model_cfg, device: str = "cpu") -> TorchUWM:
  """The reference's module tree for a uwm_jax model config (SDXL VAE, GroupNorm ResNet)."""
  with torch.device(device):
    return TorchUWM(reference_noise_net(model_cfg), reference_resnet(model_cfg), sdxl_vae(device))
