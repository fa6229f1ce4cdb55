"""What `python -m uwm_jax.train` does around training for evaluation (config.eval).

  before_training: generate the embedded task's datasets on first use
                   (`config.eval.demo_episodes`, see `envs/demo_data.py`);
  after_training:  with `config.eval.after_training`, evaluate the final checkpoint
                   (`evaluator.evaluate_checkpoint`) and print the one-line summary.
Both run on process 0 only (the demo is a single-process run).
"""

import jax


def before_training(config) -> None:
  if not config.eval.get("demo_episodes") or jax.process_index() != 0:
    return  # nothing to generate: MuJoCo and the env modules stay unimported
  from uwm_jax.envs import demo_data  # pylint: disable=import-outside-toplevel
  demo_data.prepare(config)


def after_training(config, workdir: str, printer=print):
  if not config.eval.get("after_training") or jax.process_index() != 0:
    return None
  from uwm_jax.evaluation import evaluator  # pylint: disable=import-outside-toplevel
  from uwm_jax.runs import checkpoint  # pylint: disable=import-outside-toplevel
  result = evaluator.evaluate_checkpoint(checkpoint.checkpoint_dir(workdir))
  printer(evaluator.summary_line(result, config.eval.env))
  return result
