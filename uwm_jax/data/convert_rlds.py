"""Convert an RLDS/TFDS dataset into the array_record training format, shard by shard.

  # DROID as published (tfrecord), the reference's robot split: 2000 episodes from "WEIRD".
  python -m uwm_jax.data.convert_rlds droid --data_dir=/data/tfds --builder=droid \\
      --out=/data/uwm/droid_weird --include=WEIRD --max_episodes=2000 --num_processes=8
  # ... and its action-free video split.
  python -m uwm_jax.data.convert_rlds droid --data_dir=/data/tfds --builder=droid \\
      --out=/data/uwm/droid_video --exclude=WEIRD --max_episodes=2000 --action_free
  # Any RLDS dataset (e.g. LIBERO written by `python -m uwm_jax.data.libero`).
  python -m uwm_jax.data.convert_rlds rlds --data_dir=/data/tfds --builder=libero_90 \\
      --out=/data/uwm/libero_90 --camera_keys=agentview_rgb,eye_in_hand_rgb --action_key=action

Each input file (tfds shard) becomes one output shard, written to a temporary folder
(`<shard>.tmp-<PID>`) and renamed when complete. Work is split by input shard over
`--num_processes` local processes (spawned; they log to stderr and stop when the parent dies,
even on SIGKILL) and over hosts (`--process_index/--process_count`, each host running the same
command); a rerun skips finished shards and deletes the temporary folders of killed writers.
Episodes are taken in the order `tfds.load(split=...)` yields them (files interleaved 16 at a
time, docs/data.md "Episode order"); the filters (`uwm_jax.data.filters`) and
`--max_episodes` (the first N matches in that order, as the reference) are applied here and
recorded, and `dataset.json` is written by whichever process finds the needed shards
complete. A truncated or corrupt input file is named (file and shard index) in the error. The
last line summarises episodes read, kept, skipped (and why) and steps written.
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
from absl import app, flags

from uwm_jax import cli_config, cli_logging
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import filters as filters_lib
from uwm_jax.data import profiles as profiles_lib
from uwm_jax.data import rlds_read


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _episode_id(meta: dict, dataset: str, shard: int, index: int) -> str:
  ident = meta.get("file_path") or meta.get("recording_folderpath") or ""
  return f"dataset {dataset!r}, episode {index} of input shard {shard}" + (
      f" ({ident})" if ident else "")


def _encoded_frames(value, image_format: str) -> list:
  """Stored frames of one camera -> list of encoded bytes (raw uint8 arrays get encoded)."""
  arr = np.asarray(value)
  if arr.dtype == np.uint8 and arr.ndim == 4:
    return [fmt.encode_image(im, image_format) for im in arr]
  return [bytes(b) for b in arr]


def _checked(ep: dict, path: str, ident: str) -> np.ndarray:
  value = np.asarray(rlds_read.get_path(ep, path))
  if value.dtype.kind == "f" and not np.isfinite(value).all():
    step = int(np.argwhere(~np.isfinite(value))[0][0])
    raise ValueError(f"{ident}: field {path!r} holds NaN/inf (first at step {step}).")
  return value


def input_file(builder, split: str, shard: int) -> str:
  """The file name of input shard `shard` (for error messages)."""
  try:
    return os.fspath(builder.info.splits[split].filepaths[shard])
  except Exception:  # pylint: disable=broad-except
    return f"{builder.data_dir} ({split} shard {shard})"


def _episodes_of_input_file(builder, split: str, shard: int, num_shards: int, dataset: str):
  """The episodes of one input file; a read error (truncated or corrupt file: TensorFlow's
  DataLossError, ...) names the file and shard instead of TensorFlow's bare message."""
  it = iter(rlds_read.iter_shard_episodes(builder, split, shard))
  while True:
    try:
      ep = next(it)
    except StopIteration:
      return
    except Exception as e:  # pylint: disable=broad-except
      first = (str(e).strip().splitlines() or [""])[0][:300]
      raise ValueError(f"Dataset {dataset!r}: input shard {shard} of {num_shards} "
                       f"({input_file(builder, split, shard)}) is unreadable (truncated or "
                       f"corrupt?): {type(e).__name__}: {first}") from None
    yield ep


def convert_shard(builder, split: str, shard: int, num_shards: int, out_dir: str,
                  profile: profiles_lib.RldsProfile, filt: filters_lib.EpisodeFilter,
                  dataset: str, image_format: str = "png") -> dict:
  """Convert input file `shard`; returns its summary: episodes written (`num_episodes`) and
  steps, and `num_read`, `skipped_filter`, `skipped_empty`."""
  writer = fmt.ShardWriter(out_dir, shard, num_shards, profile.camera_keys)
  counts = {"num_read": 0, "skipped_filter": 0, "skipped_empty": 0}
  try:
    for i, ep in enumerate(_episodes_of_input_file(builder, split, shard, num_shards, dataset)):
      counts["num_read"] += 1
      meta = profile.metadata(ep)
      if not filt.matches(meta):
        counts["skipped_filter"] += 1
        continue
      ident = _episode_id(meta, dataset, shard, i)
      obs = ep["steps"]["observation"]
      images = {k: _encoded_frames(obs[k], image_format) for k in profile.camera_keys}
      if not len(images[profile.camera_keys[0]]):
        logging.info("%s: empty episode skipped.", ident)
        counts["skipped_empty"] += 1
        continue
      actions = low_dim = None
      if not profile.action_free:
        actions = profile.action_fn(*(_checked(ep, p, ident) for p in profile.action_fields))
      if profile.low_dim_fields:
        low_dim = profiles_lib.concat_fields(*(_checked(ep, p, ident)
                                               for p in profile.low_dim_fields))
      writer.add_episode(images, actions, low_dim, meta, input_index=i)
    summary = writer.close(**counts)
  except BaseException:
    writer.abort()
    raise
  return summary


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


def _shard_needed(out_dir: str, params: dict, shard: int) -> bool:
  """False once the finished shards already hold every selected episode and `shard` is not
  among those the selection visits."""
  if not params["max_episodes"]:
    return True
  selected, visited = select_episodes(out_dir, params)
  return selected is None or shard in visited


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


def _conversion_params(builder, builder_path: str, split: str, profile, filt,
                       max_episodes: int, dataset: str) -> dict:
  paths = rlds_read.check_schema(builder, profile.required_keys(), dataset)
  shapes = {}
  for k in profile.camera_keys:
    shape = getattr(paths[f"steps/observation/{k}"], "shape", None)
    shapes[k] = [int(s) for s in shape[:2]] if shape is not None else None
  return {"dataset": dataset, "builder_dir": os.path.abspath(builder_path), "split": split,
          "num_input_shards": rlds_read.num_input_shards(builder, split),
          "shard_lengths": rlds_read.shard_lengths(builder, split),
          "disable_shuffling": bool(getattr(builder.info, "disable_shuffling", False)),
          **profile.describe(), "action_free": profile.action_free,
          "include": list(filt.include), "exclude": list(filt.exclude),
          "success_only": filt.success_only, "max_episodes": int(max_episodes),
          "image_shapes": shapes}


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


def convert_rlds(builder_path: str, out_dir: str, profile: profiles_lib.RldsProfile, *,
                 split: str = "train", episode_filter: filters_lib.EpisodeFilter = (
                     filters_lib.EpisodeFilter()), max_episodes: int = 0,
                 process_index: int = 0, process_count: int = 1, dataset: str = "",
                 image_format: str = "png", progress: bool = True) -> bool:
  """Convert this process's share of input shards; True when the whole dataset is ready."""
  dataset = dataset or os.path.basename(os.path.dirname(os.path.normpath(builder_path)))
  builder = rlds_read.open_builder(builder_path)
  params = _conversion_params(builder, builder_path, split, profile, episode_filter,
                              max_episodes, dataset)
  n = params["num_input_shards"]
  return convert_shards(
      out_dir, params,
      lambda k: convert_shard(builder, split, k, n, out_dir, profile, episode_filter, dataset,
                              image_format),
      # False when the first max_episodes matches lie in other, finished shards.
      needed=lambda k: _shard_needed(out_dir, params, k),
      process_index=process_index, process_count=process_count, progress=progress)


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


def _pid_running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


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
    if int(pid) != os.getpid() and _pid_running(int(pid)):
      continue
    shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)
    removed.append(entry)
  if removed:
    logging.info("Removed %d partial shard folders of killed writers: %s", len(removed),
                 removed[:5])
  return removed


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


def _worker(args_and_index):
  args, index, count = args_and_index
  return _run(args, index, count)


def _profile(args) -> profiles_lib.RldsProfile:
  if args.command == "droid":
    prof = profiles_lib.droid_profile()
    if args.action_free:
      prof = profiles_lib.RldsProfile(name="droid", camera_keys=prof.camera_keys,
                                      low_dim_fields=prof.low_dim_fields,
                                      metadata_fields=prof.metadata_fields)
    return prof
  cams = [k for k in args.camera_keys.split(",") if k]
  if not cams:
    raise ValueError("--camera_keys is required for the rlds command.")
  low = [k for k in args.low_dim_keys.split(",") if k]
  return profiles_lib.rlds_profile(cams, args.action_key, low, args.action_free)


def _run(args, index: int, count: int) -> bool:
  path = args.builder_dir or rlds_read.builder_dir(args.data_dir, args.builder, args.version)
  return convert_rlds(
      path, args.out, _profile(args), split=args.split,
      episode_filter=filters_lib.EpisodeFilter.from_args(args.include, args.exclude,
                                                         args.success_only),
      max_episodes=args.max_episodes, process_index=index, process_count=count,
      dataset=args.builder or "", image_format=args.image_format)


def define_flags() -> None:
  """The command line's flags. Defined only when this module runs as a program: it is also a
  library (demo generation, benchmarks), and flags defined at import would collide with those
  of the entry point importing it."""
  flags.DEFINE_string("data_dir", "", "TFDS data_dir holding the builder.")
  flags.DEFINE_string("builder", "", "builder name, e.g. droid or droid_100.")
  flags.DEFINE_string("version", "", "builder version (default: highest).")
  flags.DEFINE_string("builder_dir", "", "<data_dir>/<builder>/<version> directly.")
  flags.DEFINE_string("split", "train", "TFDS split to convert.")
  flags.DEFINE_string("out", None, "output folder of the converted dataset.", required=True)
  flags.DEFINE_multi_string("include", [], "keep episodes whose recording_folderpath contains "
                            "this (repeatable).")
  flags.DEFINE_multi_string("exclude", [], "drop episodes whose recording_folderpath contains "
                            "this (repeatable).")
  flags.DEFINE_bool("success_only", False, "keep successful episodes only.")
  flags.DEFINE_integer("max_episodes", 0, "first N matches (0 = all).")
  flags.DEFINE_bool("action_free", False, "store no actions (video).")
  flags.DEFINE_string("camera_keys", "", "rlds: comma-separated observation keys.")
  flags.DEFINE_string("action_key", "action", "rlds: steps/<key> holds the action.")
  flags.DEFINE_string("low_dim_keys", "", "rlds: comma-separated observation keys.")
  flags.DEFINE_enum("image_format", "png", ["png", "jpeg"],
                    "encoding for sources that store raw pixels.")
  define_process_flags()


def define_process_flags() -> None:
  """--num_processes / --process_index / --process_count (see `convert_in_processes`)."""
  flags.DEFINE_integer("num_processes", 1, "local worker processes.")
  flags.DEFINE_integer("process_index", 0, "this host's index.")
  flags.DEFINE_integer("process_count", 1, "number of hosts.")


COMMANDS = ("droid", "rlds")


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"give one command, {' | '.join(COMMANDS)} (got {argv[1:]}).")
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if not FLAGS.builder_dir and not (FLAGS.data_dir and FLAGS.builder):
    raise app.UsageError("give --data_dir and --builder, or --builder_dir.")
  logging.basicConfig(level=logging.INFO)
  args = types.SimpleNamespace(command=argv[1], **{
      name: FLAGS[name].value for name in (
          "data_dir", "builder", "version", "builder_dir", "split", "out", "include", "exclude",
          "success_only", "max_episodes", "action_free", "camera_keys", "action_key",
          "low_dim_keys", "image_format", "num_processes", "process_index", "process_count")})
  convert_in_processes(_worker, args)


if __name__ == "__main__":
  define_flags()
  cli_config.run(main)
