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

Around the training loop (`uwm_jax.training.loop.train`) this wires the stages together: the
embedded task's datasets are generated first when the config asks for them
(`config.data.demo_episodes`, `uwm_jax.data.demo_generation`), the loop receives the offline
evaluation as its callback (`uwm_jax.evaluation.offline_metrics.make_validation_evaluate`), and
with `config.eval.after_training` the final checkpoint is evaluated and summarised in one line.
"""

import logging

from absl import flags

from uwm_jax import cli_config

_CONFIG = cli_config.define_config_flag("Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory (checkpoints, metrics); "
                                "default workdirs/<config file stem>[_<variant>].")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "",
                                   "host:port of process 0 for jax.distributed.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter
  # jax.distributed must start before anything touches a device (some modules create arrays
  # at import time), so the pipeline's modules are imported only afterwards.
  from uwm_jax.training import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                     _PROCESS_ID.value)
  # pylint: disable=import-outside-toplevel
  import jax
  from uwm_jax.data import demo_generation
  from uwm_jax.evaluation import evaluator, offline_metrics
  from uwm_jax.runs import checkpoint
  from uwm_jax.training import loop
  # pylint: enable=import-outside-toplevel
  config = _CONFIG.value
  workdir = _WORKDIR.value or cli_config.default_workdir(cli_config.config_arg())
  if jax.process_index() == 0:
    demo_generation.prepare(config)  # the embedded task's datasets, on first use
  loop.train(config, workdir, make_evaluate=offline_metrics.make_validation_evaluate)
  if config.eval.after_training and jax.process_index() == 0:  # rollouts + one summary line
    result = evaluator.evaluate_checkpoint(checkpoint.checkpoint_dir(workdir))
    print(evaluator.summary_line(result, config.eval.env))


if __name__ == "__main__":
  cli_config.run(main)
