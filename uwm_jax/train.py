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
(`config.data.demo_episodes`, `uwm_jax.data.demo_generation`; by process 0 while the other
processes of a multi-process run wait), the loop receives the offline evaluation as its
callback (`uwm_jax.evaluation.offline_metrics.make_validation_evaluate`), and with
`config.eval.after_training` the final checkpoint is evaluated and summarised in one line.
The last line gives the wall time of each phase (data generation, setup, compilation,
training, evaluation); the log names the measured step rate and an ETA once it is known.

Bad input (a missing config file, an unknown --config. field, a mesh that does not fit, a
missing dataset or init_from, a workdir that is a file or held by another run) ends in one
`error:` line and exit status 2, before anything expensive; --traceback shows the traceback.
"""

import time

from absl import flags

from uwm_jax import cli_config
from uwm_jax.runs import host_allocator

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
  config = cli_config.config_value(_CONFIG)  # a bad config file or field fails first
  if config.train.get("host_huge_pages", False):  # may re-execute this command (same PID)
    host_allocator.reexec_with_huge_pages()
  # jax.distributed must start before anything touches a device (some modules create arrays
  # at import time), so the pipeline's modules are imported only afterwards.
  from uwm_jax.training import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                     _PROCESS_ID.value)
  # pylint: disable=import-outside-toplevel
  import jax
  from uwm_jax.data import demo_generation
  from uwm_jax.evaluation import evaluator, offline_metrics
  from uwm_jax.runs import checkpoint, phases
  from uwm_jax.training import loop
  # pylint: enable=import-outside-toplevel
  workdir = _WORKDIR.value or cli_config.default_workdir(cli_config.config_arg())
  if config.train.compilation_cache_dir:  # reruns load their executables instead of compiling
    jax.config.update("jax_compilation_cache_dir", config.train.compilation_cache_dir)
  clock = phases.PhaseClock()
  # The embedded task's datasets, on first use: process 0 writes them while the others wait
  # (they would otherwise read a dataset that does not exist yet).
  t0 = time.perf_counter()
  if distributed.on_process_zero("generating the embedded task's datasets",
                                 lambda: demo_generation.prepare(config)):
    clock.add("data generation", time.perf_counter() - t0)
  result = loop.train(config, workdir, make_evaluate=offline_metrics.make_validation_evaluate)
  clock.update(result.phase_seconds, {"training": f"{config.num_steps} steps, "
                                      f"{result.steps_per_s:.3g} steps/s"}
               if result.steps_per_s else None)
  if config.eval.after_training and jax.process_index() == 0:  # rollouts + one summary line
    with clock.phase("evaluation"):
      evaluated = evaluator.evaluate_checkpoint(checkpoint.checkpoint_dir(workdir))
    print(evaluator.summary_line(evaluated, config.eval.env))
  if jax.process_index() == 0:
    print(clock.line())


if __name__ == "__main__":
  cli_config.run(main)
