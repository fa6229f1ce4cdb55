"""The evaluation job on a tiny random-init checkpoint: metrics, videos, TensorBoard, the
summary line, watching, and the three clear errors."""

import json
import os
import subprocess
import sys

import jax
import pytest

from tests.helpers import skip_without, structured_batch, tiny_push_config
from uwm_jax import batch as batch_lib, sampling
from uwm_jax.evaluation import evaluator
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.policies import inference_checkpoint
from uwm_jax.runs import checkpoint

pytestmark = skip_without("mujoco")  # the embedded task's rollouts


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  config = tiny_push_config()
  params, frozen = UnifiedWorldModel(config.model).init(jax.random.PRNGKey(0))
  stats = {"action": {"min": [-1.0, -1.0], "max": [1.0, 1.0]}}
  workdir = tmp_path_factory.mktemp("tiny_push")
  directory = checkpoint.checkpoint_dir(str(workdir))
  checkpoint.save_params_checkpoint(directory, params=params, frozen=frozen, config=config,
                                    dataset_stats=stats, step=7)
  return directory, config


def test_evaluator_writes_metrics_videos_tensorboard_and_summary(tiny_checkpoint, recwarn):
  directory, config = tiny_checkpoint
  result = evaluator.evaluate_checkpoint(directory, progress=False)
  # No process is forked from the multithreaded JAX process (video writing included).
  assert not [w for w in recwarn if "os.fork()" in str(w.message)]
  assert result.step == 7
  m = result.metrics
  assert m["rollout/num_episodes"] == 3
  assert 0.0 <= m["rollout/success_rate"] <= 1.0
  assert "rollout/random_policy_success_rate" in m
  assert m["offline/num_batches"] == 1
  for key in ("action_mse_marginal", "action_mse_inv", "image_mse_forward"):
    assert m[f"offline/{key}"] >= 0.0
  assert 0.0 <= m["tracking/inverse_dynamics_success_rate"] <= 1.0
  assert 0.0 <= m["tracking/policy_success_rate"] <= 1.0
  names = sorted(os.path.basename(p) for p in result.videos)
  assert names[0].startswith("forward_dynamics_single") and names[1].startswith(
      "forward_dynamics_trajectory") and names[2].startswith("rollout_000_")
  for path in result.videos:
    assert os.path.getsize(path) > 0
  root = os.path.join(os.path.dirname(directory), "eval")
  with open(os.path.join(root, "step_7", "metrics.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 7 and saved["metrics"]["rollout/num_episodes"] == 3
  with open(os.path.join(root, "metrics.jsonl")) as f:
    assert json.loads(f.readline())["step"] == 7
  assert os.listdir(os.path.join(root, "tensorboard"))
  line = evaluator.summary_line(result, "tabletop_push")
  assert line.startswith("eval step 7:") and "tabletop_push success" in line and "\n" not in line
  # Watching: step 7 is evaluated already, a new step 9 gets evaluated (DP-free, no rollouts).
  params, frozen, cfg, stats = checkpoint.load_params_checkpoint(directory)
  checkpoint.save_params_checkpoint(directory, params=params, frozen=frozen, config=cfg,
                                    dataset_stats=stats, step=9)
  lines = []
  evaluator.watch(directory, eval_overrides={"env": "", "prediction_videos": False},
                  interval_s=0, progress=False, max_evaluations=1, printer=lines.append)
  assert len(lines) == 1 and lines[0].startswith("eval step 9:")


def test_another_env_is_evaluated_beside_the_checkpoints_own_not_over_it(tmp_path):
  """--env=OTHER writes eval/step_<N>_<env>/ and the split eval_<env>; the checkpoint's own
  evaluation (eval/step_<N>/) stays, and --watch with the override still evaluates step N."""
  config = tiny_push_config()
  params, frozen = UnifiedWorldModel(config.model).init(jax.random.PRNGKey(0))
  directory = checkpoint.checkpoint_dir(str(tmp_path))
  checkpoint.save_params_checkpoint(directory, params=params, frozen=frozen, config=config,
                                    dataset_stats={"action": {"min": [-1.0, -1.0],
                                                              "max": [1.0, 1.0]}}, step=5)
  cheap = {"num_episodes": 1, "num_envs": 1, "offline_metrics": False, "num_videos": 0,
           "prediction_videos": False, "tracking_episodes": 0, "random_baseline": False}
  ood = "tabletop_push_ood_table"
  own = evaluator.evaluate_checkpoint(directory, progress=False, eval_overrides=cheap)
  assert evaluator.evaluated_steps(directory, {"env": ood}) == []
  lines = []
  evaluator.watch(directory, eval_overrides={**cheap, "env": ood}, interval_s=0,
                  progress=False, max_evaluations=1, printer=lines.append)
  root = evaluator.eval_dir(directory)
  assert own.output_dir == os.path.join(root, "step_5")
  assert sorted(os.listdir(root)) == ["metrics.jsonl", "step_5", f"step_5_{ood}", "tensorboard"]
  for name, env in (("step_5", config.eval.env), (f"step_5_{ood}", ood)):
    with open(os.path.join(root, name, "metrics.json")) as f:
      assert json.load(f)["env"] == env
  with open(os.path.join(root, "metrics.jsonl")) as f:
    assert [json.loads(line)["split"] for line in f] == ["eval", f"eval_{ood}"]
  assert len(lines) == 1 and f"-> {os.path.join(root, f'step_5_{ood}')}" in lines[0]
  assert evaluator.evaluated_steps(directory) == [5]
  assert evaluator.evaluated_steps(directory, {"env": ood}) == [5]
  assert evaluator.run_name(5, {"env": "libero/book_caddy"}, served=True) == (
      "step_5_libero_book_caddy_policy_server")


def test_low_dim_model_gets_low_dim_in_rollouts_tracking_and_videos(tmp_path):
  """model.low_dim_dim > 0 (the embedded task's pusher position): every part of the
  evaluation feeds the low-dim observations, normalised with the checkpoint's statistics."""
  config = tiny_push_config()
  config.model.low_dim_dim = 2
  config.eval.random_baseline = False
  params, frozen = UnifiedWorldModel(config.model).init(jax.random.PRNGKey(0))
  stats = {"action": {"min": [-1.0, -1.0], "max": [1.0, 1.0]},
           "low_dim": {"min": [-0.24, -0.24], "max": [0.24, 0.24]}}
  directory = checkpoint.checkpoint_dir(str(tmp_path))
  checkpoint.save_params_checkpoint(directory, params=params, frozen=frozen, config=config,
                                    dataset_stats=stats, step=3)
  result = evaluator.evaluate_checkpoint(directory, progress=False,
                                         eval_overrides={"num_episodes": 2, "num_envs": 2})
  m = result.metrics
  assert m["rollout/num_episodes"] == 2 and "tracking/policy_success_rate" in m
  assert sum("forward_dynamics" in os.path.basename(p) for p in result.videos) == 2


def test_checkpoint_loads_for_inference_unrolled_and_split(tiny_checkpoint):
  directory, config = tiny_checkpoint
  assert config.model.scan_layers  # trained (saved) scanned
  loaded = inference_checkpoint.load_checkpoint(directory)
  dit = loaded.params["noise_net"]["dit"]
  assert sorted(dit) == [f"blocks_{i}" for i in range(config.model.depth)]
  assert "kernel_1" in dit["blocks_0"]["adaLN_modulation"]
  assert loaded.config.model.scan_layers is False and loaded.config.model.split_modulation


def test_checkpoint_loads_in_another_compute_dtype(tiny_checkpoint):
  """load_checkpoint(compute_dtype=...) (the policy server's --compute_dtype): the networks
  compute in that precision, parameters unchanged; a wrong name is one clear error."""
  directory, config = tiny_checkpoint
  assert config.model.compute_dtype == "float32"
  fp32 = inference_checkpoint.load_checkpoint(directory)
  loaded = inference_checkpoint.load_checkpoint(directory, compute_dtype="bfloat16")
  assert loaded.config.model.compute_dtype == "bfloat16"
  loaded_params, fp32_params = jax.device_get((loaded.params, fp32.params))  # numpy: no compiles
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), loaded_params, fp32_params))
  batch = {k: v[:1] for k, v in structured_batch(loaded.config.model, 1).items()
           if k == batch_lib.OBS}
  sampler = sampling.make_sampler(UnifiedWorldModel(loaded.config.model),
                                  loaded.config.diffusion, sampling.POLICY)
  args = (loaded.params, loaded.frozen, batch, jax.random.PRNGKey(0))
  assert "bf16" in sampler.lower(*args).as_text()
  action = sampler(*args)["action"]
  assert action.shape[0] == 1 and bool(jax.numpy.isfinite(action).all())
  with pytest.raises(ValueError, match="compute_dtype must be one of float32, bfloat16"):
    inference_checkpoint.load_checkpoint(directory, compute_dtype="fp16")


def test_missing_checkpoint_is_one_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    evaluator.evaluate_checkpoint(str(tmp_path / "nowhere"))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="No checkpoint in"):
    evaluator.evaluate_checkpoint(str(tmp_path))


def test_checkpoint_of_another_config_is_one_clear_error(tiny_checkpoint):
  directory, _ = tiny_checkpoint
  other = tiny_push_config()
  other.model.embed_dim = 32
  with pytest.raises(inference_checkpoint.ConfigMismatchError,
                     match=r"model.embed_dim: checkpoint 64 vs config 32"):
    evaluator.evaluate_checkpoint(directory, config=other, progress=False)


def test_unknown_task_name_is_one_clear_error(tiny_checkpoint):
  directory, _ = tiny_checkpoint
  with pytest.raises(ValueError, match="Unknown evaluation task 'cartpole'"):
    evaluator.evaluate_checkpoint(directory, eval_overrides={"env": "cartpole"})


def test_cli_prints_one_error_line_without_traceback(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "uwm_jax.evaluate", f"--checkpoint_dir={tmp_path / 'missing'}"],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: Checkpoint folder")
  assert "Traceback" not in out.stderr


def test_prediction_video_columns_and_rows_are_labelled():
  import numpy as np
  from uwm_jax.evaluation import prediction_videos, videos
  cells = [[np.zeros((32, 32, 3), np.uint8)] * 6] * 2  # 2 samples x (now, real, pred) x 2 views
  frame = videos.label_columns(videos.grid(cells), prediction_videos.SINGLE_COLUMNS)
  strip = frame[:videos.LABEL_HEIGHT]
  assert frame.shape[0] == videos.grid(cells).shape[0] + videos.LABEL_HEIGHT
  group = (frame.shape[1] + 1) // 3
  for g in range(3):  # every group of columns has its label
    assert (strip[:, g * group:(g + 1) * group] < 128).any(), g
  rows = videos.label_rows(videos.grid([[np.zeros((32, 32, 3), np.uint8)]] * 2),
                           prediction_videos.TRAJECTORY_ROWS)
  for r in range(2):  # every row has its label on the left
    assert (rows[r * 33:(r + 1) * 33, :30] < 128).any(), r


def test_trajectory_predictions_query_in_fixed_batches_with_the_same_frames():
  """The held-out trajectory is queried `chunk` queries per sampler call (the last call padded),
  so the forward-dynamics sampler compiles once; a per-sample sampler gives the same frames
  as one call over all queries."""
  import numpy as np
  from uwm_jax import batch as B_
  from uwm_jax.evaluation import prediction_videos
  config = tiny_push_config()
  model = UnifiedWorldModel(config.model)
  _, frozen = model.init(jax.random.PRNGKey(0))
  d = model.dims
  calls = []

  def fd_sampler(params, frozen_, batch, rng):  # per sample: latent from its own actions
    del params, frozen_, rng
    calls.append(batch[B_.OBS].shape[0])
    a = np.asarray(batch[B_.ACTION]).reshape(len(batch[B_.ACTION]), -1).sum(-1)
    return {"latent": np.tanh(a)[:, None, None, None, None, None] *
                      np.ones((1,) + d.latent_shape, np.float32)}

  rng = np.random.default_rng(0)
  length = 2 * d.num_obs_frames + 6 * d.action_len
  H, W = config.model.image_shape
  frames = rng.integers(0, 256, (length, len(config.model.camera_keys), H, W, 3), np.uint8)
  actions = rng.uniform(-1, 1, (length, d.action_dim)).astype(np.float32)
  n_queries = len(prediction_videos.trajectory_queries(length, d.num_obs_frames, d.action_len))
  assert n_queries % 4 != 0  # the last call needs padding
  low_dim = (rng.uniform(-1, 1, (length, config.model.low_dim_dim)).astype(np.float32)
             if config.model.get("low_dim_dim") else None)
  chunked = prediction_videos.trajectory_prediction_frames(
      model, fd_sampler, None, frozen, frames, actions, jax.random.PRNGKey(1), low_dim, chunk=4)
  assert calls and set(calls) == {4}
  calls.clear()
  whole = prediction_videos.trajectory_prediction_frames(
      model, fd_sampler, None, frozen, frames, actions, jax.random.PRNGKey(1), low_dim,
      chunk=n_queries)
  assert calls == [n_queries]
  assert len(chunked) == len(whole) == n_queries * d.num_obs_frames
  for a, b in zip(chunked, whole):
    np.testing.assert_array_equal(a, b)
