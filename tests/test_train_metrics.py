"""Analytic FLOP count vs XLA, offline evaluation metrics, metric files, cluster detection."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from tests.helpers import FAST_COMPILE
from uwm_jax.data import normalization
from uwm_jax.data.loader import make_eval_loader
from uwm_jax.evaluation import offline_metrics
from uwm_jax.model.resnet import ResNet18GN
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.training import flops as flops_lib
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training.loop import EvalContext
from uwm_jax.runs import metrics_writer
from uwm_jax.training.train_step import ema_update


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_analytic_flops_agree_with_xla_cost_analysis():
  # Unscanned blocks: XLA counts a scanned loop body once. Matmuls dominate at this width, so
  # the counts (XLA also counts elementwise ops) must agree to within 20%.
  cfg = tiny.get_config().model
  cfg.embed_dim, cfg.depth, cfg.scan_layers = 128, 3, False
  model = UnifiedWorldModel(cfg)
  params = jax.eval_shape(model.init_params, jax.random.key(0))
  d = model._dummy_inputs(4)  # pylint: disable=protected-access
  xla = _xla_flops(lambda p: model.predict_noise(p, d["global_cond"], d["noisy_action"],
                                                 d["t_action"], d["noisy_latent"], d["t_obs"]),
                   params) / 4
  assert flops_lib.noise_net_flops(cfg) == pytest.approx(xla, rel=0.2)
  net = ResNet18GN(32, 16)
  images = jnp.zeros((2, 64, 64, 3))
  variables = jax.eval_shape(net.init, jax.random.key(0), images)
  xla = _xla_flops(lambda v: net.apply(v, images), variables) / 2
  assert flops_lib.resnet18_flops((64, 64), 16, 32) == pytest.approx(xla, rel=0.25)
  # A training step: 3x the trained forward; the frozen codec only forward.
  f = flops_lib.train_step_flops(tiny.get_config().model)
  assert f.per_sample == 3 * (f.image_encoder + f.noise_net) + f.codec_encoder


def test_mfu_and_peak_lookup():
  assert flops_lib.peak_flops_per_device("TPU v4") == 275e12
  assert flops_lib.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert flops_lib.peak_flops_per_device("cpu") is None
  assert flops_lib.peak_flops_per_device("cpu", override_tflops=2.0) == 2e12
  assert flops_lib.mfu(1e12, 10.0, 4, 5e12) == pytest.approx(0.5)
  assert np.isnan(flops_lib.mfu(1e12, 10.0, 4, None))


def test_offline_metrics_six_metrics_and_raw_action_units():
  cfg = tiny.get_config()
  model = UnifiedWorldModel(cfg.model)
  params, frozen = model.init(jax.random.key(0))
  batches = list(make_eval_loader(cfg, process_index=0, process_count=1))[:1]
  assert batches
  rng = jax.random.key(5)
  common = dict(model=model, diffusion_cfg=cfg.diffusion, params=params, frozen=frozen,
                batches=batches, rng=rng)
  eval_step = offline_metrics.make_eval_step(model, cfg.diffusion, compiler_options=FAST_COMPILE)
  plain = offline_metrics.compute_offline_metrics(**common, eval_step=eval_step)
  assert set(offline_metrics.METRICS) <= set(plain)
  assert {"loss", "action_loss", "dynamics_loss"} <= set(plain) and plain["num_batches"] == 1
  assert all(np.isfinite(v) for v in plain.values())
  # Actions normalised with scale 3 (offset 0): action MSEs in raw units are 9x larger, the
  # latent MSEs unchanged (same keys, so the same samples).
  stats = {normalization.ACTION: normalization.minmax_entry([-3.0] * 4, [3.0] * 4)}
  scaled = offline_metrics.compute_offline_metrics(
      **common, eval_step=eval_step.with_dataset_stats(stats))
  for k in offline_metrics.ACTION_METRICS:
    assert scaled[k] == pytest.approx(9 * plain[k], rel=1e-4), k
  for k in offline_metrics.IMAGE_METRICS:
    assert scaled[k] == pytest.approx(plain[k], rel=1e-5), k


def test_validation_evaluate_is_the_training_loops_callback():
  """The callback `python -m uwm_jax.train` hands the loop: offline metrics of the state's
  inference params on `train.eval_num_batches` validation batches, the same for the same step."""
  cfg = tiny.get_config()
  cfg.train.eval_num_batches = 1
  cfg.train.compiler_options = FAST_COMPILE
  model = UnifiedWorldModel(cfg.model)
  params, frozen = model.init(jax.random.key(0))
  mesh = mesh_lib.make_mesh((-1, 1, 1))
  evaluate = offline_metrics.make_validation_evaluate(EvalContext(
      config=cfg, model=model, mesh=mesh, dataset_stats={}, rng=jax.random.key(3)))
  state = types.SimpleNamespace(inference_params=params, frozen=frozen)
  first = evaluate(state, 10)
  assert set(offline_metrics.METRICS) <= set(first) and first["num_batches"] == 1
  assert evaluate(state, 10) == first
  # (Zero-initialised output layers: scaling the params would not change the samples.)
  perturbed = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(9), x.shape),
                           params)
  other = types.SimpleNamespace(inference_params=perturbed, frozen=frozen)
  assert evaluate(other, 10)["action_mse_marginal"] != first["action_mse_marginal"]


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  w = metrics_writer.MetricWriter(str(tmp_path), tensorboard=True, enabled=True)
  w.write(10, {"loss": np.float32(0.5), "lr": 1e-4}, "train")
  w.write(10, {"action_mse_marginal": 0.25}, "eval")
  w.write(20, {"loss": float("nan")}, "train")
  w.close()
  train = metrics_writer.read_metrics(str(tmp_path))
  assert [r["step"] for r in train] == [10, 20] and train[0]["loss"] == 0.5
  assert train[1]["loss"] == "nan"
  assert metrics_writer.read_metrics(str(tmp_path), "eval")[0]["action_mse_marginal"] == 0.25
  events = os.listdir(tmp_path / metrics_writer.TENSORBOARD_DIRNAME)
  assert any(e.startswith("events.out.tfevents") for e in events)
  # `tensorboard --logdir` (installed by requirements.txt) reads what was written.
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(tmp_path / metrics_writer.TENSORBOARD_DIRNAME))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(10, 0.5)]
  assert acc.Scalars("eval/action_mse_marginal")[0].value == 0.25


def test_ema_update():
  ema = {"w": jnp.ones(3)}
  out = ema_update(ema, {"w": jnp.zeros(3)}, 0.9)
  np.testing.assert_allclose(out["w"], 0.9)
