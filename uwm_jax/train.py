"""Train UWM: `python -m uwm_jax.train --config=configs/droid.py --workdir=DIR`.

  --config=FILE[:variant]       an ml_collections config file; override any field with
                                --config.FIELD=VALUE (e.g. --config.train.mesh_shape='(-1,4,1)')
  --workdir=DIR                 checkpoints, metrics.jsonl, tensorboard/; rerunning the same
                                command resumes from the latest complete checkpoint
                                (default: workdirs/<config file stem>[_<variant>])
  --coordinator_address, --num_processes, --process_id
                                multi-process start-up when the cluster is not detected
                                (Cloud TPU pods and SLURM are)

Finetuning: add --config.init_from=PRETRAIN_WORKDIR/checkpoints.

Bad input (a missing config file, an unknown --config. field, a mesh that does not fit, a
missing dataset or init_from, a workdir that is a file or held by another run) ends in one
`error:` line and exit status 2, before anything expensive; --traceback shows the traceback.
"""

import logging
import os

from absl import flags
from ml_collections import config_flags

from uwm_jax import cli_errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory (checkpoints, metrics); "
                                "default workdirs/<config file stem>[_<variant>].")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "host:port of process 0 for jax.distributed.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index.")
flags.mark_flags_as_required(["config"])


def default_workdir(config_arg: str) -> str:
  """workdirs/<config file stem>[_<variant>] for --config=configs/<stem>.py[:<variant>]."""
  path, _, variant = config_arg.partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", stem + (f"_{variant}" if variant else ""))


def main(argv):
  del argv
  config = cli_errors.config_value(_CONFIG)  # a bad config file or field fails first
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter
  # jax.distributed must start before anything touches a device (some modules create arrays
  # at import time), so the training modules are imported only afterwards.
  from uwm_jax.training import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                     _PROCESS_ID.value)
  from uwm_jax.training import loop  # pylint: disable=import-outside-toplevel
  workdir = _WORKDIR.value or default_workdir(config_flags.get_config_filename(
      flags.FLAGS["config"]))
  # The embedded task's demonstrations are generated on first use (config.eval.demo_episodes).
  from uwm_jax.evaluation import hooks  # pylint: disable=import-outside-toplevel
  hooks.before_training(config)
  loop.train(config, workdir)
  hooks.after_training(config, workdir)  # config.eval.after_training: rollouts + summary


if __name__ == "__main__":
  cli_errors.run(main)
