"""The parts of the train step as separately jitted functions, for `benchmarks.train_step --breakdown`.

Each part is the function the train step itself calls (model.transform, model.global_cond,
model.predict_noise, model.encode_next_obs, the optimizer's update) on one device, with the
config's compute dtype, so the parts' times add up to roughly the whole step (the whole step
also samples noise, computes the losses and may fuse across the parts).
"""

from typing import Callable, Dict

import numpy as np

OPTIMIZER = "optimizer (AdamW)"  # the optimizer part's name, here and in torch_reference


def jax_components(config, host_batch: Dict[str, np.ndarray],
                   seed: int = 0) -> Dict[str, Callable[[], None]]:
  """name -> a callable running that part once on `host_batch` and waiting for it."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from uwm_jax import batch as B_  # pylint: disable=import-outside-toplevel
  from uwm_jax.model.uwm import UnifiedWorldModel  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import optimizer as optim_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training.train_step import cast_floats  # pylint: disable=import-outside-toplevel

  model = UnifiedWorldModel(config.model)
  dtype = jnp.bfloat16 if config.model.compute_dtype == "bfloat16" else jnp.float32
  params, frozen = model.init(jax.random.key(seed))
  tx = optim_lib.make_optimizer(config.optim, config.num_steps)
  opt_state = tx.init(params)
  batch = jax.device_put(host_batch)
  key = jax.random.key(seed + 1)
  cached = B_.has_cached_latents(host_batch)
  obs_img = jax.jit(lambda o, k: model.transform(o, None, k, True)[0])(batch[B_.OBS], key)
  low_dim = batch.get(B_.LOW_DIM)  # (B, T_o, D_low) when model.low_dim_dim > 0
  cond = jax.jit(model.global_cond)(params, obs_img, low_dim)
  B = obs_img.shape[0]
  t = jnp.zeros((B,), jnp.int32) + 50
  action = batch[B_.ACTION]
  latent = (batch[B_.NEXT_LATENT_MEAN].astype(jnp.float32) if cached else
            jnp.zeros((B,) + model.dims.latent_shape, jnp.float32))

  def resnet(p, images):
    return model.global_cond({"image_encoder": cast_floats(p, dtype)}, images, low_dim)

  def noise_net(p, c):
    return model.predict_noise({"noise_net": cast_floats(p, dtype)}, c, action, t, latent, t)

  def total(outs):
    return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(outs))

  grads = jax.tree.map(jnp.ones_like, params)

  def adamw(g, s, p):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  parts = {
      "image transforms": (jax.jit(lambda o, k: model.transform(o, None, k, True)[0]),
                           (batch[B_.OBS], key)),
      "resnet fwd": (jax.jit(resnet), (params["image_encoder"], obs_img)),
      "resnet fwd+bwd": (jax.jit(jax.grad(lambda p, x: total(resnet(p, x)))),
                         (params["image_encoder"], obs_img)),
      "noise net fwd": (jax.jit(noise_net), (params["noise_net"], cond)),
      "noise net fwd+bwd": (jax.jit(jax.grad(lambda p, c: total(noise_net(p, c)))),
                            (params["noise_net"], cond)),
  }
  if not cached and model.predicts_next_obs:
    next_img = jax.jit(lambda o, k: model.transform(o, None, k, True)[0])(
        batch[B_.NEXT_OBS], key)
    parts["codec encode"] = (jax.jit(model.encode_next_obs), (frozen, next_img, key))
  if config.train.ema_decay:
    from uwm_jax.training.train_step import ema_update  # pylint: disable=import-outside-toplevel
    decay = config.train.ema_decay
    parts["EMA update"] = (jax.jit(lambda e, p: ema_update(e, p, decay)), (params, params))

  def runner(fn, args):
    compiled = fn.lower(*args).compile()
    return lambda: jax.block_until_ready(compiled(*args))

  out = {name: runner(fn, args) for name, (fn, args) in parts.items()}
  # The optimizer updates in place, as training does (state donated and carried).
  update = jax.jit(adamw, donate_argnums=(1, 2))
  carried = [opt_state, jax.tree.map(jnp.copy, params)]

  def run_adamw():
    p, s = update(grads, carried[0], carried[1])
    carried[:] = [s, p]
    jax.block_until_ready(p)

  out[OPTIMIZER] = run_adamw
  return out
