"""The reference's train step and policy in PyTorch, timed beside ours by `benchmarks.train_step --torch`.

The modules are the parity tests' PyTorch re-implementation of the reference
(`benchmarks/torch_modules.py`: GroupNorm ResNet-18, DualNoisePredictionNet), so this needs a
repository checkout and torch (the CPU build). Around them, what the reference's train step
does (docs/model.md, "Observation encoder"): image transforms (bilinear antialiased resize, one random crop per
camera, colour jitter), ResNet features, DDPM noising at random timesteps, the two MSE losses,
backward, AdamW. Next-obs latents come as cached moments (the latent cache; no VAE), as in the
measurement it is compared with. The policy: eval transform, ResNet, 10 DDIM steps of the noise
net with the next-obs latent held at noise, under `torch.inference_mode`.

The compute dtype follows the config's, as ours does: with `model.compute_dtype=bfloat16` the
forward passes run under `torch.autocast("cpu", dtype=torch.bfloat16)` (fp32 parameters and
optimizer, PyTorch's usual mixed precision); fp32 otherwise.
"""

import contextlib
from typing import Callable, Dict

import numpy as np

from benchmarks.step_components import OPTIMIZER


def _reference_modules():
  """The PyTorch modules (`benchmarks.torch_modules`), imported when --torch asks: torch is
  optional (the weights extra)."""
  from benchmarks import torch_modules  # pylint: disable=import-outside-toplevel
  return torch_modules


def _rgb_to_hsv(rgb):
  import torch  # pylint: disable=import-outside-toplevel
  r, g, b = rgb.unbind(-3)
  maxc, _ = rgb.max(dim=-3)
  minc, _ = rgb.min(dim=-3)
  delta = maxc - minc
  safe = torch.where(delta > 0, delta, torch.ones_like(delta))
  s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)),
                  torch.zeros_like(maxc))
  rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
  h = torch.where(r == maxc, bc - gc, torch.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
  h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
  return torch.stack([h, s, maxc], dim=-3)


def _hsv_to_rgb(hsv):
  import torch  # pylint: disable=import-outside-toplevel
  h, s, v = hsv.unbind(-3)
  i = torch.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.to(torch.int64) % 6
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  mask = i.unsqueeze(-3) == torch.arange(6).view(6, 1, 1)
  table = lambda *xs: torch.stack(xs, dim=-3)
  r = (mask * table(v, q, p, p, t, v)).sum(-3)
  g = (mask * table(t, v, v, q, p, p)).sum(-3)
  b = (mask * table(p, p, t, v, v, q)).sum(-3)
  return torch.stack([r, g, b], dim=-3)


def transform(frames, model_cfg, train: bool, gen):
  """uint8 (B, V, T, H, W, 3) -> float (B, V, T, 3, h, w) in [0, 1], as the reference: resize,
  one crop offset per camera, colour jitter (here one draw per (sample, view), as ours)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  B, V, T = frames.shape[:3]
  x = frames.permute(0, 1, 2, 5, 3, 4).flatten(0, 2).float() / 255.0
  if tuple(x.shape[-2:]) != tuple(model_cfg.resize_shape):
    x = F.interpolate(x, size=tuple(model_cfg.resize_shape), mode="bilinear", antialias=True,
                      align_corners=False)
  x = x.view(B, V, T, 3, *x.shape[-2:])
  (rh, rw), (ch, cw) = model_cfg.resize_shape, model_cfg.crop_shape
  crops = []
  for v in range(V):
    if train and model_cfg.random_crop:
      top = int(torch.randint(0, rh - ch + 1, (), generator=gen))
      left = int(torch.randint(0, rw - cw + 1, (), generator=gen))
    else:
      top, left = (rh - ch) // 2, (rw - cw) // 2
    crops.append(x[:, v, :, :, top:top + ch, left:left + cw])
  x = torch.stack(crops, dim=1)
  if train and (model_cfg.brightness or model_cfg.contrast or model_cfg.saturation or
                model_cfg.hue):
    u = lambda lo, hi: (lo + (hi - lo) * torch.rand(B, V, 1, 1, 1, 1, generator=gen))
    bright = u(1 - model_cfg.brightness, 1 + model_cfg.brightness)
    contrast = u(1 - model_cfg.contrast, 1 + model_cfg.contrast)
    sat = u(1 - model_cfg.saturation, 1 + model_cfg.saturation)
    hue = u(-model_cfg.hue, model_cfg.hue)[..., 0, :, :]
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    gray = lambda y: (y * luma).sum(-3, keepdim=True)
    x = (x * bright).clamp(0, 1)
    mean = gray(x).mean(dim=(-4, -3, -2, -1), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    g = gray(x)
    x = ((x - g) * sat + g).clamp(0, 1)
    hsv = _rgb_to_hsv(x)
    hsv = torch.stack([torch.remainder(hsv[..., 0, :, :] + hue, 1.0), hsv[..., 1, :, :],
                       hsv[..., 2, :, :]], dim=-3)
    x = _hsv_to_rgb(hsv)
  return x


class TorchReference:
  """The reference's modules and optimizer for a uwm_jax config; methods return callables
  that run one train step, one component, or one policy call on a fixed host batch."""

  def __init__(self, config, alphas_cumprod: np.ndarray, timesteps: np.ndarray, seed: int = 0):
    import torch  # pylint: disable=import-outside-toplevel
    ref = _reference_modules()
    torch.manual_seed(seed)
    self.cfg = config.model
    self.resnet = ref.reference_resnet(self.cfg)
    self.net = ref.reference_noise_net(self.cfg)
    o = config.optim
    self.opt = torch.optim.AdamW(list(self.resnet.parameters()) + list(self.net.parameters()),
                                 lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                                 weight_decay=o.weight_decay)
    self.abar = torch.from_numpy(np.asarray(alphas_cumprod, np.float32))
    self.timesteps = [int(t) for t in timesteps]
    self.marginal_t = config.diffusion.marginal_timestep
    self.gen = torch.Generator().manual_seed(seed)
    self.num_train_steps = int(self.abar.shape[0])
    self.bf16 = self.cfg.compute_dtype == "bfloat16"

  def _compute(self):
    """The forward passes' precision: bf16 autocast when the config computes in bf16."""
    import torch  # pylint: disable=import-outside-toplevel
    return (torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else
            contextlib.nullcontext())

  def _tensors(self, batch: Dict[str, np.ndarray]):
    import torch  # pylint: disable=import-outside-toplevel
    return {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}

  def _features(self, images):
    B = images.shape[0]
    return self.resnet(images.flatten(0, 2)).reshape(B, -1)

  def _noise(self, x, t):
    import torch  # pylint: disable=import-outside-toplevel
    ab = self.abar[t].view(-1, *([1] * (x.dim() - 1)))
    eps = torch.randn(x.shape, generator=self.gen)
    return ab.sqrt() * x + (1 - ab).sqrt() * eps, eps

  def _loss(self, images, batch):
    import torch  # pylint: disable=import-outside-toplevel
    cond = self._features(images)
    action = batch["action"]
    B = action.shape[0]
    t_a = torch.randint(0, self.num_train_steps, (B,), generator=self.gen)
    t_o = torch.randint(0, self.num_train_steps, (B,), generator=self.gen)
    mean, std = batch["next_latent_mean"].float(), batch["next_latent_std"].float()
    latent = mean + std * torch.randn(mean.shape, generator=self.gen)
    noisy_a, eps_a = self._noise(action, t_a)
    noisy_o, eps_o = self._noise(latent, t_o)
    pred_a, pred_o = self.net(cond, noisy_a, t_a, noisy_o, t_o)
    return ((pred_a - eps_a)**2).mean() + ((pred_o - eps_o)**2).mean()

  def train_step(self, batch) -> Callable[[], float]:
    """One full step on `batch` (latent-cache batch: obs, action, next_latent_mean/std)."""
    b = self._tensors(batch)

    def run():
      with self._compute():
        images = transform(b["obs"], self.cfg, True, self.gen)
        loss = self._loss(images, b)
      self.opt.zero_grad(set_to_none=True)
      loss.backward()
      self.opt.step()
      return float(loss.detach())

    return run

  def components(self, batch) -> Dict[str, Callable[[], None]]:
    """Each part of the step alone, on the same batch."""
    import torch  # pylint: disable=import-outside-toplevel
    b = self._tensors(batch)
    images = transform(b["obs"], self.cfg, True, self.gen).contiguous()
    B = images.shape[0]
    flat = images.flatten(0, 2)
    cond = self._features(images).detach()
    d = self.net
    t = torch.randint(0, self.num_train_steps, (B,), generator=self.gen)
    noisy_a = b["action"].float()
    noisy_o = b["next_latent_mean"].float()

    def resnet_bwd():
      with self._compute():
        out = self.resnet(flat)
      out.backward(torch.ones_like(out))

    def net_bwd():
      with self._compute():
        a, o = d(cond, noisy_a, t, noisy_o, t)
        total = a.float().sum() + o.float().sum()
      total.backward()

    def adamw():
      for p in self.opt.param_groups[0]["params"]:
        if p.grad is None:
          p.grad = torch.zeros_like(p)
      self.opt.step()

    def fwd_resnet():
      with self._compute():
        return self.resnet(flat)

    def fwd_net():
      with self._compute():
        return d(cond, noisy_a, t, noisy_o, t)
    return {
        "image transforms": lambda: transform(b["obs"], self.cfg, True, self.gen),
        "resnet fwd": lambda: _no_grad(fwd_resnet),
        "resnet fwd+bwd": resnet_bwd,
        "noise net fwd": lambda: _no_grad(fwd_net),
        "noise net fwd+bwd": net_bwd,
        OPTIMIZER: adamw,
    }

  def policy(self, obs: np.ndarray) -> Callable[[], np.ndarray]:
    """One policy call: eval transform, ResNet, DDIM over the action with the latent at noise."""
    import torch  # pylint: disable=import-outside-toplevel
    obs_t = torch.from_numpy(obs)
    from uwm_jax.dims import latent_shape  # pylint: disable=import-outside-toplevel
    latent_shape = (obs.shape[0],) + latent_shape(self.cfg)
    ratio = self.num_train_steps // len(self.timesteps)

    @torch.inference_mode()
    def run():
      images = transform(obs_t, self.cfg, False, self.gen)
      with self._compute():
        cond = self._features(images)
      B = obs.shape[0]
      x_a = torch.randn(B, self.cfg.action_len, self.cfg.action_dim, generator=self.gen)
      x_o = torch.randn(latent_shape, generator=self.gen)
      t_o = torch.full((B,), self.marginal_t)
      for t in self.timesteps:
        with self._compute():
          eps, _ = self.net(cond, x_a, torch.full((B,), t), x_o, t_o)
        eps = eps.float()
        ab, ab_prev = self.abar[t], (self.abar[t - ratio] if t - ratio >= 0 else torch.tensor(1.0))
        x0 = ((x_a - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        x_a = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
      return x_a.numpy()

    return run


def matmul(n: int, compute_dtype: str) -> Callable[[], None]:
  """One n x n @ n x n product in `compute_dtype` (float32 or bfloat16), as torch runs it."""
  import torch  # pylint: disable=import-outside-toplevel
  dtype = torch.bfloat16 if compute_dtype == "bfloat16" else torch.float32
  gen = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=gen).to(dtype)
  b = torch.randn(n, n, generator=gen).to(dtype)
  return lambda: torch.mm(a, b)


def _no_grad(fn):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return fn()


def set_threads(n: int) -> None:
  import torch  # pylint: disable=import-outside-toplevel
  if n > 0:
    torch.set_num_threads(n)
