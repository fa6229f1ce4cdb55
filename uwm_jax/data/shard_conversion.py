"""The shard-by-shard conversion driver every converter shares (`convert_rlds`,
`convert_video`, `convert_lerobot`): each supplies its conversion parameters and a function
that converts one input shard into one output shard of the array_record training format
(`array_record_format.ShardWriter`); this module does the rest.

  start_conversion      conversion.json written first (a rerun with other parameters into the
                        same folder is refused); partial shards of killed writers deleted
  convert_shards        this process's share of the input shards, skipping finished ones
  finalize              dataset.json once the needed shards are complete: the episodes
                        selected in `tfds.load` order up to `max_episodes` (`select_episodes`)
  conversion_summary    the last line: episodes read, kept, skipped (and why), steps written
  convert_in_processes  `--num_processes` spawned local workers (they stop with the parent,
                        even on SIGKILL) times `--process_count` hosts, then the summary line
  define_process_flags  --num_processes / --process_index / --process_count
"""

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import types
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tqdm
from absl import app
from absl import flags

from uwm_jax import cli_logging
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import rlds_read
from uwm_jax.runs import processes

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# ------------------------------------------------------------------------- conversion
def start_conversion(out_dir: str, params: dict, process_index: int, process_count: int
                     ) -> List[int]:
  """Record the conversion's parameters in conversion.json (a folder holding a conversion with
  other parameters is refused), delete the partial shards of killed writers among this
  process's input shards and return those shards (every `process_count`-th from
  `process_index`)."""
  os.makedirs(out_dir, exist_ok=True)
  conv_path = os.path.join(out_dir, fmt.CONVERSION_JSON)
  if os.path.exists(conv_path):
    old = fmt.read_json(conv_path)
    if old != params:
      diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
      raise ValueError(f"{out_dir!r} holds a conversion with other parameters ({diff}); "
                       f"use another --out or delete it.")
  else:
    fmt.write_json_atomic(conv_path, params)
  n = params["num_input_shards"]
  mine = list(range(process_index, n, process_count))
  remove_dead_writers_tmp(out_dir, [fmt.shard_dirname(k, n) for k in mine])
  return mine


def convert_shards(out_dir: str, params: dict, convert_one: Callable[[int], dict], *,
                   needed: Callable[[int], bool] = lambda k: True, process_index: int = 0,
                   process_count: int = 1, progress: bool = True) -> bool:
  """The conversion loop of this process: `start_conversion`, then `convert_one(k)` for each
  of its input shards k not finished yet (and `needed`), logging each shard's summary; True
  when `finalize` finds the dataset complete and writes dataset.json."""
  mine = start_conversion(out_dir, params, process_index, process_count)
  n, dataset = params["num_input_shards"], params["dataset"]
  for k in tqdm.tqdm(mine, desc=f"convert {dataset} [{process_index}/{process_count}]",
                     disable=not progress):
    if fmt.shard_done(out_dir, k, n) or not needed(k):
      continue
    logging.info("%s shard %d/%d: %s", dataset, k, n, convert_one(k))
  return finalize(out_dir)


def remove_dead_writers_tmp(out_dir: str, shard_names: Sequence[str]) -> List[str]:
  """Delete `<shard>.tmp-<PID>` folders of these shards whose writer process is gone (a
  killed conversion's partial shards); a live writer's folder is left alone. Only this
  process's shards are passed, so a folder of another host's writer is never judged by a
  PID of this host."""
  removed = []
  names = set(shard_names)
  for entry in os.listdir(out_dir):
    base, sep, pid = entry.rpartition(".tmp-")
    if not sep or base not in names or not pid.isdigit():
      continue
    if int(pid) != os.getpid() and processes.pid_running(int(pid)):
      continue
    shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)
    removed.append(entry)
  if removed:
    logging.info("Removed %d partial shard folders of killed writers: %s", len(removed),
                 removed[:5])
  return removed


# ------------------------------------------------------------------------- episode selection
def _read_order(params: dict) -> List[Tuple[int, int]]:
  return rlds_read.tfds_load_order(params["shard_lengths"], params["disable_shuffling"])


def select_episodes(out_dir: str, params: dict) -> Tuple[Optional[List[Tuple[int, int]]], set]:
  """The dataset's episodes, as the reference takes them: walk the input episodes in
  `tfds.load` order (`rlds_read.tfds_load_order`), keep the converted ones (those passing the
  filters) up to `max_episodes`. Returns ([(input shard, episode index in its output shard)],
  the input shards the walk visited), or (None, visited) while a shard it needs is unfinished.
  """
  n, limit = params["num_input_shards"], params["max_episodes"]
  kept: Dict[int, Dict[int, int]] = {}
  selected, visited = [], set()
  for shard, index in _read_order(params):
    visited.add(shard)
    if shard not in kept:
      if not fmt.shard_done(out_dir, shard, n):
        return None, visited
      info = fmt.read_json(os.path.join(out_dir, fmt.shard_dirname(shard, n), fmt.EPISODES))
      kept[shard] = {int(i): pos for pos, i in enumerate(info.get("input_index", []))}
    if index in kept[shard]:
      selected.append((shard, kept[shard][index]))
      if limit and len(selected) >= limit:
        break
  return selected, visited


def finalize(out_dir: str) -> bool:
  """Write dataset.json when the needed shards are complete; True when the dataset is ready.

  dataset.json lists the output shards holding selected episodes and `episode_order`: the
  selected episodes as [position in `shards`, episode index in that shard], in `tfds.load`
  order (the order the reference's buffer holds them in)."""
  params = fmt.read_json(os.path.join(out_dir, fmt.CONVERSION_JSON))
  n = params["num_input_shards"]
  selected, _ = select_episodes(out_dir, params)
  if selected is None:
    return False
  needed = sorted({shard for shard, _ in selected})
  position = {shard: p for p, shard in enumerate(needed)}
  shards, action_dim, low_dim_dim = [], 0, 0
  for k in needed:
    name = fmt.shard_dirname(k, n)
    info = fmt.read_json(os.path.join(out_dir, name, fmt.EPISODES))
    shards.append({"name": name, "num_episodes": info["num_episodes"],
                   "num_steps": info["num_steps"]})
    for npy, attr in ((fmt.ACTIONS, "a"), (fmt.LOW_DIM, "l")):
      path = os.path.join(out_dir, name, npy)
      if os.path.exists(path):
        width = int(np.load(path, mmap_mode="r").shape[1])
        if attr == "a":
          action_dim = width
        else:
          low_dim_dim = width
  order = [[position[shard], local] for shard, local in selected]
  steps = 0
  lengths = {k: fmt.read_json(os.path.join(out_dir, fmt.shard_dirname(k, n), fmt.EPISODES))[
      "length"] for k in needed}
  for shard, local in selected:
    steps += int(lengths[shard][local])
  fmt.write_json_atomic(os.path.join(out_dir, fmt.DATASET_JSON), {
      "format": fmt.FORMAT, "conversion": params, "camera_keys": params["camera_keys"],
      "image_shapes": params["image_shapes"], "action_dim": action_dim,
      "low_dim_dim": low_dim_dim, "action_free": params["action_free"], "shards": shards,
      "episode_order": order, "num_episodes": len(order), "num_steps": steps,
      "max_episodes": params["max_episodes"]})
  return True


# Shard summary counts of skipped episodes, in the order the summary line names them (a
# conversion may record its own list as conversion.json's `skipped_counts`); a shard may list
# the names of some skipped inputs under SKIPPED_EXAMPLES.
DEFAULT_SKIPPED = ("skipped_filter", "skipped_empty")
SKIPPED_LABELS = {"skipped_filter": "filters", "skipped_empty": "empty",
                  "skipped_size": "size", "skipped_unreadable": "unreadable"}
SKIPPED_EXAMPLES = "skipped_examples"


def conversion_summary(out_dir: str) -> str:
  """One line over the finished shards: episodes read, kept, skipped (why, with a few
  names where the shards give them), steps written, and what dataset.json selected."""
  params = fmt.read_json(os.path.join(out_dir, fmt.CONVERSION_JSON))
  n = params["num_input_shards"]
  total = {"shards": 0, "num_read": 0, "num_episodes": 0, "num_steps": 0,
           **{key: 0 for key in params.get("skipped_counts", DEFAULT_SKIPPED)}}
  examples = []
  for k in range(n):
    if fmt.shard_done(out_dir, k, n):
      info = fmt.read_json(os.path.join(out_dir, fmt.shard_dirname(k, n), fmt.EPISODES))
      total["shards"] += 1
      examples += info.get(SKIPPED_EXAMPLES, [])
      for key in total:
        if key != "shards":
          total[key] += int(info.get(key, 0))
  skipped = " + ".join(f"{total[key]} ({SKIPPED_LABELS.get(key, key)})"
                       for key in total if key.startswith("skipped_"))
  line = (f"{out_dir}: {total['shards']} of {n} input shards converted; episodes read "
          f"{total['num_read']}, kept {total['num_episodes']}, skipped {skipped}"
          + (f" (e.g. {', '.join(examples[:5])})" if examples else "")
          + f"; steps written {total['num_steps']}")
  meta_path = os.path.join(out_dir, fmt.DATASET_JSON)
  if os.path.exists(meta_path):
    meta = fmt.read_json(meta_path)
    line += (f"; dataset.json: {meta['num_episodes']} episodes, {meta['num_steps']} steps"
             + (f" (max_episodes {meta['max_episodes']}, tfds.load order)"
                if meta.get("max_episodes") else ""))
  else:
    line += "; dataset.json not written yet (other processes or hosts are still converting)"
  return line + "."


# ------------------------------------------------------------------------- worker processes
def die_with_parent(parent_pid: int) -> None:
  """Make this (worker) process end when its parent does, even on SIGKILL of the parent:
  Linux's PR_SET_PDEATHSIG, elsewhere a thread polling the parent's PID."""
  if sys.platform.startswith("linux"):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
  else:
    def poll():
      while os.getppid() == parent_pid:
        time.sleep(1.0)
      os._exit(1)  # pylint: disable=protected-access
    threading.Thread(target=poll, name="parent_watch", daemon=True).start()
  if os.getppid() != parent_pid:  # the parent was gone before the above took effect
    os._exit(1)  # pylint: disable=protected-access


def _init_worker(parent_pid: int, level: int, libraries_hidden: bool) -> None:
  die_with_parent(parent_pid)
  # Spawned workers start without the parent's logging setup: without this their per-shard
  # lines are dropped. They write to the parent's stderr, showing what the parent shows.
  logging.basicConfig(level=level, format="%(levelname)s [worker %(process)d] %(message)s")
  cli_logging.show_libraries(not libraries_hidden)


def run_in_workers(fn, jobs: Sequence) -> list:
  """[fn(job) for job in jobs] in one spawned process per job; the workers log to stderr as
  this process does and stop with it (also when it is killed)."""
  context = multiprocessing.get_context("spawn")
  level = logging.getLogger().getEffectiveLevel()
  with context.Pool(len(jobs), initializer=_init_worker,
                    initargs=(os.getpid(), level, cli_logging.libraries_hidden())) as pool:
    return pool.map(fn, jobs)


def convert_in_processes(worker, args) -> None:
  """Run `worker((args, index, count))` for this host's `args.num_processes` local processes
  (spawned when more than one) of `args.process_count` hosts, each converting its share of
  the input shards and returning True when the dataset is ready; write dataset.json when one
  of them could not yet (the shards it waited for were finished by the others), then print
  the summary line."""
  local = max(1, args.num_processes)
  count = args.process_count * local
  jobs = [(args, args.process_index * local + i, count) for i in range(local)]
  if local == 1:
    results = [worker(jobs[0])]
  else:
    results = run_in_workers(worker, jobs)
  if not any(results):
    finalize(args.out)
  print(conversion_summary(args.out))


def parsed_flags(argv: Sequence[str], names: Sequence[str]) -> types.SimpleNamespace:
  """A converter's flags `names` as attributes; a positional argument is a usage error."""
  if len(argv) != 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}.")
  return types.SimpleNamespace(**{name: flags.FLAGS[name].value for name in names})


def define_process_flags() -> None:
  """--num_processes / --process_index / --process_count (see `convert_in_processes`)."""
  flags.DEFINE_integer("num_processes", 1, "local worker processes.")
  flags.DEFINE_integer("process_index", 0, "this host's index.")
  flags.DEFINE_integer("process_count", 1, "number of hosts.")
