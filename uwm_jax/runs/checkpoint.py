"""Orbax checkpoints: `<workdir>/checkpoints/<step>/` with separate items.

  state          the TrainState (step, params, optimizer state, EMA params); its `frozen`
                 codec params are stored once, in `params`, and put back on restore
  params         {"params": inference params (EMA when on), "frozen": codec params}
  dataset_stats  the normalisation statistics (JSON, `uwm_jax.data.normalization`)
  config         the resolved config (JSON)
  data_iter      every process's data-loader state (JSON: {"process_count", "states"})

Saves are asynchronous and atomic, and commit without renaming folders on a bucket. On a
filesystem path Orbax writes a temporary folder (`<step>.orbax-checkpoint-tmp-*`) and renames it
when every process has finished; on a `gs://` URL it writes the step folder in place and
commits it by writing `<step>/commit_success.txt` last (GCS has no folder rename), and a step
folder without that file is not a checkpoint (listing and `cleanup_tmp_directories` skip it).
The last K plus every M-th step are kept, and every process takes part in every save and
restore. The folder may be a local/shared path or a gs:// URL (`uwm_jax.runs.storage`: one GCS
client setup, `STORAGE_EMULATOR_HOST` for an emulator). Each final step folder also holds
`checksums.json` (`uwm_jax.runs.checksums`: size and crc32 of every file, written by process 0
once the step is final), verified before the step is read. Every reader (resume, evaluation and
serving, `init_from`, the last good step named in a training error) finds its step through one
walk, `newest_usable_step`: newest first, a corrupt or unreadable step is skipped with one
warning line. A params-only checkpoint (`save_params_checkpoint`) holds `params`,
`dataset_stats` and `config`: what `uwm_jax.evaluate` and finetuning (`init_from`) read.
"""

import contextlib
import functools
import json
import logging
import os
import threading
import time
from typing import (Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple)

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import type_handlers

from uwm_jax.tree_paths import path_name

from uwm_jax.runs import checksums
from uwm_jax.runs import storage

log = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoints"
STATE, PARAMS, DATASET_STATS, CONFIG, DATA_ITER = (
    "state", "params", "dataset_stats", "config", "data_iter")
CORRUPT_DIRNAME = "corrupt_checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.fspath(workdir), CHECKPOINT_DIRNAME)


# ------------------------------------------------------------------------------------ config
def config_to_json(config: ml_collections.ConfigDict) -> dict:
  """A ConfigDict -> a JSON-able dict (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def _lists_to_tuples(x):
  if isinstance(x, dict):
    return {k: _lists_to_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_lists_to_tuples(v) for v in x)
  return x


def config_from_json(d: dict) -> ml_collections.ConfigDict:
  """The inverse of `config_to_json` (lists become tuples, as config fields are written)."""
  return ml_collections.ConfigDict(_lists_to_tuples(d))


# ------------------------------------------------------------------------------------ manager
# Replicated arrays are written cooperatively by their replicas ("replica parallel"), but only
# when each replica's slice is at least this big: slicing many small arrays costs more (one
# device op per slice) than it saves.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 4 * 2**20


def _pytree_handler() -> ocp.PyTreeCheckpointHandler:
  registry = type_handlers.create_type_handler_registry(
      (int, type_handlers.ScalarHandler()),
      (float, type_handlers.ScalarHandler()),
      (np.number, type_handlers.ScalarHandler()),
      (np.ndarray, type_handlers.NumpyHandler()),
      (jax.Array, type_handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)),
  )
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _save(tree) -> ocp.args.PyTreeSave:
  return ocp.args.PyTreeSave(tree)


def _restore(abstract_tree) -> ocp.args.PyTreeRestore:
  """Restore into the shardings (and dtypes) of `abstract_tree`'s ShapeDtypeStructs."""
  return ocp.args.PyTreeRestore(
      item=abstract_tree,
      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree))


class _Manager(ocp.CheckpointManager):
  """A CheckpointManager that writes each step's checksum manifest once the step is final.

  Orbax finalises an asynchronous save in a background thread (every host's data is written,
  then process 0 renames the temporary folder); `wait_until_finished` (called by every save,
  by `close` and by the training loop) returns after that, so the steps saved since are final
  there. Process 0 then checksums them in a background thread (reading a large state costs
  seconds), which the next `wait_until_finished` and `close` join.

  Preemption: jax's sync manager takes the step of every `reached_preemption` call as the
  process's progress, and on SIGTERM sets the sync point one past the last step it saw. Orbax
  0.12 also calls `reached_preemption(saved_step)` from its finalize thread (to time a
  metric); when that call lands after the loop's newer steps and just before a SIGTERM, the sync
  point falls behind the loop, is never reached, and the job trains on until it is killed
  (seen once in the tests, under load). Here only the thread that made the manager (the
  training loop's) reports steps; other threads get False.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._unrecorded: List[int] = []
    self._recorder: Optional[threading.Thread] = None
    self._record = jax.process_index() == 0 and not self._options.read_only
    self._loop_thread = threading.get_ident()

  def reached_preemption(self, step: int) -> bool:
    if threading.get_ident() != self._loop_thread:  # Orbax's finalize thread: not progress
      return False
    return super().reached_preemption(step)

  def save(self, step, *args, **kwargs):
    started = super().save(step, *args, **kwargs)
    if started and self._record:
      self._unrecorded.append(int(step))
    return started

  def _join_recorder(self):
    if self._recorder is not None:
      self._recorder.join()
      self._recorder = None

  def wait_until_finished(self):
    self._join_recorder()
    super().wait_until_finished()
    steps, self._unrecorded = self._unrecorded, []
    if steps:
      self._recorder = threading.Thread(target=self._write_manifests, args=(steps,),
                                        name="checkpoint_checksums", daemon=True)
      self._recorder.start()

  def _write_manifests(self, steps: List[int]):
    for step in steps:
      folder = epath.Path(self.directory) / str(step)
      try:
        if folder.exists():  # not deleted by the preservation policy meanwhile
          checksums.write_manifest(folder)
      except Exception as e:  # pylint: disable=broad-except
        log.warning("Could not write the checksums of checkpoint %s (%s: %s); it will be "
                    "restored unverified.", folder, type(e).__name__, e)

  def close(self):
    super().close()
    self._join_recorder()


def wait_for_checksums(manager: ocp.CheckpointManager) -> None:
  """Wait until every started save is final and its checksums are written."""
  manager.wait_until_finished()
  if isinstance(manager, _Manager):
    manager._join_recorder()  # pylint: disable=protected-access


def make_manager(directory: str, *, keep_last: Optional[int] = None, keep_every: int = 0,
                 save_every: int = 1, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` (the `checkpoints` folder) with our item names.

  keep_last: keep the K most recent steps (None = all); keep_every: also keep every step that
  is a multiple of M (0 = none); save_every: `manager.should_save(step)` is True every N steps.
  """
  policies = [ocp.checkpoint_managers.LatestN(n=keep_last)]
  if keep_every:
    policies.append(ocp.checkpoint_managers.EveryNSteps(keep_every))
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=0 if read_only else max(1, int(save_every)),
      preservation_policy=(None if read_only else
                           ocp.checkpoint_managers.AnyPreservationPolicy(policies)),
      enable_async_checkpointing=async_save,
      read_only=read_only,
      create=not read_only,
      cleanup_tmp_directories=not read_only,  # partial saves of a killed run
  )
  handlers = {STATE: _pytree_handler(), PARAMS: _pytree_handler()}
  handlers.update({k: ocp.JsonCheckpointHandler() for k in (DATASET_STATS, CONFIG, DATA_ITER)})
  storage.require_gcs_or_local(directory, "checkpoint folder")
  if not read_only:
    storage.check_bucket(directory)
  # Orbax's array writer rejects relative paths (`--workdir` defaults to workdirs/<config>).
  directory = storage.abspath(directory)
  # A read-only manager (evaluation, init_from) makes Orbax warn "Given directory is read only"
  # on every load: that is the intended mode, not a problem, so the line is dropped.
  with _quiet_loggers(("absl",)) if read_only else contextlib.nullcontext():
    return _Manager(storage.as_path(directory), options=options, item_handlers=handlers)


def finished_steps(directory: str) -> List[int]:
  """The committed steps of a `checkpoints` folder, ascending, from one listing (no manager):
  numeric folders on a filesystem (Orbax writes the others under temporary names); on gs://
  those holding Orbax's commit file."""
  names = [n for n in storage.listdir(directory) if n.isdigit()]
  if storage.is_url(directory):
    names = [n for n in names
             if ocp.utils.is_checkpoint_finalized(storage.as_path(directory) / n)]
  return sorted(int(n) for n in names)


# ------------------------------------------------------------------------------------ data iter
def gather_process_states(local_state: Any) -> List[Any]:
  """Every process's JSON-able loader state, in process order (a collective: all call it)."""
  if jax.process_count() == 1:
    return [local_state]
  raw = np.frombuffer(json.dumps(local_state).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.asarray([raw.size], np.int64))
  padded = np.zeros((int(np.max(lengths)),), np.uint8)
  padded[:raw.size] = raw
  everything = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(everything[i][:int(lengths[i][0])]).decode())
          for i in range(jax.process_count())]


def local_process_state(data_iter: Optional[dict]) -> Any:
  """This process's loader state from a restored `data_iter` item (None when unusable)."""
  if not data_iter:
    return None
  if data_iter.get("process_count") != jax.process_count():
    log.warning("The checkpoint's data-iterator state is from %s processes, this run has %d: "
                "the data stream restarts.", data_iter.get("process_count"), jax.process_count())
    return None
  return data_iter["states"][jax.process_index()]


# ------------------------------------------------------------------------------------ save
def save_train_checkpoint(manager: ocp.CheckpointManager, step: int, *, state, inference_params,
                          dataset_stats: Optional[dict], config: ml_collections.ConfigDict,
                          data_iter_state: Any, force: bool = False) -> bool:
  """Start an asynchronous save of every item at `step` (all processes must call it).

  inference_params: the params evaluation should use (EMA when on). Returns whether a save
  was started (False when the manager's interval says no and `force` is off).
  """
  if not force and not manager.should_save(step):
    return False
  states = gather_process_states(data_iter_state)
  args = ocp.args.Composite(**{
      STATE: _save(state.replace(frozen={})),
      PARAMS: _save({"params": inference_params, "frozen": state.frozen}),
      DATASET_STATS: ocp.args.JsonSave(dataset_stats or {}),
      CONFIG: ocp.args.JsonSave(config_to_json(config)),
      DATA_ITER: ocp.args.JsonSave({"process_count": jax.process_count(), "states": states}),
  })
  return manager.save(step, args=args, force=True)


def save_params_checkpoint(directory: str, *, params, frozen, config, dataset_stats,
                           step: int = 0) -> str:
  """Write a params-only checkpoint (params, frozen, config, dataset_stats) under `directory`
  (a `checkpoints` folder) at `step`, synchronously. Returns the step folder."""
  manager = make_manager(directory, async_save=False)
  manager.save(step, args=ocp.args.Composite(**{
      PARAMS: _save({"params": params, "frozen": frozen}),
      DATASET_STATS: ocp.args.JsonSave(dataset_stats or {}),
      CONFIG: ocp.args.JsonSave(config_to_json(config)),
  }), force=True)
  manager.wait_until_finished()
  manager.close()
  return os.path.join(os.fspath(directory), str(step))


# ------------------------------------------------------------------------------------ locations
def resolve_checkpoints_dir(path: str) -> str:
  """A `checkpoints` folder, or a workdir holding one (local or gs://) -> the `checkpoints`
  folder."""
  path = storage.abspath(path)
  if storage.is_url(path):
    path = path.rstrip("/")
  if not storage.isdir(path):
    raise FileNotFoundError(f"Checkpoint folder {path} does not exist.")
  inner = os.path.join(path, CHECKPOINT_DIRNAME)
  if storage.isdir(inner):
    return inner
  return path


def split_step_folder(path: str) -> Tuple[str, Optional[int]]:
  """A `checkpoints` folder or a step folder inside one (what `init_from` may name) ->
  (the `checkpoints` folder, the step or None)."""
  path = os.fspath(path).rstrip("/")
  if os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  return path, None


def step_dir(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  return epath.Path(manager.directory) / str(step)


@contextlib.contextmanager
def _read_only_manager(directory: str, what: str = "Checkpoint folder"
                       ) -> Iterator[ocp.CheckpointManager]:
  if not storage.isdir(directory):
    raise FileNotFoundError(f"{what} {directory} does not exist.")
  manager = make_manager(directory, read_only=True)
  try:
    yield manager
  finally:
    manager.close()


# ------------------------------------------------------------------------------------ errors
class UnreadableCheckpointError(ValueError):
  """A checkpoint step's files cannot be read back (truncated, missing, wrong format)."""


class NoUsableCheckpointError(RuntimeError):
  """Every checkpoint step of a folder is corrupt or unreadable (one line per step)."""


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the model being built (another architecture or training
  config): a problem of the run, not of one step, so no other step is tried."""


def short_reason(error: BaseException, limit: int = 300) -> str:
  """One line for an exception: its type and the first line of its message, shortened
  (TensorStore errors carry multi-kilobyte JSON specs)."""
  text = (str(error).strip().splitlines() or [""])[0]
  if len(text) > limit:
    text = text[:limit] + " ..."
  if isinstance(error, checksums.CorruptCheckpointError):
    return text
  return f"{type(error).__name__}: {text}"


@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str] = ("absl", "asyncio", "orbax")):
  """Silence Orbax's and asyncio's logging while a step that may be unreadable is restored:
  a failed TensorStore read logs tracebacks (and "Event loop is closed") per array; the caller
  reports the failure in one line instead."""
  loggers = [logging.getLogger(name) for name in names]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


# ------------------------------------------------------------------------------------ usable step
class UsableStep(NamedTuple):
  step: int
  verified: bool  # False: the step has no checksum manifest (saved before manifests existed)
  loaded: Any  # what `load(step)` returned


def _verify(manager: ocp.CheckpointManager, step: int, items: Optional[Sequence[str]]) -> bool:
  """Check the files of `items` (None: every file) against the step's checksums
  (`uwm_jax.runs.checksums`); False when it has no manifest, CorruptCheckpointError on a
  mismatch."""
  folder = step_dir(manager, step)
  try:
    return checksums.verify(folder, items)
  except checksums.CorruptCheckpointError as e:
    raise checksums.CorruptCheckpointError(f"Checkpoint {folder} is corrupt: {e}.") from None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Move an unreadable step folder out of the checkpoints folder (process 0), so later saves
  of that step do not collide with it."""
  if jax.process_index() == 0:
    src = os.path.join(os.fspath(manager.directory), str(step))
    dst_dir = os.path.join(os.path.dirname(os.fspath(manager.directory)), CORRUPT_DIRNAME)
    storage.makedirs(dst_dir)
    dst = os.path.join(dst_dir, f"{step}-{int(time.time())}")
    if storage.exists(src):
      storage.move(src, dst)
      log.warning("Moved the unreadable checkpoint %s to %s.", src, dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"set_aside_checkpoint_{step}")
  manager.reload()


def newest_usable_step(manager: ocp.CheckpointManager, items: Optional[Sequence[str]],
                       load: Optional[Callable[[int], Any]] = None, *,
                       step: Optional[int] = None, up_to: Optional[int] = None,
                       set_aside: bool = False, verb: str = "loaded",
                       report: bool = True) -> Optional[UsableStep]:
  """The one walk over a `checkpoints` folder: the newest step that verifies and loads.

  Candidates, newest first: every committed step (those <= `up_to` when given), or only
  `step` (FileNotFoundError naming the folder's steps when it has none). Each has the files of
  `items` checked against its checksums (None: every file), then `load(step)` reads it. A
  candidate that fails (corrupt, unreadable, missing files: any error but
  CheckpointMismatchError) is one warning line and the previous step is tried, except a given
  `step`, whose own error is raised (it says precisely what is wrong). With `set_aside` the
  failed steps are moved to `corrupt_checkpoints/` once an older one loads, so later saves of
  those steps do not collide with them. `verb` names what `load` does in the log lines;
  `report=False` logs nothing.

  Returns UsableStep(step, verified, what load returned), None when the folder holds no
  (matching) step; raises NoUsableCheckpointError, one line per step, when none loads.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(f"No checkpoint step {step} in {manager.directory}; it has "
                              f"{sorted(steps)}.")
    steps = [step]
  elif up_to is not None:
    steps = [s for s in steps if s <= up_to]
  failed, lines = [], []
  for candidate in steps:
    try:
      verified = _verify(manager, candidate, items)
      loaded = load(candidate) if load is not None else None
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if step is not None:
        raise
      reason = short_reason(e)
      failed.append(candidate)
      lines.append(f"  {step_dir(manager, candidate)}: {reason}")
      if report:
        log.warning("Checkpoint step %d cannot be %s (%s); falling back to the previous one.",
                    candidate, verb, reason)
      continue
    if not verified and report:
      log.info("Checkpoint %s has no %s (saved by an older version, or the run stopped before "
               "process 0 wrote it): %s without verification.",
               step_dir(manager, candidate), checksums.MANIFEST_FILENAME, verb)
    if set_aside:
      for bad in failed:
        _set_aside(manager, bad)
    return UsableStep(candidate, verified, loaded)
  if not steps:
    return None
  hint = " (move the folder away to start afresh)" if set_aside else ""
  raise NoUsableCheckpointError(f"No checkpoint in {manager.directory} can be {verb}{hint}:\n"
                                + "\n".join(lines))


def last_good_step(manager: ocp.CheckpointManager) -> Optional[UsableStep]:
  """Where training can resume from after a failure: the newest step whose every file matches
  its checksums (every saved step's params were checked finite before the save), once the
  started saves are final; None when there is none. Logs nothing."""
  wait_for_checksums(manager)
  try:
    return newest_usable_step(manager, None, report=False)
  except NoUsableCheckpointError:
    return None


# ------------------------------------------------------------------------------------ restore
def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_tree, shardings)


def _missing_item_files(folder: epath.Path, item: str) -> str:
  """What is missing of an item Orbax cannot describe (its folder, or its `_METADATA`)."""
  if not (folder / item).exists():
    return f"its {item!r} folder is missing"
  if not (folder / item / "_METADATA").exists():
    return f"its {item}/_METADATA file is missing (the item's tree structure)"
  return f"its {item!r} item has no readable metadata"


def _metadata_tree(manager: ocp.CheckpointManager, step: int, item: str):
  md = manager.item_metadata(step)[item]
  if md is None:
    folder = step_dir(manager, step)
    raise FileNotFoundError(f"Checkpoint {folder}: {_missing_item_files(folder, item)}.")
  return getattr(md, "tree", md)


def _on_device(metadata_tree: Any, device) -> Any:
  sharding = jax.sharding.SingleDeviceSharding(device)
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
                      metadata_tree)


def _flat_shapes(tree: Any) -> Dict[str, tuple]:
  return {path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shape_mismatches(expected: Any, found: Any) -> List[str]:
  """Human-readable differences between two trees of arrays/shape structs/metadata."""
  want, have = _flat_shapes(expected), _flat_shapes(found)
  lines = []
  for k in sorted(set(want) | set(have)):
    if k not in have:
      lines.append(f"  {k}: missing in the checkpoint (model expects {want[k]})")
    elif k not in want:
      lines.append(f"  {k}: in the checkpoint {have[k]} but not in the model")
    elif want[k] != have[k]:
      lines.append(f"  {k}: checkpoint {have[k]} vs model {want[k]}")
  return lines


def _load_params(manager: ocp.CheckpointManager, device, step: int
                 ) -> Tuple[Any, Any, ml_collections.ConfigDict, dict]:
  target = _on_device(_metadata_tree(manager, step, PARAMS), device)
  try:
    with _quiet_loggers():
      out = manager.restore(step, args=ocp.args.Composite(**{
          PARAMS: _restore(target),
          CONFIG: ocp.args.JsonRestore(),
          DATASET_STATS: ocp.args.JsonRestore(),
      }))
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableCheckpointError(
        f"Checkpoint {step_dir(manager, step)} cannot be read: {short_reason(e)}") from e
  return (out[PARAMS]["params"], out[PARAMS]["frozen"], config_from_json(out[CONFIG]),
          out[DATASET_STATS])


def load_params_step(directory: str, step: Optional[int] = None, *, device=None
                     ) -> Tuple[int, Any, Any, ml_collections.ConfigDict, dict]:
  """(step, params, frozen, config, dataset_stats) of checkpoint `step`, or of the newest step
  that loads (`newest_usable_step`: a corrupt or unreadable one is skipped with one warning
  line), whole on one device (default: the first local device; no mesh needed). `directory`
  is a `checkpoints` folder. Raises FileNotFoundError (no such folder, step or any step), the
  given step's own error, NoUsableCheckpointError (one line per step) when no step loads."""
  device = device or jax.local_devices()[0]
  with _read_only_manager(directory) as manager:
    found = newest_usable_step(manager, (PARAMS, CONFIG, DATASET_STATS),
                               functools.partial(_load_params, manager, device), step=step)
  if found is None:
    raise FileNotFoundError(f"No checkpoint in {directory}.")
  return (found.step, *found.loaded)


def load_params_checkpoint(directory: str, step: Optional[int] = None, *, device=None
                           ) -> Tuple[Any, Any, ml_collections.ConfigDict, dict]:
  """(params, frozen, config, dataset_stats): `load_params_step` without the step."""
  return load_params_step(directory, step, device=device)[1:]


def check_init_params(directory: str, abstract: Dict[str, Any], step: Optional[int] = None
                      ) -> int:
  """Check that a finetuning checkpoint (`init_from`) exists, verifies and fits the model,
  reading only its metadata (cheap: call it before building anything). `abstract`:
  {"params", "frozen"} of the model being trained. Returns the step to load: `step`, or the
  newest one whose params verify (`newest_usable_step`). Raises FileNotFoundError,
  CorruptCheckpointError, NoUsableCheckpointError, or CheckpointMismatchError listing every
  mismatched, missing or unexpected array."""
  with _read_only_manager(directory, "init_from: checkpoint folder") as manager:
    def fits(candidate: int) -> None:
      problems = shape_mismatches(abstract, _metadata_tree(manager, candidate, PARAMS))
      if problems:
        raise CheckpointMismatchError(
            f"init_from={directory} (step {candidate}) does not fit this model config (another "
            f"architecture?); {len(problems)} arrays differ:\n" + "\n".join(problems))

    found = newest_usable_step(manager, (PARAMS, DATASET_STATS), fits, step=step)
  if found is None:
    raise FileNotFoundError(f"No checkpoint in {directory}.")
  return found.step


def load_init_params(directory: str, step: int, abstract: Dict[str, Any],
                     shardings: Dict[str, Any]) -> Tuple[Dict[str, Any], dict]:
  """The params of finetuning checkpoint `step`, as `check_init_params` returned it (verified,
  fitting), restored straight into `shardings`. abstract/shardings: {"params": ...,
  "frozen": ...} trees of the model being trained. Returns ({"params", "frozen"}, the
  checkpoint's dataset_stats)."""
  with _read_only_manager(directory, "init_from: checkpoint folder") as manager:
    out = manager.restore(step, args=ocp.args.Composite(**{
        PARAMS: _restore(abstract_with_shardings(abstract, shardings)),
        DATASET_STATS: ocp.args.JsonRestore(),
    }))
  return out[PARAMS], out[DATASET_STATS]


def restore_train_checkpoint(manager: ocp.CheckpointManager, abstract_state: Any,
                             state_shardings: Any, step: Optional[int] = None):
  """Restore the newest complete checkpoint (the newest up to `step` when given) into
  `state_shardings` (any mesh).

  A step whose files do not match its checksums, or that cannot be read (partial, truncated,
  missing files), is corrupt: one warning line, the previous one is tried, and the step is set
  aside (`corrupt_checkpoints/`) once one restores (`newest_usable_step`). Returns (step, state,
  dataset_stats, data_iter item), None when the folder holds no checkpoint; raises
  NoUsableCheckpointError (one line per step) when none can be restored,
  CheckpointMismatchError when a step was written by another model config.
  """
  target = abstract_with_shardings(abstract_state, state_shardings)
  saved_state = target.replace(frozen={})

  def restore(candidate: int):
    problems = shape_mismatches(saved_state, _metadata_tree(manager, candidate, STATE))
    if problems:
      raise CheckpointMismatchError(
          f"Checkpoint step {candidate} in {manager.directory} was written by a different model "
          f"or training config ({len(problems)} arrays differ); use a new workdir or the "
          "matching config:\n" + "\n".join(problems))
    with _quiet_loggers():
      return manager.restore(candidate, args=ocp.args.Composite(**{
          STATE: _restore(saved_state),
          PARAMS: _restore({"params": target.params, "frozen": target.frozen}),
          DATASET_STATS: ocp.args.JsonRestore(),
          DATA_ITER: ocp.args.JsonRestore(),
      }))

  found = newest_usable_step(manager, (STATE, PARAMS, DATASET_STATS, DATA_ITER), restore,
                             up_to=step, set_aside=True, verb="restored")
  if found is None:
    return None
  out = found.loaded
  state = out[STATE].replace(frozen=out[PARAMS]["frozen"])
  return found.step, state, out[DATASET_STATS], out[DATA_ITER]
