"""Compile the train step and the policy for a TPU topology on this machine (no TPU needed).

  python -m uwm_jax.compile --config=configs/droid.py --topology=v5p-8 \\
      --config.model.compute_dtype=bfloat16
  python -m uwm_jax.compile --config=configs/droid.py:v5p-8 --topology=v5p-8
  python -m uwm_jax.compile --config=configs/droid.py --topology=v5p-8,v5e-8 --sweep

Needs libtpu (`pip install -r requirements-tpu.txt`): jax then describes the chips of a named
topology (`jax.experimental.topologies.get_topology_desc`) and compiles for them ahead of time.
The train step is the one training runs (`sharded_state.make_jitted_train_step`: same mesh,
partition rules, sharded state, donation), fed `jax.ShapeDtypeStruct`s of the config's batch.
Printed per chip: argument, temporary and output bytes of the compiled executable against the
chip's HBM (fits or not, with the margin), the compiled FLOPs next to the analytic count of
`uwm_jax/training/flops.py`, and the compiler's own step-time estimate (`cost_analysis()`
"optimal_seconds"), hence estimated samples/s and MFU against the chip's dense bf16 peak. The
same for the policy (10 DDIM steps) on one chip at batch 1 and `--serve_batch`.

XLA's cost analysis counts the body of a loop once: with `model.scan_layers=True` (the default)
the FLOPs and the time estimate cover ONE of the DiT blocks (memory is right). Estimate with
`--config.model.scan_layers=False` (what the presets `configs/*.py:v5p-8` etc. use); the
policy's DDIM loop is compiled unrolled here for the same reason.

`--sweep` searches, per topology, one setting at a time starting from the config (coordinate
descent, a setting kept when it raises the estimated samples/s and fits in HBM; blocks
unrolled): bf16 compute, mesh shape (data / fsdp / tensor), remat, per-chip batch; `--latent_cache`
chooses whether next-obs latents come from a latent cache (on), the codec (off) or both
(each searched). Every compiled setting is one table row; the best per topology is marked.
Estimates, not measurements: the compiler's cost model, no input pipeline, no host overhead.
"""

import dataclasses
import json
import sys

from absl import flags

from uwm_jax import cli_config
from uwm_jax.training.topology_estimate import (TOPOLOGIES, estimate_policy, estimate_train,
                                                 format_estimate, format_table,
                                                 resolve_topology, sweep, topology_devices)

_CONFIG = cli_config.define_config_flag("Training config file.", lock_config=False)
_TOPOLOGY = flags.DEFINE_string(
    "topology", "v5p-8", "Comma-separated TPU topologies: friendly names (see --list) or "
    "jax topology names such as v5p:2x2x1.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of the topology (multi-slice).")
_LATENT_CACHE = flags.DEFINE_enum("latent_cache", "on", ["on", "off", "both"],
                                  "Next-obs latents from a latent cache (on) or the codec (off).")
_SWEEP = flags.DEFINE_bool("sweep", False, "Search the best setting per topology.")
_POLICY = flags.DEFINE_bool("policy", True, "Also compile the policy (batch 1 and serve_batch).")
_SERVE_BATCH = flags.DEFINE_integer("serve_batch", 8, "The serving batch of the policy.")
_JSON = flags.DEFINE_string("json_out", "", "Append one JSON line per compiled setting here.")
_LIST = flags.DEFINE_bool("list", False, "List the known topologies and exit.")


def main(argv):
  del argv
  if _LIST.value:
    for t in TOPOLOGIES.values():
      print(f"{t.name:<8} {t.jax_name:<11} {t.chips:>3} chips  {t.hbm_gib:g} GiB HBM per chip")
    return 0
  if _CONFIG.value is None:
    print("error: --config is required (e.g. --config=configs/droid.py)", file=sys.stderr)
    return 2
  config = _CONFIG.value
  log = lambda s: print(s, flush=True)
  try:
    topologies = [resolve_topology(t.strip()) for t in _TOPOLOGY.value.split(",") if t.strip()]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  caches = {"on": (True,), "off": (False,), "both": (True, False)}[_LATENT_CACHE.value]
  if config.model.scan_layers and not _SWEEP.value:
    log(f"note: model.scan_layers=True: XLA's cost analysis counts the scanned stack's body once, "
        f"so FLOPs and time cover 1 of {config.model.depth} DiT blocks (memory is right); "
        "pass --config.model.scan_layers=False for estimates.")
  results, bests = [], []
  for topology in topologies:
    try:
      devices = topology_devices(topology, _NUM_SLICES.value)
    except RuntimeError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    if _NUM_SLICES.value > 1:
      topology = dataclasses.replace(topology, name=f"{topology.name}x{_NUM_SLICES.value}")
    log(f"== {topology.name}: {len(devices)} x {devices[0].device_kind} ({topology.jax_name}, "
        f"{_NUM_SLICES.value} slice(s), {topology.hbm_gib:g} GiB HBM per chip)")
    for latent_cache in caches:
      if _SWEEP.value:
        rows = sweep(config, topology, devices, latent_cache, log)
        if rows:
          bests.append(rows[0])
      else:
        rows = [estimate_train(config, topology, devices, latent_cache)]
        log(format_estimate(rows[0]))
      results += rows
    if _POLICY.value:
      for b in sorted({1, _SERVE_BATCH.value}):
        e = estimate_policy(config, topology, devices[0], b)
        log(format_estimate(e))
        results.append(e)
  train_rows = [r for r in results if r.what == "train step"]
  log(format_table(train_rows))
  if bests:
    log("Best setting per topology (highest estimated samples/s that fits):")
    log(format_table(bests))
  if _JSON.value:
    with open(_JSON.value, "a", encoding="utf-8") as f:
      for r in results:
        f.write(json.dumps(r.to_json()) + "\n")
  return 0


if __name__ == "__main__":
  cli_config.run(lambda argv: sys.exit(main(argv)))
