"""Benchmark serving: `python -m benchmarks.serve --checkpoint_dir=workdirs/demo --clients=1,4`.

Serves the checkpoint in this process (`uwm_jax.serving`, 127.0.0.1, free ports: one server per
setting below, each built with its max_batch and parallel_calls) and prints,
side by side:
  - the in-process sampler time of one policy request (batch 1, the compiled function alone);
  - per client count, the round-trip latency p50 / p99 of `PolicyClient.infer` (encoding,
    websocket, transforms, history, batching, sampling, decoding) and the requests/s, once with
    batching (--max_batch, default the largest client count; each batch split into
    --parallel_calls concurrent sampler calls, 0 = the server's default: one per core on a CPU
    host), the same batches as one call each, and one request per sampler call (max_batch 1),
    plus the batched/one-at-a-time throughput ratio;
  - with --droid (default on), the DROID config's policy latency at batch 1 (its 10 DDIM steps,
    random-init params: the latency does not depend on the weights).
Each client sends --requests sequential requests of random images at the checkpoint's camera
size. Timings on a shared machine are noisy: run it alone for numbers to quote. One JSON line
closes the output.
"""

import contextlib
import json
import sys
import threading
import time

from absl import flags
import numpy as np

from uwm_jax import cli_config

# Imports sit inside functions here on purpose: the benchmark's client processes are spawned and
# re-import this module, and must stay light (numpy, msgpack, websockets; no JAX), as a robot's.

_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "Checkpoints folder or workdir.")
_CLIENTS = flags.DEFINE_list("clients", ["1", "4"], "Concurrent client counts.")
_REQUESTS = flags.DEFINE_integer("requests", 30, "Requests per client.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 0, "Batched serving's max_batch (0 = the "
                                  "largest client count).")
_PARALLEL = flags.DEFINE_integer("parallel_calls", 0, "Concurrent sampler calls per batch "
                                 "(0 = the server's default).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds, each running every setting in turn.")
_DROID = flags.DEFINE_bool("droid", True, "Also time the DROID config's policy at batch 1.")
_DROID_CALLS = flags.DEFINE_integer("droid_calls", 3, "Timed DROID sampler calls.")
flags.mark_flags_as_required(["checkpoint_dir"])


def _percentile(values, q):
  return float(np.percentile(np.asarray(values) * 1e3, q))


def random_observation(transforms, rng):
  """A request with random images at the checkpoint's size and a plausible state."""
  H, W = transforms.image_shape
  obs = {transforms.camera_sources[k][0].key: rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
         for k in transforms.camera_keys}
  for field in transforms.state_fields:
    obs[field.sources[0].key] = rng.uniform(-0.1, 0.1, field.width).astype(np.float32)
  return obs


def sampler_times(server, calls: int = 20) -> list:
  """Seconds of `calls` in-process policy sampler calls at batch 1 (after one untimed)."""
  from uwm_jax import sampling  # pylint: disable=import-outside-toplevel
  sampler = server.samplers[sampling.POLICY]
  example = server.example_inputs()[sampling.POLICY]
  sampler([example], [(0, 0)])
  times = []
  for i in range(calls):
    t0 = time.perf_counter()
    sampler([example], [(0, i)])
    times.append(time.perf_counter() - t0)
  return times


def _clients_main(port: int, obs: dict, clients: int, requests: int, conn) -> None:
  """Child process: `clients` threads, each its own connection, `requests` timed round trips
  each after one untimed warm-up; sends (latencies in s, wall seconds) back on `conn`."""
  from uwm_jax.serving.client import PolicyClient  # pylint: disable=import-outside-toplevel
  conns = [PolicyClient(f"127.0.0.1:{port}") for _ in range(clients)]
  latencies = [[] for _ in range(clients)]
  barrier = threading.Barrier(clients + 1)

  def run(i):
    conns[i].infer(dict(obs, reset=True, seed=i))
    barrier.wait()
    for _ in range(requests):
      t0 = time.perf_counter()
      conns[i].infer(obs)
      latencies[i].append(time.perf_counter() - t0)

  threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
  for t in threads:
    t.start()
  barrier.wait()
  t0 = time.perf_counter()
  for t in threads:
    t.join()
  wall = time.perf_counter() - t0
  for c in conns:
    c.close()
  conn.send(([x for lat in latencies for x in lat], wall))


def round_trips(port: int, transforms, clients: int, requests: int):
  """-> (latencies in s, wall seconds) of `clients` concurrent clients, run in another
  process (as robots are) so client and server do not share an interpreter."""
  import multiprocessing  # pylint: disable=import-outside-toplevel
  obs = random_observation(transforms, np.random.default_rng(0))
  ctx = multiprocessing.get_context("spawn")
  parent, child = ctx.Pipe()
  proc = ctx.Process(target=_clients_main, args=(port, obs, clients, requests, child))
  proc.start()
  try:
    return parent.recv()
  finally:
    proc.join(60)


def droid_latency(calls: int) -> float:
  """Median seconds of the DROID config's policy (batch 1, its DDIM steps), random params."""
  # pylint: disable=import-outside-toplevel
  import jax
  from uwm_jax import sampling
  from uwm_jax.model.uwm import UnifiedWorldModel
  from uwm_jax.policies.sampler import BatchedSampler
  config = cli_config.load_config("configs/droid.py")
  model = UnifiedWorldModel(config.model)
  params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
  sampler = BatchedSampler(model, config.diffusion, params, {}, sampling.POLICY, (1,))
  d = model.dims
  H, W = config.model.image_shape
  example = {"obs": np.random.default_rng(0).integers(
      0, 256, (len(config.model.camera_keys), d.num_obs_frames, H, W, 3), dtype=np.uint8)}
  t0 = time.perf_counter()
  sampler([example], [(0, 0)])
  print(f"DROID config: compiled + first call in {time.perf_counter() - t0:.1f} s "
        f"({config.diffusion.num_inference_steps} DDIM steps)", flush=True)
  times = []
  for i in range(calls):
    t0 = time.perf_counter()
    sampler([example], [(0, i + 1)])
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv):
  del argv
  from uwm_jax.serving import from_checkpoint, server_thread  # pylint: disable=import-outside-toplevel
  counts = [int(c) for c in _CLIENTS.value]
  max_batch = _MAX_BATCH.value or max(counts)

  def compiled_server(label: str, batch: int, parallel: int):
    """A server of the checkpoint with its own max_batch and parallel_calls, compiled."""
    server = from_checkpoint.make_server(_CHECKPOINT_DIR.value, port=0, max_batch=batch,
                                         parallel_calls=parallel)
    print(f"compiling {label} ({server.metadata['robot']}, step "
          f"{server.metadata['checkpoint_step']}, max_batch {batch}, "
          f"{server.metadata['parallel_calls']} call(s)) ...", flush=True)
    server.compile(printer=lambda line: None)
    return server

  batched = compiled_server("batched", max_batch, _PARALLEL.value)
  calls = batched.metadata["parallel_calls"]
  settings = [("batched", max_batch, calls)]
  if calls > 1:  # the same batches as one call each, for comparison
    settings.append(("batched, 1 call", max_batch, 1))
  settings.append(("one-at-a-time", 1, 1))
  # One server per setting, each built with its settings (a sampler's parallel_calls is fixed
  # at construction), all serving at once on their own ports.
  servers = {label: batched if label == "batched" else compiled_server(label, batch, parallel)
             for label, batch, parallel in settings}
  # Rounds alternate every setting (and the in-process sampler), each round starting with the
  # next setting, so a slow spell of a shared machine falls on all of them alike; each row
  # pools its rounds.
  inproc_times = []
  pooled = {(c, label): ([], 0.0) for c in counts for label, _, _ in settings}
  with contextlib.ExitStack() as stack:
    ports = {label: stack.enter_context(server_thread.ServerThread(server))
             for label, server in servers.items()}
    for r in range(_ROUNDS.value):
      inproc_times.extend(sampler_times(batched))  # batch 1: one call whatever the split
      for clients in counts:
        for label, batch, parallel in settings[r % len(settings):] + settings[:r % len(settings)]:
          lat, wall = round_trips(ports[label], batched.transforms, clients, _REQUESTS.value)
          prev_lat, prev_wall = pooled[(clients, label)]
          pooled[(clients, label)] = (prev_lat + list(lat), prev_wall + wall)
  inproc = float(np.median(inproc_times))
  print(f"in-process policy sampler, batch 1: {inproc * 1e3:.2f} ms", flush=True)
  rows = []
  for clients in counts:
    for label, batch, parallel in settings:
      lat, wall = pooled[(clients, label)]
      rows.append({"clients": clients, "serving": label, "max_batch": batch,
                   "parallel_calls": parallel,
                   "p50_ms": _percentile(lat, 50), "p99_ms": _percentile(lat, 99),
                   "requests_per_s": len(lat) / wall})
  print(f"\nbatched: max_batch {max_batch}, split into {calls} concurrent sampler call(s); "
        f"{_ROUNDS.value} round(s) of {_REQUESTS.value} requests per client")
  print(f"{'clients':>7} {'serving':>15} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} "
        f"{'p50 - sampler':>13}")
  for r in rows:
    print(f"{r['clients']:>7} {r['serving']:>15} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
          f"{r['requests_per_s']:>7.1f} {r['p50_ms'] - inproc * 1e3:>10.2f} ms")
  ratios = {}
  for clients in counts:
    by = {r["serving"]: r for r in rows if r["clients"] == clients}
    ratios[clients] = by["batched"]["requests_per_s"] / by["one-at-a-time"]["requests_per_s"]
    print(f"{clients} client(s): batched / one-at-a-time throughput = {ratios[clients]:.2f}x")
  out = {"checkpoint_dir": _CHECKPOINT_DIR.value, "in_process_sampler_ms": inproc * 1e3,
         "rows": rows, "batched_speedup": ratios}
  if _DROID.value:
    droid_ms = droid_latency(_DROID_CALLS.value) * 1e3
    print(f"DROID config policy latency, batch 1: {droid_ms:.0f} ms")
    out["droid_policy_ms"] = droid_ms
  print(json.dumps(out))


if __name__ == "__main__":
  cli_config.run(main)
