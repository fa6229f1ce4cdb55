"""Compile the train step and the policy ahead of time for a TPU topology, and estimate them.

`python -m uwm_jax.compile` (its docstring says what it prints) runs these on a CPU host with
libtpu: `topology_devices` describes a named topology's chips (compile-only devices),
`estimate_train` / `estimate_policy` compile the run's train step
(`sharded_state.make_jitted_train_step`) or the policy sampler for them and read the
executable's memory and the compiler's cost analysis into an `Estimate`; `sweep` searches the
settings per topology (coordinate descent), `format_estimate` / `format_table` print them.
"""

import dataclasses
import json
import math
import os
import time
from typing import Dict, List, Optional, Tuple

from uwm_jax import batch as B_
from uwm_jax import sampling
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.training import flops as flops_lib
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training import sharded_state


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # friendly name, as Cloud TPU accelerator types (cores for v4/v5p, chips for v5e)
  jax_name: str  # get_topology_desc's topology_name
  chips: int
  hbm_gib: float  # per chip
  chip_config: str = "default"  # "megacore": one jax device per chip (v4, v5p)


TOPOLOGIES = {t.name: t for t in (
    Topology("v4-8", "v4:2x2x1", 4, 32, "megacore"),
    Topology("v4-16", "v4:2x2x2", 8, 32, "megacore"),
    Topology("v4-64", "v4:4x4x2", 32, 32, "megacore"),
    Topology("v5e-4", "v5e:2x2", 4, 16),
    Topology("v5e-8", "v5e:2x4", 8, 16),
    Topology("v5e-32", "v5e:4x8", 32, 16),
    Topology("v5p-8", "v5p:2x2x1", 4, 95, "megacore"),
    Topology("v5p-16", "v5p:2x2x2", 8, 95, "megacore"),
    Topology("v5p-32", "v5p:2x2x4", 16, 95, "megacore"),
    Topology("v5p-64", "v5p:4x4x2", 32, 95, "megacore"),
)}
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


def resolve_topology(name: str) -> Topology:
  """A friendly name (v5p-8) or a jax topology name (v5p:2x2x1) -> Topology."""
  if name in TOPOLOGIES:
    return TOPOLOGIES[name]
  if ":" in name:
    gen, dims = name.split(":", 1)
    try:
      chips = math.prod(int(d) for d in dims.split("x"))
    except ValueError:
      chips = 0
    if gen in HBM_GIB and chips:
      return Topology(name, name, chips, HBM_GIB[gen],
                      "megacore" if gen in ("v4", "v5p") else "default")
  raise ValueError(f"Unknown topology {name!r}; known: {', '.join(TOPOLOGIES)} or "
                   f"GEN:AxBxC with GEN in {sorted(HBM_GIB)}.")


def topology_devices(topology: Topology, num_slices: int = 1) -> list:
  """Compile-only jax devices of `num_slices` slices of `topology` (needs libtpu)."""
  # Several compile-only processes at once (a sweep beside a test) need no libtpu lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    raise RuntimeError("Compiling for TPU needs libtpu: pip install -r requirements-tpu.txt "
                       "(it is ~700 MB; no TPU is needed).") from e
  kwargs = {"chip_config_name": topology.chip_config}
  if num_slices > 1:
    kwargs["num_slices"] = num_slices
  desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.jax_name, **kwargs)
  devices = list(desc.devices)
  if len(devices) != topology.chips * num_slices:
    raise RuntimeError(f"{topology.name}: libtpu describes {len(devices)} devices, expected "
                       f"{topology.chips * num_slices} (one per chip).")
  return devices


# ---------------------------------------------------------------- analysis of an executable
def memory_bytes(compiled) -> Dict[str, int]:
  """Per-device bytes of the compiled executable: arguments, outputs, temporaries, aliased
  (outputs written over donated arguments) and their peak = args + outputs + temp - aliased."""
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
         for k in ("argument", "output", "temp", "alias", "generated_code")}
  out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
  return out


def cost(compiled) -> Dict[str, float]:
  """The compiler's per-device cost analysis: flops, bytes accessed, optimal_seconds."""
  c = compiled.cost_analysis()
  c = c[0] if isinstance(c, (list, tuple)) else c
  return {k: float(c.get(k, math.nan)) for k in ("flops", "bytes accessed", "optimal_seconds")}


@dataclasses.dataclass
class Estimate:
  """One compiled executable on one topology (per-chip numbers)."""
  what: str  # "train" or "policy B=n"
  topology: str
  chips: int
  hbm_bytes: float
  memory: Dict[str, int]
  compiled_flops: float  # per chip, from the compiler's cost analysis
  analytic_flops: float  # per chip, from training/flops.py
  seconds: float  # the compiler's estimate of one call
  samples: int  # samples per call (global)
  peak_flops: Optional[float]  # per chip, dense bf16
  setting: dict = dataclasses.field(default_factory=dict)
  compile_s: float = 0.0

  @property
  def fits(self) -> bool:
    return self.memory["peak"] <= self.hbm_bytes

  @property
  def timed(self) -> bool:
    """Whether the compiler estimated a time (libtpu's optimal_seconds is negative for some
    chips: the DROID step on v4-8 and v5e-8)."""
    return self.seconds > 0

  @property
  def samples_per_s(self) -> float:
    return self.samples / self.seconds if self.timed else math.nan

  @property
  def mfu(self) -> float:
    if not self.peak_flops or not self.timed:
      return math.nan
    return self.analytic_flops / self.seconds / self.peak_flops

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d.update(fits=self.fits, samples_per_s=self.samples_per_s, mfu=self.mfu)
    return d


def _gib(b: float) -> str:
  return f"{b / 2**30:.2f} GiB"


def format_estimate(e: Estimate) -> str:
  m = e.memory
  margin = e.hbm_bytes - m["peak"]
  peak = (f"{e.peak_flops / 1e12:.0f} TFLOP/s dense bf16 per chip" if e.peak_flops
          else "unknown peak")
  return "\n".join([
      f"{e.what} on {e.topology} ({e.chips} chips) {json.dumps(e.setting)}",
      f"  HBM per chip     args {_gib(m['argument'])} + temp {_gib(m['temp'])} + outputs "
      f"{_gib(m['output'])} - aliased {_gib(m['alias'])} = {_gib(m['peak'])} of "
      f"{_gib(e.hbm_bytes)}: " + (f"fits, margin {_gib(margin)} ({margin / e.hbm_bytes:.0%})"
                                  if e.fits else f"DOES NOT FIT, over by {_gib(-margin)}"),
      f"  FLOPs per chip   compiled {e.compiled_flops / 1e12:.4g} TFLOP, analytic "
      f"{e.analytic_flops / 1e12:.4g} TFLOP (compiled/analytic {e.compiled_flops / max(e.analytic_flops, 1):.2f})",
      (f"  est. time        {e.seconds * 1e3:.2f} ms per call (compiler's optimal_seconds) -> "
       f"{e.samples_per_s:.4g} samples/s, MFU {e.mfu:.1%} ({peak})" if e.timed else
       f"  est. time        none: the compiler's optimal_seconds is {e.seconds:.4g} (libtpu "
       "gives no time estimate for this chip; memory and FLOPs above still hold)"),
      f"  compile          {e.compile_s:.0f} s here",
  ])


# ---------------------------------------------------------------- compilation
def abstract_key(sharding):
  import jax  # pylint: disable=import-outside-toplevel
  k = jax.eval_shape(lambda: jax.random.key(0))
  return jax.ShapeDtypeStruct(k.shape, k.dtype, sharding=sharding)


def compile_train_step(config, devices, latent_cache: bool):
  """Lower and compile the run's train step for `devices` (compile-only TPU devices or real
  ones) -> (compiled, mesh, seconds to compile)."""
  tc = config.train
  mesh = mesh_lib.make_mesh(tc.mesh_shape, devices)
  shards = mesh_lib.batch_shards(mesh)
  if config.batch_size % shards:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the {shards} batch "
                     f"shards of the mesh {dict(mesh.shape)}.")
  model = UnifiedWorldModel(config.model)
  optimizer = optim_lib.make_optimizer(config.optim, config.num_steps)
  abstract = sharded_state.abstract_train_state(model, optimizer, tc.ema_decay > 0)
  shardings = sharded_state.train_state_shardings(abstract, mesh, tc.partition_rules,
                                                  tc.fsdp_min_size, log_decisions=False)
  step = sharded_state.make_jitted_train_step(config, model, optimizer, shardings, mesh)
  args = (sharded_state.with_shardings(abstract, shardings),
          sharded_state.abstract_batch(config.model, config.batch_size, latent_cache,
                                       mesh_lib.batch_sharding(mesh)),
          abstract_key(mesh_lib.replicated(mesh)))
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  return compiled, mesh, time.perf_counter() - t0


def compile_policy(config, device, batch_size: int):
  """Lower and compile the policy sampler (eval transform, ResNet, DDIM loop) on one chip."""
  import jax  # pylint: disable=import-outside-toplevel
  model = UnifiedWorldModel(config.model)
  mesh = mesh_lib.make_mesh((1, 1, 1), [device])
  rep = mesh_lib.replicated(mesh)
  params, frozen = jax.eval_shape(model.init, jax.random.key(0))
  to_abstract = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)
  shapes = B_.expected_shapes(config.model, batch_size)
  batch = {B_.OBS: jax.ShapeDtypeStruct(shapes[B_.OBS], B_.DTYPES[B_.OBS], sharding=rep)}
  if B_.LOW_DIM in shapes:
    batch[B_.LOW_DIM] = jax.ShapeDtypeStruct(shapes[B_.LOW_DIM], B_.DTYPES[B_.LOW_DIM],
                                             sharding=rep)
  sampler = sampling.make_sampler(model, config.diffusion, sampling.POLICY, unroll=True)
  t0 = time.perf_counter()
  compiled = sampler.lower(to_abstract(params), to_abstract(frozen), batch,
                           abstract_key(rep)).compile()
  return compiled, time.perf_counter() - t0


def setting_of(config, latent_cache: bool) -> dict:
  m, t = config.model, config.train
  return {"batch_size": config.batch_size, "mesh_shape": list(t.mesh_shape),
          "compute_dtype": m.compute_dtype, "remat": bool(m.remat),
          "scan_layers": bool(m.scan_layers), "latent_cache": latent_cache}


def estimate_train(config, topology: Topology, devices, latent_cache: bool) -> Estimate:
  compiled, mesh, compile_s = compile_train_step(config, devices, latent_cache)
  n = len(devices)
  c = cost(compiled)
  analytic = flops_lib.train_step_flops(config.model, latent_cache).per_sample * config.batch_size
  setting = setting_of(config, latent_cache)
  setting["mesh"] = dict(mesh.shape)
  return Estimate(
      what="train step", topology=topology.name, chips=n, hbm_bytes=topology.hbm_gib * 2**30,
      memory=memory_bytes(compiled), compiled_flops=c["flops"], analytic_flops=analytic / n,
      seconds=c["optimal_seconds"], samples=config.batch_size,
      peak_flops=flops_lib.peak_flops_per_device(devices[0].device_kind,
                                                 config.train.peak_tflops_per_device),
      setting=setting, compile_s=compile_s)


def estimate_policy(config, topology: Topology, device, batch_size: int) -> Estimate:
  compiled, compile_s = compile_policy(config, device, batch_size)
  c = cost(compiled)
  analytic = flops_lib.policy_flops(config.model, config.diffusion.num_inference_steps)
  return Estimate(
      what=f"policy B={batch_size}", topology=topology.name, chips=1,
      hbm_bytes=topology.hbm_gib * 2**30, memory=memory_bytes(compiled),
      compiled_flops=c["flops"], analytic_flops=analytic * batch_size,
      seconds=c["optimal_seconds"], samples=batch_size,
      peak_flops=flops_lib.peak_flops_per_device(device.device_kind,
                                                 config.train.peak_tflops_per_device),
      setting={"compute_dtype": config.model.compute_dtype,
               "steps": config.diffusion.num_inference_steps}, compile_s=compile_s)


# ---------------------------------------------------------------- sweep
def mesh_candidates(chips: int) -> List[Tuple[int, int, int]]:
  """Data parallel, FSDP over all chips, FSDP x 2-way tensor, data x FSDP-4."""
  out = [(chips, 1, 1), (1, chips, 1)]
  if chips % 2 == 0 and chips > 2:
    out.append((1, chips // 2, 2))
  if chips % 4 == 0 and chips > 4:
    out.append((chips // 4, 4, 1))
  return out


def batch_shards(mesh_shape) -> int:
  return int(mesh_shape[0]) * int(mesh_shape[1])


def _apply(config, overrides: dict):
  import ml_collections  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def fit_batch(batch_size: int, mesh_shape) -> int:
  """The largest global batch <= batch_size divisible by the mesh's batch shards (>= shards)."""
  shards = batch_shards(mesh_shape)
  return max(shards, batch_size // shards * shards)


def sweep(config, topology: Topology, devices, latent_cache: bool, log) -> List[Estimate]:
  """Coordinate descent over the settings; returns every estimate (the best first)."""
  chips = len(devices)
  tried: Dict[str, Estimate] = {}

  def score(e: Optional[Estimate]) -> float:
    return e.samples_per_s if e is not None and e.fits and e.timed else -1.0

  def run(overrides: dict) -> Optional[Estimate]:
    cfg = _apply(config, overrides)
    cfg.batch_size = fit_batch(cfg.batch_size, cfg.train.mesh_shape)
    key = json.dumps(setting_of(cfg, latent_cache), sort_keys=True)
    if key not in tried:
      try:
        tried[key] = estimate_train(cfg, topology, devices, latent_cache)
      except Exception as e:  # pylint: disable=broad-except
        log(f"  {key}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return None
      log(format_estimate(tried[key]))
    return tried[key]

  # Unrolled blocks only: XLA's cost analysis counts a loop body once, so a scanned stack's
  # estimate covers one of its blocks and would always "win".
  best = {"train.mesh_shape": tuple(config.train.mesh_shape), "model.scan_layers": False}
  if -1 in best["train.mesh_shape"]:
    best["train.mesh_shape"] = (chips, 1, 1)
  best_e = run(best)
  axes = [
      ("model.compute_dtype", ["bfloat16", "float32"]),
      ("train.mesh_shape", mesh_candidates(chips)),
      ("model.remat", [False, True]),
      ("batch_size", [config.batch_size, 2 * config.batch_size]),
  ]
  for field, values in axes:
    for v in values:
      e = run(dict(best, **{field: v}))
      if score(e) > score(best_e):
        best, best_e = dict(best, **{field: v}), e
  rest = sorted((e for e in tried.values() if e is not best_e), key=lambda e: -score(e))
  return ([best_e] if best_e is not None else []) + rest


def format_table(rows: List[Estimate], best: Optional[Estimate] = None) -> str:
  head = (f"{'topology':<9}{'cache':>6}{'batch':>6}{'mesh (d,f,t)':>14}{'dtype':>6}{'remat':>6}"
          f"{'scan':>5}{'HBM GiB/chip':>13}{'fits':>5}{'est ms':>9}{'samples/s':>10}{'MFU':>7}")
  out = [head]
  for e in rows:
    s = e.setting
    mark = " <- best" if e is best else ""
    out.append(
        f"{e.topology:<9}{'on' if s['latent_cache'] else 'off':>6}{s['batch_size']:>6}"
        f"{str(tuple(s['mesh_shape'])):>14}{'bf16' if s['compute_dtype'] == 'bfloat16' else 'fp32':>6}"
        f"{'y' if s['remat'] else 'n':>6}{'y' if s['scan_layers'] else 'n':>5}"
        f"{e.memory['peak'] / 2**30:>13.2f}{'y' if e.fits else 'n':>5}"
        + (f"{e.seconds * 1e3:>9.1f}{e.samples_per_s:>10.1f}{e.mfu:>7.1%}" if e.timed
           else f"{'none':>9}{'-':>10}{'-':>7}") + mark)
  return "\n".join(out)
