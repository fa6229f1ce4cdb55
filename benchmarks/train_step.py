"""Benchmark the sharded train step: `python -m benchmarks.train_step --config=configs/tiny.py`.

Builds the state and the jitted, donated train step exactly as training does (mesh and
partition rules from `config.train`), feeds one random batch of the configured shape (so the
input pipeline is not measured), and prints samples/s, step time, TFLOP/s (analytic count),
MFU (when the device's peak is known or `--config.train.peak_tflops_per_device` is set) and
the peak device memory from the compiled executable's memory analysis, plus one JSON line.

`--latent_cache=both` (default) measures the step twice: with the next-obs frames encoded by
the codec (`off`, what training does by default) and with the next-obs latent moments given in
the batch (`on`, training with `data.latent_cache_dir`: no VAE encoding; its analytic FLOP count
leaves the codec out), and prints a comparison table.

  python -m benchmarks.train_step --config=configs/droid.py --config.batch_size=36 \\
      --config.model.compute_dtype=bfloat16 --steps=20

`--torch` times the PyTorch re-implementation of the reference (benchmarks/torch_reference.py;
needs torch and a repository checkout) beside ours in the same process, alternating, with the
latent cache on; `--breakdown` adds the parts of the step; `--policy_batch=1` one policy call
(10 DDIM steps) in the layout checkpoints are served in (`model.block_layout`) and, beside it,
in the config's training layout. Under the table, `--torch` prints the step's ceiling
(benchmarks/ceiling.py): the rate at which each framework runs the step's analytic matrix-product
FLOPs, the rate one 2048^3 product reaches in each on this machine, and so the least time and
the best speed-up over torch that a step running its products at XLA's rate could have.
Like `python -m uwm_jax.train`, it re-executes itself with malloc on transparent huge pages
(`train.host_huge_pages`). Only ratios measured side by side in one run are meaningful on a
shared machine:

  python -m benchmarks.train_step --config=configs/droid.py --config.batch_size=4 \\
      --torch --breakdown --policy_batch=1 --rounds=3
"""

import gc
import json
import time

from absl import flags
import numpy as np

from uwm_jax import batch as B_
from uwm_jax import cli_config
from uwm_jax import sampling
from benchmarks import ceiling
from benchmarks import step_components
from benchmarks import timing
from uwm_jax.diffusion import make_schedule
from uwm_jax.model import block_layout
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.runs import host_allocator
from uwm_jax.training import flops as flops_lib
from uwm_jax.training import global_batch
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training import sharded_state

_CONFIG = cli_config.define_config_flag("Training config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_LATENT_CACHE = flags.DEFINE_enum(
    "latent_cache", "both", ["both", "on", "off"],
    "Measure the step with next-obs latents from a latent cache (on), with the codec (off), "
    "or both.")
_TORCH = flags.DEFINE_bool(
    "torch", False, "Also time the PyTorch re-implementation of the reference (CPU) in the same "
    "run, alternating with ours step by step, and print the ratios (latent cache on).")
_BREAKDOWN = flags.DEFINE_bool(
    "breakdown", False, "Time the parts of the step (image transforms, ResNet and noise net "
    "forward / forward+backward, optimizer, codec) separately (with --torch: both, alternating).")
_POLICY_BATCH = flags.DEFINE_integer(
    "policy_batch", 0, "> 0: also time one policy call (10 DDIM steps) at this batch "
    "(with --torch: against the reference's).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds for --torch / --breakdown.")
_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for --torch.")
flags.mark_flags_as_required(["config"])


def random_batch(config, rng, latent_cache: bool = False):
  """A host batch of the config's shapes: random uint8 frames, actions in [-1, 1]; with
  latent_cache, float16 next-obs latent moments (mean ~ N(0, 1), std in [0.01, 0.1]) instead of
  next-obs frames."""
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


class PreparedStep:
  """The run's sharded state, jitted train step and one random device batch, compiled once;
  `__call__` runs one step and waits for it (the state is donated and carried)."""

  def __init__(self, config, latent_cache: bool = False):
    import jax  # pylint: disable=import-outside-toplevel

    tc = config.train
    self.mesh = mesh = mesh_lib.make_mesh(tc.mesh_shape)
    model = UnifiedWorldModel(config.model)
    tx = optim_lib.make_optimizer(config.optim, config.num_steps)
    ema = tc.ema_decay > 0
    abstract = sharded_state.abstract_train_state(model, tx, ema)
    shardings = sharded_state.train_state_shardings(abstract, mesh, tc.partition_rules,
                                                    tc.fsdp_min_size, log_decisions=False)
    t0 = time.perf_counter()
    self.state = sharded_state.init_train_state(model, tx, jax.random.key(config.seed),
                                                shardings, ema, tc.compiler_options)
    jax.block_until_ready(self.state)
    self.init_s = time.perf_counter() - t0
    step_fn = sharded_state.make_jitted_train_step(config, model, tx, shardings, mesh)
    self.host_batch = random_batch(config, np.random.default_rng(0), latent_cache)
    self.batch = global_batch.host_batch_to_global(self.host_batch, mesh,
                                                   mesh_lib.batch_spec())
    self.rng = sharded_state.replicate(jax.random.key(1), mesh)
    t0 = time.perf_counter()
    self.compiled = step_fn.lower(self.state, self.batch, self.rng).compile()
    self.compile_s = time.perf_counter() - t0
    self.metrics = None

  def __call__(self):
    import jax  # pylint: disable=import-outside-toplevel
    self.state, self.metrics = self.compiled(self.state, self.batch, self.rng)
    jax.block_until_ready((self.state, self.metrics))


def run(config, steps: int, warmup: int, latent_cache: bool = False) -> dict:
  """Compile and time the train step of `config`; returns the measurements. latent_cache: the
  batch carries next-obs latent moments (the step skips the codec)."""
  import jax  # pylint: disable=import-outside-toplevel

  tc = config.train
  prepared = PreparedStep(config, latent_cache)
  for _ in range(warmup):
    prepared()
  t0 = time.perf_counter()
  for _ in range(steps):
    prepared()
  step_s = (time.perf_counter() - t0) / steps
  compiled, metrics = prepared.compiled, prepared.metrics

  flops = flops_lib.train_step_flops(config.model, latent_cache)
  step_flops = flops.per_sample * config.batch_size
  device = jax.devices()[0]
  peak = flops_lib.peak_flops_per_device(device.device_kind, tc.peak_tflops_per_device)
  result = {
      "device": f"{jax.device_count()} x {device.device_kind}",
      "mesh": dict(prepared.mesh.shape),
      "batch_size": config.batch_size,
      "compute_dtype": config.model.compute_dtype,
      "latent_cache": bool(latent_cache),
      "init_s": prepared.init_s,
      "compile_s": prepared.compile_s,
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


def format_side_by_side(rows, ours: dict, theirs: dict) -> str:
  """One row per part: ours, the reference's, reference / ours (> 1: ours is faster)."""
  out = [f"{'part':<30}{'ours s':>10}{'torch s':>10}{'speed-up':>10}"]
  for name in rows:
    a, b = ours.get(name), theirs.get(name)
    fmt = lambda x: f"{x:>10.3f}" if x is not None else f"{'-':>10}"
    ratio = f"{b / a:>9.2f}x" if a and b else f"{'-':>10}"
    out.append(f"{name:<30}{fmt(a)}{fmt(b)}{ratio}")
  return "\n".join(out)


def compare(config) -> None:
  """Train step (latent cache on), its parts and the policy: ours against the PyTorch
  re-implementation of the reference, alternating in one process."""
  import jax  # pylint: disable=import-outside-toplevel

  torch_ref = None
  if _TORCH.value:
    from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel
    torch_reference.set_threads(_THREADS.value)
    schedule = make_schedule(config.diffusion)
    torch_ref = torch_reference.TorchReference(config, schedule.alphas_cumprod,
                                               schedule.timesteps)
  rounds = _ROUNDS.value
  prepared = PreparedStep(config, latent_cache=True)
  ours, theirs, order = {}, {}, ["train step"]
  t = None
  if torch_ref is not None:
    t = timing.alternate({"ours": prepared, "torch": torch_ref.train_step(prepared.host_batch)},
                         rounds)
    ours["train step"], theirs["train step"] = t["ours"], t["torch"]
  else:
    ours["train step"] = timing.alternate({"ours": prepared}, rounds)["ours"]
  host_batch = prepared.host_batch
  # The step's state (params + AdamW moments: 4.7 GB for DROID) is freed before the parts and
  # the policy make their own: together they overflowed a 24 GB host.
  del prepared, t
  gc.collect()
  if _BREAKDOWN.value:
    parts = step_components.jax_components(config, host_batch, config.seed)
    ref_parts = torch_ref.components(host_batch) if torch_ref is not None else {}
    named = {}
    for name, fn in parts.items():
      named[("ours", name)] = fn
      if name in ref_parts:
        named[("torch", name)] = ref_parts[name]
    for (who, name), sec in timing.alternate(named, rounds).items():
      (ours if who == "ours" else theirs)[name] = sec
      if name not in order:
        order.append(name)
    del parts, ref_parts, named  # their params and optimizer state, before the policy's
    gc.collect()
  if _POLICY_BATCH.value:
    name = f"policy B={_POLICY_BATCH.value}"
    # The policy as checkpoints are served (model.block_layout.inference_layout) and, beside
    # it, in the config's training layout, to show what the inference layout buys.
    params, frozen = UnifiedWorldModel(config.model).init(jax.random.key(config.seed))
    one = random_batch(config, np.random.default_rng(2))
    inputs = {k: one[k][:1].repeat(_POLICY_BATCH.value, axis=0)
              for k in (B_.OBS, B_.LOW_DIM) if k in one}  # low-dim when the model has it
    key = jax.random.key(3)

    def policy(model_cfg, p):
      sampler = sampling.make_sampler(UnifiedWorldModel(model_cfg), config.diffusion,
                                      sampling.POLICY)
      return lambda: jax.block_until_ready(sampler(p, frozen, inputs, key))

    inference_params, inference_cfg = block_layout.inference_layout(params, config.model)
    named = {"ours": policy(inference_cfg, inference_params)}
    training_name = f"{name}, training layout"
    if inference_cfg is not config.model:
      named["training"] = policy(config.model, params)
    if torch_ref is not None:
      named["torch"] = torch_ref.policy(inputs[B_.OBS])
    t = timing.alternate(named, rounds)
    ours[name] = t["ours"]
    if "torch" in t:
      theirs[name] = t["torch"]
    order.append(name)
    if "training" in t:
      ours[training_name] = t["training"]
      order.append(training_name)
  print(f"{config.batch_size} samples per step, {config.model.compute_dtype}, latent cache on; "
        f"median of {rounds} alternating rounds; {jax.devices()[0].device_kind}"
        + (f", torch {_THREADS.value} threads" if torch_ref is not None else ""))
  print(format_side_by_side(order, ours, theirs))
  record = {"ours_s": ours, "torch_s": theirs, "batch_size": config.batch_size,
            "compute_dtype": config.model.compute_dtype, "rounds": rounds}
  if torch_ref is not None:
    record["ceiling"] = ceiling.measure_and_print(config, ours, theirs, rounds)
  print(json.dumps(record))


def main(argv):
  del argv
  if _CONFIG.value.train.get("host_huge_pages", False):  # as `python -m uwm_jax.train` runs
    host_allocator.reexec_with_huge_pages()  # (may re-execute this command, same PID)
  if _TORCH.value or _BREAKDOWN.value or _POLICY_BATCH.value:
    compare(_CONFIG.value)
    return
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
