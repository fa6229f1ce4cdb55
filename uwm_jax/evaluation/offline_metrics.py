"""Offline evaluation on validation batches (docs/evaluation.md, "Offline metrics").

Per batch: the validation losses (random timesteps, eval transform) and five sampling runs,
each compared with the ground truth by a mean squared error:

  action_mse_marginal   policy sample vs the true action chunk
  action_mse_inv        inverse-dynamics sample (given the true next obs) vs the true chunk
  action_mse_joint      action part of the joint sample
  image_mse_marginal    video-prediction sample vs the codec latent of the true next obs
  image_mse_forward     forward-dynamics sample (given the true normalised actions)
  image_mse_joint       next-obs part of the joint sample

Action MSEs are in raw action units (de-normalised with the dataset statistics; data used
unnormalised has identity statistics); image MSEs are in the codec's latent space, the target
being a fresh (stochastic for the VAE) encoding of the true next obs. Each metric is averaged
over batches. The DP baseline (no next-obs prediction) reports the policy MSE and the losses.

`make_validation_evaluate` is the evaluation callback `python -m uwm_jax.train` hands to the
training loop (`uwm_jax.training.loop.train(..., make_evaluate=...)`).
"""

from typing import Callable, Dict, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from uwm_jax import batch as B_
from uwm_jax import sampling
from uwm_jax.data import loader as loader_lib
from uwm_jax.data import normalization
from uwm_jax.diffusion import make_schedule
from uwm_jax.training import global_batch, sharded_state
from uwm_jax.training.loop import EvalContext
from uwm_jax.training.loss import compute_loss

ACTION_METRICS = {"action_mse_marginal": sampling.POLICY,
                  "action_mse_inv": sampling.INVERSE_DYNAMICS,
                  "action_mse_joint": sampling.JOINT}
IMAGE_METRICS = {"image_mse_marginal": sampling.VIDEO_PREDICTION,
                 "image_mse_forward": sampling.FORWARD_DYNAMICS,
                 "image_mse_joint": sampling.JOINT}
METRICS = tuple(ACTION_METRICS) + tuple(IMAGE_METRICS)


def make_eval_step(model, diffusion_cfg, dataset_stats: Optional[dict] = None,
                   mesh: Optional[jax.sharding.Mesh] = None,
                   compiler_options: Optional[dict] = None) -> Callable:
  """A jitted fn(params, frozen, batch, rng) -> {metric: () float32} for one batch.

  batch: obs, next_obs, action (normalised), action_mask [, low_dim]; may be sharded global
  arrays (every metric is a mean over the whole global batch).
  dataset_stats: the statistics the actions were normalised with (None: compare as given).
  mesh: when the inputs live on a mesh, the metrics come back replicated on it (readable by
  every process). compiler_options: XLA options for the executable.
  """
  schedule = make_schedule(diffusion_cfg)
  video = model.predicts_next_obs
  modes = sampling.supported_modes(model)
  samplers = {m: sampling.make_sampler(model, diffusion_cfg, m) for m in modes}

  def eval_step(params, frozen, batch, rng, scale_offset):
    scale, offset = scale_offset
    raw = lambda action: action * scale + offset  # = normalization.denormalize
    k_loss, k_target, k_samples = jax.random.split(rng, 3)
    _, out = compute_loss(model, schedule, params, frozen, batch, k_loss, train=False)
    out = dict(out)
    true_action = raw(batch[B_.ACTION].astype(jnp.float32))
    cond_keys = [B_.OBS] + ([B_.LOW_DIM] if B_.LOW_DIM in batch else [])
    keys = dict(zip(modes, jax.random.split(k_samples, len(modes))))
    samples = {}
    for mode in modes:
      inputs = {k: batch[k] for k in cond_keys + list(sampling.MODE_SPECS[mode].needs)}
      samples[mode] = samplers[mode](params, frozen, inputs, keys[mode])
    for name, mode in ACTION_METRICS.items():
      if mode in samples:
        out[name] = jnp.mean(jnp.square(raw(samples[mode]["action"]) - true_action))
    if video:
      k_tf, k_codec = jax.random.split(k_target)
      _, next_img = model.transform(batch[B_.OBS], batch[B_.NEXT_OBS], k_tf, train=False)
      target = model.encode_next_obs(frozen, next_img, k_codec)
      for name, mode in IMAGE_METRICS.items():
        out[name] = jnp.mean(jnp.square(samples[mode]["latent"] - target))
    return out

  options = dict((compiler_options or {}).items()) or None
  if mesh is None:
    jitted = jax.jit(eval_step, compiler_options=options)
  else:
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(eval_step, out_shardings=replicated, compiler_options=options)
  return EvalStep(jitted, model.dims.action_dim, mesh).with_dataset_stats(dataset_stats)


class EvalStep:
  """fn(params, frozen, batch, rng) -> {metric: ()} around one jitted executable; the action
  statistics are an argument of that executable, so `with_dataset_stats` does not recompile."""

  def __init__(self, jitted, action_dim: int, mesh=None, scale_offset=None):
    self._jitted, self._action_dim, self._mesh = jitted, action_dim, mesh
    self._scale_offset = scale_offset

  def with_dataset_stats(self, dataset_stats: Optional[dict]) -> "EvalStep":
    entry = (dataset_stats or {}).get(normalization.ACTION)
    if entry is None:  # compare actions as given
      entry = normalization.identity_entry(self._action_dim)
    scale_offset = tuple(jnp.asarray(a) for a in normalization.scale_offset(entry))
    if self._mesh is not None:
      replicated = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
      scale_offset = jax.jit(lambda x: x, out_shardings=replicated)(scale_offset)
    return EvalStep(self._jitted, self._action_dim, self._mesh, scale_offset)

  def __call__(self, params, frozen, batch, rng):
    return self._jitted(params, frozen, batch, rng, self._scale_offset)


def compute_offline_metrics(model, diffusion_cfg, params, frozen, batches: Iterable[dict],
                            rng: jax.Array, dataset_stats: Optional[dict] = None,
                            max_batches: int = 0, to_device: Optional[Callable] = None,
                            eval_step: Optional[Callable] = None) -> Dict[str, float]:
  """The offline metrics (plus validation losses) averaged over `batches`.

  batches: an iterable of batches (e.g. `uwm_jax.data.loader.make_eval_loader(config)`);
  to_device: maps a host batch to device arrays (e.g. `host_batch_to_global` on a mesh;
  default: as given); max_batches: stop after this many (0 = all); eval_step: a prebuilt
  `make_eval_step` (to reuse its compilation across calls). Returns {metric: float} and
  "num_batches"; empty metrics when there is no batch.
  """
  eval_step = eval_step or make_eval_step(model, diffusion_cfg, dataset_stats)
  sums: Dict[str, float] = {}
  n = 0
  pending = []
  for i, batch in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    batch = {k: v for k, v in batch.items() if k in B_.expected_shapes(model.cfg, 0)}
    batch = to_device(batch) if to_device is not None else batch
    pending.append(eval_step(params, frozen, batch, jax.random.fold_in(rng, i)))
    n += 1
  for out in jax.device_get(pending):
    for k, v in out.items():
      sums[k] = sums.get(k, 0.0) + float(np.asarray(v))
  result = {k: v / n for k, v in sums.items()} if n else {}
  result["num_batches"] = n
  return result


def make_validation_evaluate(context: EvalContext) -> Callable:
  """The training loop's evaluation callback: fn(state, step) -> the offline metrics of the
  state's inference params (the EMA when kept) on the validation split, every process taking
  part (`train.eval_num_batches` batches; 0 = all). One eval step is compiled for the run."""
  config, mesh = context.config, context.mesh
  eval_step = make_eval_step(context.model, config.diffusion, context.dataset_stats, mesh,
                             config.train.compiler_options)
  to_device = global_batch.batch_placer(mesh)

  def evaluate(state, step: int) -> Dict[str, float]:
    rng = sharded_state.replicate(jax.random.fold_in(context.rng, step), mesh)
    return compute_offline_metrics(
        context.model, config.diffusion, state.inference_params, state.frozen,
        loader_lib.make_eval_loader(config), rng, max_batches=config.train.eval_num_batches,
        to_device=to_device, eval_step=eval_step)

  return evaluate
