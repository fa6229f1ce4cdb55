"""Benchmark the sharded train step: `python -m uwm_jax.bench.train_step --config=configs/tiny.py`.

Builds the state and the jitted, donated train step exactly as training does (mesh and
partition rules from `config.train`), feeds one random batch of the configured shape (so the
input pipeline is not measured), and prints samples/s, step time, TFLOP/s (analytic count),
MFU (when the device's peak is known or `--config.train.peak_tflops_per_device` is set) and
the peak device memory from the compiled executable's memory analysis, plus one JSON line.

`--latent_cache=both` (default) measures the step twice: with the next-obs frames encoded by
the codec (`off`, what training does by default) and with the next-obs latent moments given in
the batch (`on`, training with `data.latent_cache_dir`: no VAE encoding; its analytic FLOP count
leaves the codec out), and prints a comparison table.

  python -m uwm_jax.bench.train_step --config=configs/droid.py --config.batch_size=36 \\
      --config.model.compute_dtype=bfloat16 --steps=20
"""

import json
import time

from absl import flags

from uwm_jax import cli_config

_CONFIG = cli_config.define_config_flag("Training config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_LATENT_CACHE = flags.DEFINE_enum(
    "latent_cache", "both", ["both", "on", "off"],
    "Measure the step with next-obs latents from a latent cache (on), with the codec (off), "
    "or both.")
flags.mark_flags_as_required(["config"])


def random_batch(config, rng, latent_cache: bool = False):
  """A host batch of the config's shapes: random uint8 frames, actions in [-1, 1]; with
  latent_cache, float16 next-obs latent moments (mean ~ N(0, 1), std in [0.01, 0.1]) instead of
  next-obs frames."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from uwm_jax import batch as B_  # pylint: disable=import-outside-toplevel
  shapes = B_.expected_shapes(config.model, config.batch_size, latent_cache)
  out = {}
  for key, shape in shapes.items():
    if key in (B_.OBS, B_.NEXT_OBS):
      out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
    elif key == B_.ACTION_MASK:
      out[key] = np.ones(shape, bool)
    elif key == B_.NEXT_LATENT_MEAN:
      out[key] = rng.normal(0, 1, shape).astype(np.float16)
    elif key == B_.NEXT_LATENT_STD:
      out[key] = rng.uniform(0.01, 0.1, shape).astype(np.float16)
    else:
      out[key] = rng.uniform(-1, 1, shape).astype(np.float32)
  return out


def memory_summary(compiled) -> dict:
  """Bytes per device from XLA's memory analysis of the executable (None where unavailable)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    m = None
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  out = {f: int(getattr(m, f, 0) or 0) for f in fields}
  out["peak_bytes_estimate"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"] +
                                out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out


def run(config, steps: int, warmup: int, latent_cache: bool = False) -> dict:
  """Compile and time the train step of `config`; returns the measurements. latent_cache: the
  batch carries next-obs latent moments (the step skips the codec)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import global_batch  # pylint: disable=import-outside-toplevel
  from uwm_jax.diffusion import make_schedule  # pylint: disable=import-outside-toplevel
  from uwm_jax.model.uwm import UnifiedWorldModel  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import flops as flops_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import optimizer as optim_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import sharded_state  # pylint: disable=import-outside-toplevel
  from uwm_jax.training.train_step import make_train_step  # pylint: disable=import-outside-toplevel

  tc = config.train
  mesh = mesh_lib.make_mesh(tc.mesh_shape)
  model = UnifiedWorldModel(config.model)
  tx = optim_lib.make_optimizer(config.optim, config.num_steps)
  ema = tc.ema_decay > 0
  abstract = sharded_state.abstract_train_state(model, tx, ema)
  shardings = sharded_state.train_state_shardings(abstract, mesh, tc.partition_rules,
                                                  tc.fsdp_min_size, log_decisions=False)
  t0 = time.perf_counter()
  state = sharded_state.init_train_state(model, tx, jax.random.key(config.seed), shardings, ema,
                                         tc.compiler_options)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  step_fn = sharded_state.jit_train_step(
      make_train_step(model, make_schedule(config.diffusion), tx, ema_decay=tc.ema_decay,
                      nan_guard=tc.nan_guard), shardings, mesh, tc.compiler_options)
  batch = global_batch.host_batch_to_global(
      random_batch(config, np.random.default_rng(0), latent_cache), mesh, mesh_lib.batch_spec())
  rng = sharded_state.replicate(jax.random.key(1), mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - t0) / steps

  flops = flops_lib.train_step_flops(config.model, latent_cache)
  step_flops = flops.per_sample * config.batch_size
  device = jax.devices()[0]
  peak = flops_lib.peak_flops_per_device(device.device_kind, tc.peak_tflops_per_device)
  result = {
      "device": f"{jax.device_count()} x {device.device_kind}",
      "mesh": dict(mesh.shape),
      "batch_size": config.batch_size,
      "compute_dtype": config.model.compute_dtype,
      "latent_cache": bool(latent_cache),
      "init_s": init_s,
      "compile_s": compile_s,
      "step_time_ms": step_s * 1e3,
      "samples_per_s": config.batch_size / step_s,
      "tflop_per_step": step_flops / 1e12,
      "tflops_per_s_per_device": step_flops / step_s / jax.device_count() / 1e12,
      "mfu": flops_lib.mfu(step_flops, 1 / step_s, jax.device_count(), peak) if peak else None,
      "loss": float(metrics["loss"]),
  }
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    result["xla_tflop_per_step"] = float(cost.get("flops", 0.0)) / 1e12 * jax.device_count()
  except Exception:  # pylint: disable=broad-except
    pass
  result["memory"] = memory_summary(compiled)
  stats = getattr(device, "memory_stats", lambda: None)()
  if stats and "peak_bytes_in_use" in stats:
    result["memory"]["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  return result


def format_result(r: dict) -> str:
  gib = lambda b: f"{b / 2**30:.3f} GiB"
  mem = r.get("memory", {})
  lines = [
      f"device               {r['device']}  mesh {r['mesh']}",
      f"batch                {r['batch_size']} ({r['compute_dtype']}); next-obs latents "
      + ("from a latent cache (no codec)" if r["latent_cache"] else "encoded by the codec"),
      f"init / compile       {r['init_s']:.1f} s / {r['compile_s']:.1f} s",
      f"step time            {r['step_time_ms']:.2f} ms",
      f"samples/s            {r['samples_per_s']:.4g}",
      f"TFLOP per step       {r['tflop_per_step']:.4g} (analytic)"
      + (f", {r['xla_tflop_per_step']:.4g} (XLA cost analysis)" if "xla_tflop_per_step" in r
         else ""),
      f"TFLOP/s per device   {r['tflops_per_s_per_device']:.4g}",
      f"MFU                  " + (f"{r['mfu']:.1%}" if r["mfu"] is not None else
                                  "n/a (unknown peak; set --config.train.peak_tflops_per_device)"),
  ]
  if mem:
    lines.append(f"peak memory/device   {gib(mem['peak_bytes_estimate'])} (compiled: args "
                 f"{gib(mem['argument_size_in_bytes'])}, temp {gib(mem['temp_size_in_bytes'])})"
                 + (f"; runtime peak {gib(mem['device_peak_bytes_in_use'])}"
                    if "device_peak_bytes_in_use" in mem else ""))
  return "\n".join(lines)


def format_comparison(results) -> str:
  """A table with one row per measurement (latent cache off / on)."""
  rows = [f"{'latent cache':<13}{'samples/s':>11}{'step ms':>11}{'TFLOP/step':>12}"
          f"{'TFLOP/s/dev':>13}{'MFU':>8}{'peak mem GiB':>14}"]
  for r in results:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    mem = r.get("memory", {}).get("peak_bytes_estimate")
    mem = f"{mem / 2**30:.3f}" if mem is not None else "n/a"
    rows.append(f"{'on' if r['latent_cache'] else 'off':<13}{r['samples_per_s']:>11.4g}"
                f"{r['step_time_ms']:>11.2f}{r['tflop_per_step']:>12.4g}"
                f"{r['tflops_per_s_per_device']:>13.4g}{mfu:>8}{mem:>14}")
  return "\n".join(rows)


def main(argv):
  del argv
  modes = {"both": (False, True), "off": (False,), "on": (True,)}[_LATENT_CACHE.value]
  results = []
  for latent_cache in modes:
    result = run(_CONFIG.value, _STEPS.value, _WARMUP.value, latent_cache)
    print(format_result(result))
    print(json.dumps(result))
    results.append(result)
  if len(results) > 1:
    print(format_comparison(results))


if __name__ == "__main__":
  cli_config.run(main)
