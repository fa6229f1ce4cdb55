r"""Checkpoint save and restore times of a config's train state in several folders (local, gs://).

  python -m benchmarks.checkpoint_io --config=configs/tiny.py \
      --dirs=/tmp/ckpt_bench,gs://my-bucket/ckpt_bench --rounds=5

For an emulator, set STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT (docs/training.md,
"Checkpoints on a bucket"). Each round saves one step in every folder in turn (synchronously:
every item, then its checksums.json; the previous step is deleted, keep_last=1) and restores
it (checksums verified, then every item read back onto the mesh). Prints one line per folder
with the median seconds of both and the state's size, then one JSON line. The folders are
written into: give fresh ones.
"""

import json
import time

import jax
import numpy as np
from absl import flags

from uwm_jax import cli_config
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.runs import checkpoint as ckpt
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training import sharded_state

_CONFIG = cli_config.define_config_flag("Config whose train state is saved.")
_DIRS = flags.DEFINE_list("dirs", None, "Checkpoint folders to compare (local paths, gs:// URLs).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds, each saving and restoring in every folder.")
flags.mark_flags_as_required(["dirs"])


def _state_bytes(state) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)))


def main(argv):
  del argv
  config = cli_config.config_value(_CONFIG)
  tc = config.train
  model = UnifiedWorldModel(config.model)
  optimizer = optim_lib.make_optimizer(config.optim, config.num_steps)
  mesh = mesh_lib.make_mesh(tc.mesh_shape)
  ema = tc.ema_decay > 0
  abstract = sharded_state.abstract_train_state(model, optimizer, ema)
  shardings = sharded_state.train_state_shardings(abstract, mesh, tc.partition_rules,
                                                  tc.fsdp_min_size, log_decisions=False)
  state = sharded_state.init_train_state(model, optimizer, jax.random.key(0), shardings, ema,
                                         tc.compiler_options)
  times = {d: {"save_s": [], "restore_s": []} for d in _DIRS.value}
  for step in range(1, _ROUNDS.value + 2):  # the first round is not timed
    for directory in _DIRS.value:
      manager = ckpt.make_manager(directory, keep_last=1, async_save=False)
      t0 = time.perf_counter()
      ckpt.save_train_checkpoint(manager, step, state=state,
                                 inference_params=state.inference_params, dataset_stats={},
                                 config=config, data_iter_state=None, force=True)
      ckpt.wait_for_checksums(manager)
      t1 = time.perf_counter()
      restored = ckpt.restore_train_checkpoint(manager, abstract, shardings, step)
      jax.block_until_ready(restored[1])
      t2 = time.perf_counter()
      manager.close()
      if step > 1:
        times[directory]["save_s"].append(t1 - t0)
        times[directory]["restore_s"].append(t2 - t1)
  size = _state_bytes(state)
  out = {"state_mb": size / 2**20, "rounds": _ROUNDS.value, "devices": jax.device_count(),
         "folders": {}}
  for directory, t in times.items():
    save, restore = float(np.median(t["save_s"])), float(np.median(t["restore_s"]))
    out["folders"][directory] = {"save_s": save, "restore_s": restore}
    print(f"{directory}: save {save:.2f} s, restore {restore:.2f} s "
          f"({size / 2**20:.1f} MiB train state, median of {_ROUNDS.value})")
  print(json.dumps(out))


if __name__ == "__main__":
  cli_config.run(main)
