"""Serve a checkpoint to robots and simulators over openpi's websocket protocol.

  python -m uwm_jax.serve --checkpoint_dir=workdirs/demo/checkpoints
  python -m uwm_jax.serve --checkpoint_dir=/ckpt/uwm_droid --robot=droid --host=0.0.0.0 \\
      --api_key=SECRET --max_batch=8

Then, on the robot (openpi-client, unchanged):
  from openpi_client import websocket_client_policy
  policy = websocket_client_policy.WebsocketClientPolicy("ROBOT-PC", 8000, api_key="SECRET")
  actions = policy.infer({"exterior_image_1_left": img1, ...})["actions"]   # (H, 7)

A checkpoint finetuned on a LeRobot dataset (configs/lerobot_finetune.py) takes the dataset's
own keys and answers in its action space:
  python -m uwm_jax.serve --checkpoint_dir=/ckpt/uwm_so101/checkpoints --robot=lerobot
  policy.infer({"observation.images.front": img, "observation.images.wrist": img2,
                "observation.state": state})["actions"]                      # (H, 6)

or run the embedded task's rollouts as a client in another process:
  python -m uwm_jax.evaluate --checkpoint_dir=workdirs/demo --policy_server=127.0.0.1:8000

Loads the checkpoint as the evaluator does, compiles every sampler once (it says so), prints
one `ready:` line with the address, then serves until interrupted (Ctrl-C). Binds 127.0.0.1
unless --host says otherwise. Protocol, history rule, modes and options: docs/serving.md.
"""

import asyncio
import sys

from absl import flags

from uwm_jax import cli_config
from uwm_jax.serving import from_checkpoint

_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "Checkpoints folder or workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_ROBOT = flags.DEFINE_enum("robot", "", ["", "droid", "libero", "tabletop", "lerobot"],
                           "Input/output transforms (default: from the checkpoint's config).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0 = every interface).")
_PORT = flags.DEFINE_integer("port", 8000, "Port (websocket and GET /healthz).")
_API_KEY = flags.DEFINE_string("api_key", "", "Require 'Authorization: Api-Key <key>'.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 4, "Most requests per sampler call.")
_PARALLEL = flags.DEFINE_integer("parallel_calls", 0, "Concurrent sampler calls a batch is "
                                 "split into (0 = one per CPU core on a CPU host, 1 on an "
                                 "accelerator).")
_WINDOW = flags.DEFINE_float("batch_window_ms", 2.0, "Longest wait for requests to batch.")
_EXEC_STEPS = flags.DEFINE_integer("exec_steps", None, "Actions returned per policy request "
                                   "(0 = the whole chunk; default: config.eval.exec_steps).")
_ENSEMBLE = flags.DEFINE_bool("temporal_ensemble", None, "Temporal ensembling of the chunks "
                              "(default: config.eval.temporal_ensemble).")
_DECAY = flags.DEFINE_float("ensemble_decay", None, "Ensembling weight decay "
                            "(default: config.eval.ensemble_decay).")
_MAX_MB = flags.DEFINE_float("max_message_mb", 16.0, "Larger requests get an error reply.")
_SEED = flags.DEFINE_integer("seed", None, "Base seed of the connections' RNG streams.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "", ["", "float32", "bfloat16"],
                           "Precision the networks compute in (default: the checkpoint's); "
                           "bfloat16 is ~1.4x faster on a CPU with AVX-512 BF16 "
                           "(docs/serving.md, \"Latency\").")
flags.mark_flags_as_required(["checkpoint_dir"])


def main(argv):
  del argv
  try:
    server = from_checkpoint.make_server(
        _CHECKPOINT_DIR.value, _STEP.value, robot=_ROBOT.value, host=_HOST.value,
        port=_PORT.value, api_key=_API_KEY.value, max_batch=max(1, _MAX_BATCH.value),
        parallel_calls=max(0, _PARALLEL.value),
        batch_window_ms=_WINDOW.value, exec_steps=_EXEC_STEPS.value,
        temporal_ensemble=_ENSEMBLE.value, ensemble_decay=_DECAY.value,
        max_message_mb=_MAX_MB.value, seed=_SEED.value, compute_dtype=_DTYPE.value)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  m = server.metadata
  print(f"loaded {m['robot']} checkpoint step {m['checkpoint_step']} from "
        f"{m['checkpoint_dir']} ({m['compute_dtype']}); compiling the samplers once ...",
        flush=True)
  seconds = server.compile(lambda line: print(line, flush=True))

  def ready(host, port):
    print(f"ready: ws://{host}:{port} (compiled in {seconds:.1f} s; modes "
          f"{', '.join(m['modes'])}; health http://{host}:{port}/healthz)", flush=True)

  try:
    asyncio.run(server.serve(ready))
  except OSError as e:
    print(f"error: cannot listen on {_HOST.value}:{_PORT.value}: {e.strerror or e}",
          file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    pass


if __name__ == "__main__":
  cli_config.run(main)
