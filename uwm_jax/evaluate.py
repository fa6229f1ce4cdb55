"""Evaluate checkpoints: `python -m uwm_jax.evaluate --checkpoint_dir=DIR [--watch]`.

  --checkpoint_dir=DIR   a run's `checkpoints` folder (or its workdir)
  --step=N               one step (default: the latest)
  --watch                evaluate every step not evaluated yet, then wait for new ones
  --config=FILE[:var]    optional: the config the checkpoint must have been trained with
                         (model/diffusion fields are checked); its `eval` section is used
  --env=NAME, --num_episodes=N, --exec_steps=N, --max_steps=N
                         override config.eval fields (e.g. --env=libero/book_caddy)
  --policy_server=HOST:PORT
                         roll out through a running policy server (`python -m uwm_jax.serve`)
                         as its client: this process runs only the environments (rollouts
                         only; results in eval/step_<N>_policy_server/metrics.json)
  --api_key=KEY          the server's API key

Example, the embedded demo served and evaluated from another process:
  python -m uwm_jax.serve --checkpoint_dir=workdirs/demo &
  python -m uwm_jax.evaluate --checkpoint_dir=workdirs/demo --policy_server=127.0.0.1:8000

Writes `<workdir>/eval/step_<N>/{metrics.json,videos/}` (`step_<N>_<env>/` with --env, beside
the checkpoint's own evaluation), appends to `<workdir>/eval/metrics.jsonl` and TensorBoard
(`<workdir>/eval/tensorboard`), and prints one summary line per evaluated checkpoint. Errors
(missing or corrupt checkpoint, another config, unknown task) are one `error:` line with exit
status 2 (`uwm_jax.cli_errors`; --traceback for the traceback).
"""

from absl import flags

from uwm_jax import cli_config
from uwm_jax.evaluation import evaluator
from uwm_jax.serving import client as serving_client

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
_POLICY_SERVER = flags.DEFINE_string("policy_server", None,
                                     "HOST:PORT of a policy server to roll out through.")
_API_KEY = flags.DEFINE_string("api_key", None, "API key of the policy server.")
flags.mark_flags_as_required(["checkpoint_dir"])

# Only rollouts run through a policy server (the rest needs the model in this process).
SERVED_OVERRIDES = {"offline_metrics": False, "prediction_videos": False,
                    "tracking_episodes": 0, "random_baseline": False}


def _overrides() -> dict:
  values = dict(SERVED_OVERRIDES) if _POLICY_SERVER.value else {}
  values.update({"env": _ENV.value, "num_episodes": _NUM_EPISODES.value,
            "exec_steps": _EXEC_STEPS.value, "max_steps": _MAX_STEPS.value,
            "temporal_ensemble": _TEMPORAL_ENSEMBLE.value})
  return {k: v for k, v in values.items() if v is not None}


def _policy_factory():
  """Rollouts through --policy_server: one client connection per environment."""
  if not _POLICY_SERVER.value:
    return None
  serving_client.split_address(_POLICY_SERVER.value)  # a malformed address fails before loading
  return lambda num_envs, config: serving_client.RemotePolicy(
      _POLICY_SERVER.value, num_slots=num_envs, seed=config.eval.seed, api_key=_API_KEY.value)


def main(argv):
  del argv
  config = cli_config.config_value(_CONFIG) if _CONFIG.present else None
  if _WATCH.value:
    interval = config.eval.watch_interval_s if config is not None else 60.0
    evaluator.watch(_CHECKPOINT_DIR.value, config=config, eval_overrides=_overrides(),
                    interval_s=interval)
    return
  result = evaluator.evaluate_checkpoint(_CHECKPOINT_DIR.value, _STEP.value, config=config,
                                         eval_overrides=_overrides(),
                                         policy_factory=_policy_factory())
  print(evaluator.summary_line(result, evaluator.result_env(result)))


if __name__ == "__main__":
  cli_config.run(main)
