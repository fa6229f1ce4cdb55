"""The policy server on a tiny checkpoint, driven by the REAL openpi-client 0.1.2 from its own
robot-side venv (.venv-robot-client, numpy < 2; `.ci/run` creates it from
requirements-robot-client.txt) through tests/openpi_client_script.py, plus our own client
for served rollouts. One server (API key on, max_batch 2) serves every scenario."""

import json
import os
import subprocess
import urllib.request

import jax
import numpy as np
import pytest

from uwm_jax.evaluation import evaluator
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.runs import checkpoint
from uwm_jax.serving import client as client_lib
from uwm_jax.serving import from_checkpoint, server_thread
from tests.helpers import perturbed_params, tiny_push_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(ROOT, ".venv-robot-client", "bin", "python")
SCRIPT = os.path.join(ROOT, "tests", "openpi_client_script.py")
KEY = "test-key"
ACTION_RANGE = (-0.5, 1.5)  # statistics: actions de-normalise into this range


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
  config = tiny_push_config()
  config.model.low_dim_dim = 2
  config.eval.exec_steps = 3
  config.eval.num_episodes, config.eval.num_envs, config.eval.max_steps = 2, 2, 6
  config.eval.num_videos = 2
  params, frozen = UnifiedWorldModel(config.model).init(jax.random.PRNGKey(0))
  # Noise on the random init: the zero-initialised output layers of a fresh model would make
  # its actions ignore the observations, and the history tests need them to matter.
  params = perturbed_params(params, scale=0.2)
  lo, hi = ACTION_RANGE
  stats = {"action": {"min": [lo, lo], "max": [hi, hi]},
           "low_dim": {"min": [-0.24, -0.24], "max": [0.24, 0.24]}}
  directory = checkpoint.checkpoint_dir(str(tmp_path_factory.mktemp("tiny_served")))
  checkpoint.save_params_checkpoint(directory, params=params, frozen=frozen, config=config,
                                    dataset_stats=stats, step=4)
  # parallel_calls left at its default, as the in-process evaluator's (on the 2-core CI host a
  # batch of 2 runs as two concurrent calls of 1).
  server = from_checkpoint.make_server(directory, port=0, api_key=KEY, max_batch=2,
                                             batch_window_ms=200.0, max_message_mb=1.0)
  server.compile(printer=lambda line: None)
  with server_thread.ServerThread(server) as port:
    yield server, port, directory


def _openpi(scenario, port, key=KEY):
  if not os.path.exists(VENV_PYTHON):
    pytest.skip("no robot-side venv .venv-robot-client (created by .ci/run from "
                "requirements-robot-client.txt)")
  out = subprocess.run([VENV_PYTHON, SCRIPT, scenario, str(port), key], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_metadata_actions_and_repeated_calls(tiny_server):
  server, port, _ = tiny_server
  out = _openpi("basic", port)
  meta = out["metadata"]
  assert meta["robot"] == "tabletop" and meta["checkpoint_step"] == 4
  assert meta["camera_keys"] == ["front_rgb", "top_rgb"] and meta["image_size"] == [32, 32]
  assert meta["action_dim"] == 2 and meta["action_horizon"] == 3  # the executed horizon
  assert meta["model_action_horizon"] == 4 and meta["num_obs_frames"] == 2
  assert "forward_dynamics" in meta["modes"] and meta["config_name"]
  actions = np.asarray(out["actions"])
  assert actions.shape == (3, 3, 2) and out["dtype"] == "float32"
  assert actions.min() >= ACTION_RANGE[0] - 1e-5 and actions.max() <= ACTION_RANGE[1] + 1e-5
  assert not np.allclose(actions[0], actions[1])  # a new key per request
  assert out["timing"][0] == ["infer_ms", "batch_size", "infer_ms"]


def test_concurrent_clients_have_separate_histories_and_batched_equals_unbatched(tiny_server):
  server, port, _ = tiny_server
  batches_before = server.stats["batches"]
  out = _openpi("two_clients", port)
  # Client a's answers did not depend on client b's observations (separate histories) nor on
  # sharing batches with b: a fresh client replaying a's requests alone gets the same actions
  # (up to float rounding: batch sizes 1 and 2 are separately compiled executables).
  np.testing.assert_allclose(out["a"], out["a_alone"], atol=2e-3)
  assert not np.allclose(out["a"], out["b"])
  # 12 requests: the concurrent 8 were batched (fewer sampler calls than requests).
  assert server.stats["batches"] - batches_before < 12


def test_each_bad_input_is_an_error_while_another_client_is_served(tiny_server):
  server, port, _ = tiny_server
  out = _openpi("bad_inputs", port)
  expected = {"missing_key": "missing key 'top_rgb'",
              "wrong_shape": "'front_rgb' must have shape (H, W, 3)",
              "wrong_dtype": "'front_rgb' must have dtype uint8",
              "nan_state": "'pusher_pos' holds NaN",
              "unknown_mode": "unknown mode 'teleport'",
              "oversized": "larger than the server's limit",
              "malformed": "malformed frame"}
  for case, text in expected.items():
    assert text in out[case], (case, out[case])
    assert out[f"{case}/other_client_ok"] is True
  assert out["bad_client_recovers"] is True
  assert out["after_disconnect/other_client_ok"] is True


def test_api_key_accepted_and_refused_and_health_check(tiny_server):
  _, port, _ = tiny_server
  out = _openpi("api_key", port)
  assert "401" in out["wrong"] and "401" in out["none"]
  assert np.asarray(out["right"]).shape == (3, 2)
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as reply:
    assert reply.status == 200 and reply.read().strip() == b"OK"


def test_world_model_queries(tiny_server):
  _, port, _ = tiny_server
  out = _openpi("world_model", port)
  # Decoded frames at the crop size: (V, T_o, h, w, 3) uint8.
  assert out["fd_shape"] == [2, 2, 32, 32, 3] and out["fd_dtype"] == "uint8"
  assert out["vp_shape"] == [2, 2, 32, 32, 3]
  assert out["inv_shape"] == [4, 2]


def test_our_codec_reads_what_openpi_packs():
  from uwm_jax.serving import protocol
  if not os.path.exists(VENV_PYTHON):
    pytest.skip("no robot-side venv .venv-robot-client")
  out = _openpi("codec", 0)
  got = protocol.unpack(bytes.fromhex(out["packed_hex"]))
  np.testing.assert_array_equal(got["u8"], np.arange(6, dtype=np.uint8).reshape(2, 3))
  assert got["f4"] == np.float32(1.5) and got["f4"].dtype == np.float32
  np.testing.assert_array_equal(got["f8"], np.linspace(0, 1, 4))
  assert got["i8"].dtype == np.int64 and got["i8"].tolist() == [[-1, 2]]
  assert got["s"] == "text" and got["nested"] == {"b": True, "l": [1, 2.5]}
  # And back: re-packed by us, byte for byte what openpi packed.
  assert protocol.pack(got).hex() == out["packed_hex"]


def test_served_rollouts_equal_in_process_rollouts(tiny_server):
  """The same seeds give the same episodes in-process and through the server (videos)."""
  _, port, directory = tiny_server
  overrides = {"offline_metrics": False, "prediction_videos": False, "tracking_episodes": 0,
               "random_baseline": False}
  local = evaluator.evaluate_checkpoint(directory, eval_overrides=overrides, progress=False)
  factory = lambda n, config: client_lib.RemotePolicy(f"127.0.0.1:{port}", num_slots=n,
                                                       seed=config.eval.seed, api_key=KEY)
  served = evaluator.evaluate_checkpoint(directory, eval_overrides=overrides, progress=False,
                                         policy_factory=factory)
  assert served.output_dir.endswith("step_4_policy_server")
  assert served.metrics["rollout/success_rate"] == local.metrics["rollout/success_rate"]
  import imageio.v2 as imageio
  videos = lambda r: sorted(p for p in r.videos if "rollout_" in p)
  assert len(videos(local)) == 2
  for a, b in zip(videos(local), videos(served)):
    np.testing.assert_array_equal(np.stack(imageio.mimread(a)), np.stack(imageio.mimread(b)))
