"""Shared test utilities: tiny configs, structured synthetic batches, random network inputs and
perturbed params, compile options, the parity measure, skip marks for optional dependencies,
and running an entry point as a user does."""

import functools
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from uwm_jax import batch as batch_lib
from uwm_jax import host_platform


# XLA options for the tests' executables: -O0 compiles ~3x faster on CPU (steps run ~2x slower).
# tests/conftest.py makes it every executable's default (XLA_FLAGS, `xla_flags`); FAST_COMPILE
# says so where a config carries compiler options anyway (a process whose XLA_FLAGS lack it, or
# a bench), OPTIMIZED is for the few tests that run many steps.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
OPTIMIZED = {"xla_backend_optimization_level": 2}


def xla_flags(num_devices: int = 8) -> str:
  """XLA_FLAGS of the test processes and of every jax process a test starts: `num_devices`
  host CPU devices, and compiles made for tests, which compile far more than they run.

  --xla_backend_optimization_level=0: compiles 2-3x faster, runs ~2x slower.
  --xla_cpu_use_fusion_emitters=false: XLA's older CPU code emitters for fused loops, which
    compile the tiny train step in less than half the time of the (default) fusion emitters,
    with the same results and speed.

  One string for all: XLA_FLAGS are part of the persistent compilation cache's key, so a
  subprocess (a CLI run, a second jax.distributed process) started with these flags and the
  same device count loads what another process compiled (tests/conftest.py).
  """
  return (f"--xla_force_host_platform_device_count={num_devices} "
          "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")


def rel_err(got, want) -> float:
  """max |got - want| / max |want| (the parity tests' measure)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def skip_without(*modules: str):
  """A mark that skips tests, naming what is missing, when an optional dependency is not
  installed. The modules are looked up, not imported (MuJoCo must not load in the pytest
  process: see uwm_jax.envs.check_no_tensorflow)."""
  missing = [m for m in modules if importlib.util.find_spec(m) is None]
  return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (not installed)")


def tiny_config(variant: str = "", augment: bool = True):
  c = tiny.get_config(variant)
  if not augment:
    c.model.random_crop = False
    c.model.resize_shape = c.model.crop_shape
    c.model.brightness = c.model.contrast = c.model.saturation = c.model.hue = 0.0
  return c


def tiny_push_config(variant: str = ""):
  """configs/tiny.py's model on the embedded task's cameras and action space (the eval tests)."""
  c = tiny.get_config(variant)
  c.model.camera_keys = ("front_rgb", "top_rgb")
  c.model.action_dim = 2
  e = c.eval
  e.env = "tabletop_push"
  e.num_episodes, e.num_envs, e.max_steps, e.exec_steps = 3, 3, 12, 4
  e.num_videos = 1
  e.video_format = "gif"
  e.offline_num_batches = 1
  e.prediction_samples = 2
  e.tracking_episodes = 1
  e.random_baseline = True
  return c


def structured_batch(model_cfg, batch_size: int, seed: int = 0, action_mask=None) -> dict:
  """A batch of smooth moving-pattern images and uniform actions in [-1, 1]."""
  rng = np.random.default_rng(seed)
  shapes = batch_lib.expected_shapes(model_cfg, batch_size)
  B, V, T, H, W, _ = shapes[batch_lib.OBS]
  yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
  phase = rng.uniform(0, 2 * np.pi, (B, V, 1, 1, 1, 3))
  freq = rng.uniform(2, 8, (B, V, 1, 1, 1, 1))

  def frames(t0):
    t = (np.arange(T) + t0)[None, None, :, None, None, None]
    pattern = np.sin(freq * xx[..., None] + phase + 0.3 * t) * np.cos(4 * yy[..., None] + phase)
    return (127.5 + 120 * pattern).astype(np.uint8)

  batch = {
      batch_lib.OBS: frames(0),
      batch_lib.NEXT_OBS: frames(model_cfg.action_len + 1),
      batch_lib.ACTION: rng.uniform(-1, 1, shapes[batch_lib.ACTION]).astype(np.float32),
      batch_lib.ACTION_MASK: (np.ones(B, bool) if action_mask is None
                              else np.asarray(action_mask, bool)),
  }
  if model_cfg.low_dim_dim:
    batch[batch_lib.LOW_DIM] = rng.uniform(-1, 1, shapes[batch_lib.LOW_DIM]).astype(np.float32)
  return batch



def noise_net_inputs(model, batch_size: int = 3, seed: int = 0) -> tuple:
  """Random inputs of `model.predict_noise` (batch_size <= 3): global conditioning, noisy
  actions, their timesteps, noisy latent observations, their timesteps."""
  d, B = model.dims, batch_size
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (B, d.global_cond_dim)),
          jax.random.normal(ks[1], (B, d.action_len, d.action_dim)),
          jnp.array([0, 50, 99])[:B],
          jax.random.normal(ks[2], (B,) + d.latent_shape),
          jnp.array([99, 3, 42])[:B])


@functools.partial(jax.jit, static_argnums=(1, 2))
def perturbed_params(params, scale: float = 0.05, seed: int = 1):
  """`params` plus scale * N(0, 1) noise, a key per leaf: every parameter non-zero, so that the
  zero-initialised layers (output heads, adaLN modulation) matter. One compiled program (leaf
  by leaf eagerly, every leaf shape compiles its own random and arithmetic ops: minutes on a
  2-core CPU)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The core-only environment (`pip install -c requirements.txt -e .`, no extras) that .ci/run
# builds; tests that train in it skip, or fall back to this interpreter, where it is absent.
CORE_PYTHON = os.path.join(REPO, ".venv-core", "bin", "python")


def start_cli(module: str, *args: str, num_devices: int = 1, python: str = sys.executable,
              as_user: bool = False) -> subprocess.Popen:
  """Start `python -m <module> <args>` from the repository root on CPU, as a user runs it
  (entry points define absl flags, so they run in their own process, not inside pytest's).

  python: another environment's interpreter (e.g. the core-only venv), compiling with the tests'
  `xla_flags` like every jax process a test starts; as_user: without JAX_PLATFORMS, as in a
  user's shell, so that the entry point picks the platforms itself (uwm_jax.host_platform);
  kept at cpu on a host with an accelerator device, where the tests still run on the CPU.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS=xla_flags(num_devices))
  if as_user and not (host_platform.tpu_evidence() or host_platform.gpu_evidence()):
    del env["JAX_PLATFORMS"]
  return subprocess.Popen([python, "-m", module, *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_cli(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
  """Wait for a `start_cli` process (killed after `timeout` s) and return its outcome."""
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_cli(module: str, *args: str, timeout: float = 600, **start_options
            ) -> subprocess.CompletedProcess:
  """`python -m <module> <args>` run to the end (`start_options`: those of `start_cli`)."""
  return finish_cli(start_cli(module, *args, **start_options), timeout)
