"""Evaluate checkpoints: `python -m uwm_jax.evaluate --checkpoint_dir=DIR [--watch]`.

  --checkpoint_dir=DIR   a run's `checkpoints` folder (or its workdir)
  --step=N               one step (default: the latest)
  --watch                evaluate every step not evaluated yet, then wait for new ones
  --config=FILE[:var]    optional: the config the checkpoint must have been trained with
                         (model/diffusion fields are checked); its `eval` section is used
  --env=NAME, --num_episodes=N, --exec_steps=N, --max_steps=N
                         override config.eval fields (e.g. --env=libero/book_caddy)

Writes `<workdir>/eval/step_<N>/{metrics.json,videos/}`, appends to `<workdir>/eval/
metrics.jsonl` and TensorBoard (`<workdir>/eval/tensorboard`), and prints one summary line per
evaluated checkpoint. Errors (missing checkpoint, another config, unknown task) are one line.
"""

import logging
import sys

from absl import flags

from uwm_jax import cli_config
from uwm_jax.evaluation import evaluator

_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "Checkpoints folder or workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_WATCH = flags.DEFINE_bool("watch", False, "Keep evaluating new checkpoints.")
_CONFIG = cli_config.define_config_flag("Config the checkpoint must match.", lock_config=False)
_ENV = flags.DEFINE_string("env", None, "Override config.eval.env.")
_NUM_EPISODES = flags.DEFINE_integer("num_episodes", None, "Override config.eval.num_episodes.")
_EXEC_STEPS = flags.DEFINE_integer("exec_steps", None, "Override config.eval.exec_steps.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Override config.eval.max_steps.")
_TEMPORAL_ENSEMBLE = flags.DEFINE_bool("temporal_ensemble", None,
                                       "Override config.eval.temporal_ensemble.")
flags.mark_flags_as_required(["checkpoint_dir"])


def _overrides() -> dict:
  values = {"env": _ENV.value, "num_episodes": _NUM_EPISODES.value,
            "exec_steps": _EXEC_STEPS.value, "max_steps": _MAX_STEPS.value,
            "temporal_ensemble": _TEMPORAL_ENSEMBLE.value}
  return {k: v for k, v in values.items() if v is not None}


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    if _WATCH.value:
      interval = (_CONFIG.value.eval.watch_interval_s if _CONFIG.value is not None else 60.0)
      evaluator.watch(_CHECKPOINT_DIR.value, config=_CONFIG.value, eval_overrides=_overrides(),
                      interval_s=interval)
      return
    result = evaluator.evaluate_checkpoint(_CHECKPOINT_DIR.value, _STEP.value,
                                           config=_CONFIG.value, eval_overrides=_overrides())
  except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(evaluator.summary_line(result, evaluator.result_env(result)))


if __name__ == "__main__":
  cli_config.run(main)
