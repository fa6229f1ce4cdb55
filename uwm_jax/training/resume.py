"""Where a training run starts: resumed from its workdir, or fresh (finetuning from `init_from`).

  build_state(...)      the newest usable checkpoint of `<workdir>/checkpoints` restored into
                        the mesh's shardings (`checkpoint.restore_train_checkpoint`: a corrupt
                        step is skipped and set aside), else a state initialised directly
                        sharded, with `init_from`'s params (checked against the model before
                        anything is compiled, read once)
  make_run_loader(...)  the training loader, normalising with the statistics the run already
                        has (resumed, or kept from the pretraining run), written to
                        `<workdir>/dataset_stats.json` for it
"""

import json
import logging
import os
from typing import Optional, Tuple

import jax
import ml_collections
from jax.experimental import multihost_utils

from uwm_jax.data import loader as loader_lib
from uwm_jax.data import sources as sources_lib
from uwm_jax.runs import checkpoint as ckpt_lib
from uwm_jax.runs import storage
from uwm_jax.training import sharded_state

log = logging.getLogger(__name__)

STATS_FILENAME = "dataset_stats.json"


def _init_from(config) -> Tuple[str, Optional[int]]:
  """(checkpoints folder, step or None) of `config.init_from`, a `checkpoints` folder or a
  step folder inside one; `config.init_from_step` (>= 0) names the step instead."""
  directory, step = ckpt_lib.split_step_folder(config.init_from)
  return directory, (config.init_from_step if config.init_from_step >= 0 else step)


def build_state(config, model, optimizer, mesh, manager):
  """(start_step, state, state_shardings, dataset_stats or None, data_iter item or None):
  resumed from `manager`'s checkpoints, else initialised (see the module docstring)."""
  tc = config.train
  ema = tc.ema_decay > 0
  abstract = sharded_state.abstract_train_state(model, optimizer, ema)
  shardings = sharded_state.train_state_shardings(abstract, mesh, tc.partition_rules,
                                                  tc.fsdp_min_size)
  restored = ckpt_lib.restore_train_checkpoint(manager, abstract, shardings)
  if restored is not None:
    step, state, stats, data_iter = restored
    log.info("Resumed from %s at step %d.", manager.directory, step)
    return step, state, shardings, stats or None, data_iter
  abstract_params = {"params": abstract.params, "frozen": abstract.frozen}
  init_from = None
  if config.init_from:  # a checkpoint of another architecture fails before any compilation
    directory, step = _init_from(config)
    init_from = directory, ckpt_lib.check_init_params(directory, abstract_params, step)
  state = sharded_state.init_train_state(model, optimizer, jax.random.key(config.seed),
                                         shardings, ema, tc.compiler_options)
  stats = None
  if init_from is not None:
    loaded, init_stats = ckpt_lib.load_init_params(
        *init_from, abstract_params, {"params": shardings.params, "frozen": shardings.frozen})
    state = state.replace(params=loaded["params"], frozen=loaded["frozen"])
    if ema:
      state = state.replace(ema_params=jax.tree.map(lambda x: x.copy(), loaded["params"]))
    log.info("Initialised params from %s (step %d).", *init_from)
    if not tc.recompute_dataset_stats:
      stats = init_stats or None
      log.info("Keeping the pretraining run's normalisation statistics "
               "(train.recompute_dataset_stats=False).")
  elif config.model.codec == "sdxl_vae":
    log.warning("Training from scratch with a randomly initialised SDXL VAE: set "
                "init_from to a checkpoint holding the imported VAE (and ImageNet "
                "ResNet-18) weights for a real run.")
  return 0, state, shardings, stats, None


def _write_stats(workdir: str, stats: dict) -> str:
  """The statistics the loader must use, as a JSON file in the workdir, written atomically
  (`storage.write_atomic`). On a filesystem every process writes the same content; on a bucket
  process 0 uploads it and the others wait for it (all processes call this): GCS takes about
  one update per second of an object, not one per host at once."""
  path = os.path.join(workdir, STATS_FILENAME)
  on_bucket = storage.is_url(workdir)
  if not on_bucket or jax.process_index() == 0:
    storage.write_atomic(path, json.dumps(stats))
  if on_bucket and jax.process_count() > 1:
    multihost_utils.sync_global_devices("dataset_stats_written")
  return path


def make_run_loader(config, stats: Optional[dict], workdir: str, frozen=None):
  """(the run's training loader, the config checkpoints save). The loader normalises with
  `stats` when given (resume / finetuning) and otherwise computes them; with
  `data.latent_cache_dir` its batches carry cached next-obs latents, checked against the codec
  params `frozen` (when given). The returned config has the LeRobot sources' mappings filled in
  (`sources.resolved_config`)."""
  loader_config = sources_lib.resolved_config(config)
  if stats:
    loader_config = ml_collections.ConfigDict(loader_config.to_dict())
    loader_config.data.stats_path = _write_stats(workdir, stats)
  return loader_lib.make_train_loader(loader_config, frozen=frozen), loader_config
