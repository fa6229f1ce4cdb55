"""Whole training runs: SIGKILL + auto-resume reproduces the uninterrupted loss sequence
exactly; two processes joined through jax.distributed on 127.0.0.1 agree with one process, and
wait for the embedded task's dataset that process 0 generates; a non-finite loss stops
training with a clear error and keeps the last good checkpoint.

Every run uses configs/tiny.py (synthetic data) on 8 CPU devices with a (8, 1, 1) mesh and the
tests' XLA flags (tests.helpers.xla_flags). Subprocesses run the real CLI, `python -m
uwm_jax.train`. The one-process runs, in this process or as a CLI, compile one and the same
train step (same config, flags and device count), so the compilation cache serves it to all but
the first; the failure tests break the state or the batch outside that step for the same reason.
"""

import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from configs import tiny
from tests.helpers import skip_without, xla_flags
from uwm_jax import batch as batch_lib
from uwm_jax.dims import model_dims
from uwm_jax.runs import checkpoint as ckpt
from uwm_jax.runs import metrics_writer
from uwm_jax.training import loop, sharded_state

pytestmark = pytest.mark.slow  # whole training runs, several of them as subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 16
# Tolerance between one process and two: the gradient all-reduce crosses processes (gloo),
# which may sum in another order; anything wrong (data, rng, sharding) moves the loss by > 1e-2.
MULTIPROCESS_RTOL = 1e-5
# Params after 4 AdamW steps: gradients summed in another order moved params by at most
# 1.4e-7 (measured); a wrong batch, rng or sharding moves them by ~lr (1e-3).
PARAMS_RTOL, PARAMS_ATOL = 1e-5, 1e-6

OVERRIDES = {
    "num_steps": NUM_STEPS,
    "train.log_every": 1,
    "train.save_every": 4,
    "train.eval_every": 0,
    "train.eval_at_end": False,
    "train.tensorboard": False,
    "train.progress_bar": False,
    "train.keep_last": 2,
}


def _config(**extra):
  c = tiny.get_config()
  for key, value in {**OVERRIDES, **extra}.items():
    section, _, field = key.rpartition(".")
    setattr(c[section] if section else c, field, value)
  return c


def _cli(workdir, num_devices=8, extra_flags=(), config=f"{REPO}/configs/tiny.py",
         stdout=subprocess.PIPE, python=sys.executable, **extra):
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS=xla_flags(num_devices))
  cmd = [python, "-m", "uwm_jax.train", f"--config={config}",
         f"--workdir={workdir}", *flags, *extra_flags]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=stdout,
                          stderr=subprocess.STDOUT, text=True)


def _losses(workdir):
  """step -> list of every logged loss of that step (a resumed run logs some steps twice)."""
  out = {}
  for rec in metrics_writer.read_metrics(workdir):
    out.setdefault(rec["step"], []).append(rec["loss"])
  return out


@pytest.fixture(scope="module")
def reference_workdir(tmp_path_factory):
  """An uninterrupted single-process run (keeping every 4th checkpoint for comparisons); its
  evaluation callback (a stand-in recording what the loop hands it) runs every 10 steps and
  does not touch the training."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  calls = []

  def make_evaluate(context):
    assert context.model.dims == model_dims(_config().model) and context.dataset_stats
    return lambda state, step: calls.append(step) or {"num_batches": 1, "step": step}

  result = loop.train(_config(**{"train.eval_every": 5, "train.keep_every": 4}), workdir,
                      make_evaluate=make_evaluate)
  assert result.step == NUM_STEPS
  # The phases the CLI's last line reports, and the training phase's measured rate.
  assert list(result.phase_seconds) == ["setup", "compilation", "training"]
  assert all(s > 0 for s in result.phase_seconds.values())
  assert result.steps_per_s == pytest.approx(NUM_STEPS / result.phase_seconds["training"])
  assert calls == [5, 10, 15] and result.last_eval_metrics == {"num_batches": 1, "step": 15}
  assert [r["step"] for r in metrics_writer.read_metrics(workdir, "eval")] == [5, 10, 15]
  return workdir


@pytest.fixture(scope="module")
def reference(reference_workdir):
  """step -> loss of the reference run."""
  losses = _losses(reference_workdir)
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))
  return {s: v[0] for s, v in losses.items()}


def _wait_for(proc, predicate, timeout, poll_s=0.02):
  """True once `predicate()` holds (checked every `poll_s`), False if `proc` ends first or
  `timeout` s pass."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(poll_s)
  return False


def test_sigkill_and_resume_reproduce_the_loss_sequence(reference, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  proc = _cli(workdir)

  def checkpointed_and_past_it():
    steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
             if s.isdigit()] if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    metrics = os.path.join(workdir, metrics_writer.METRICS_FILENAME)
    if not steps or not os.path.exists(metrics):
      return False
    return max(_losses(workdir), default=0) >= max(steps) + 2

  try:
    reached = _wait_for(proc, checkpointed_and_past_it, timeout=240)
    os.kill(proc.pid, signal.SIGKILL)
    output = proc.communicate()[0]
  finally:
    if proc.poll() is None:
      proc.kill()
  assert reached, f"the run did not reach a checkpoint:\n{output[-3000:]}"
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(_losses(workdir))
  assert killed_at < NUM_STEPS, "the run finished before it was killed"

  saved = ckpt.finished_steps(ckpt.checkpoint_dir(workdir))  # a step being written is not one
  with caplog.at_level(logging.INFO, logger="uwm_jax.training.resume"):
    result = loop.train(_config(), workdir)  # the same command again: auto-resume
  assert result.step == NUM_STEPS
  # From the newest committed checkpoint (not trained again from step 0, which would give the
  # same losses).
  assert f"at step {max(saved)}." in caplog.text, caplog.text[-2000:]
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))
  # One row per step: the killed run's rows past the restored checkpoint are dropped.
  assert all(len(v) == 1 for v in losses.values()), {s: v for s, v in losses.items()
                                                     if len(v) > 1}
  for step, values in losses.items():
    assert values[0] == reference[step], (step, values[0], reference[step])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _closing_loss(output: str, process: int) -> float:
  """The final loss in a process's closing line ("Training finished at step N (process i of
  n): loss X, ...")."""
  match = re.search(rf"Training finished at step \d+ \(process {process} of 2\): loss ([^,;]+)",
                    output)
  assert match, output[-3000:]
  return float(match.group(1))


@pytest.mark.multiprocess
def test_two_processes_agree_with_one(reference, reference_workdir, tmp_path):
  workdir = str(tmp_path / "two")
  steps = 6
  address = f"127.0.0.1:{_free_port()}"
  procs = [_cli(workdir, num_devices=4, num_steps=steps, extra_flags=(
      f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"))
           for i in range(2)]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=400)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  assert "process 0 of 2" in outputs[0] and "process 1 of 2" in outputs[1]
  # Process 0 ends with the wall time of each phase (and logs the measured ETA on the way).
  assert re.search(r"wall time [\d.]+ (s|min): setup [\d.]+ (s|min), compilation [\d.]+ (s|min), "
                   r"training [\d.]+ (s|min) \(6 steps, [\d.]+ steps/s\)\n", outputs[0]), \
      outputs[0][-2000:]
  assert "wall time" not in outputs[1]
  assert re.search(r"Measured [\d.]+ steps/s after compilation: the remaining \d+ steps take",
                   outputs[0])
  losses = _losses(workdir)  # written by process 0 only
  assert sorted(losses) == list(range(1, steps + 1))
  for step, values in losses.items():
    np.testing.assert_allclose(values, [reference[step]], rtol=MULTIPROCESS_RTOL, err_msg=step)
  # Process 1 computed the same global loss as process 0 (and the one-process run).
  for process, output in enumerate(outputs):
    np.testing.assert_allclose(_closing_loss(output, process), reference[steps],
                               rtol=MULTIPROCESS_RTOL, err_msg=f"process {process}")
  # Both processes took part in the checkpoints; the params they wrote at step 4 are the
  # one-process run's.
  params, _, _, _ = ckpt.load_params_checkpoint(ckpt.checkpoint_dir(workdir), step=4)
  expected, _, _, _ = ckpt.load_params_checkpoint(ckpt.checkpoint_dir(reference_workdir), step=4)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=PARAMS_RTOL, atol=PARAMS_ATOL,
                               err_msg=jax.tree_util.keystr(path))


# configs/tiny.py's model on the embedded push task, its dataset generated on first use.
PUSH_CONFIG = """from tests.helpers import tiny_push_config
from uwm_jax.data import source_configs


def get_config():
  c = tiny_push_config()
  c.data.sources = {{"tabletop_push": source_configs.array_record({path!r})}}
  c.data.demo_task = "tabletop_push"
  c.data.demo_episodes = 4
  return c
"""


def _two_process_run(tmp_path, name, config, grace_s=90, timeout_s=600, **extra):
  """`python -m uwm_jax.train` as two processes joined on 127.0.0.1, one CPU device each;
  returns [(returncode, output)] per process. Outputs go to files (no pipe fills up while the
  other process is read). Once one process has ended, the other gets grace_s to end too (a
  process whose partner is gone waits for it until jax's own timeouts): then it is killed."""
  address = f"127.0.0.1:{_free_port()}"
  logs = [open(tmp_path / f"{name}_{i}.log", "w+") for i in range(2)]
  procs = [_cli(tmp_path / name, num_devices=1, config=config, stdout=log, extra_flags=(
      f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"), **extra)
           for i, log in enumerate(logs)]
  deadline = time.time() + timeout_s
  try:
    while time.time() < deadline and any(p.poll() is None for p in procs):
      if any(p.poll() is not None for p in procs):
        deadline = min(deadline, time.time() + grace_s)
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  return [(p.returncode, out) for p, out in zip(procs, outputs)]


@pytest.mark.multiprocess
@skip_without("mujoco")
def test_two_processes_wait_for_the_dataset_process_zero_generates(tmp_path):
  """Process 0 generates the embedded task's dataset on first use while process 1 waits for it
  (instead of failing on a dataset that does not exist yet); a generation that fails stops
  both processes with its error."""
  config = tmp_path / "push_config.py"
  config.write_text(PUSH_CONFIG.format(path=str(tmp_path / "tabletop_push")))
  # No training step: what matters is that both processes build their loaders on the data.
  (code0, out0), (code1, out1) = _two_process_run(tmp_path, "run", config, num_steps=0)
  assert code1 == 0, out1[-4000:]
  assert code0 == 0, out0[-4000:]
  assert "Generating 4 expert episodes of tabletop_push" in out0
  assert re.search(r"wall time [\d.]+ (s|min): data generation ", out0), out0[-2000:]
  assert "Waiting for process 0: generating the embedded task's datasets." in out1
  for out in (out0, out1):
    assert re.search(r"Training windows per source: \{'tabletop_push': [1-9]", out), out[-4000:]

  # The dataset was generated with other settings: process 0's error ends both processes.
  results = _two_process_run(tmp_path, "mismatch", config, num_steps=0,
                             **{"data.demo_action_noise": 0.5})
  for process, (code, out) in enumerate(results):
    assert code == 2, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "action_noise: 0.0 (dataset) vs 0.5 (config)" in last, \
        (process, out[-4000:])
  assert results[1][1].strip().splitlines()[-1].startswith(
      "error: Process 0 failed generating the embedded task's datasets: ValueError: ")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  """Step 2's batch carries NaN actions (the run's own train step, so the cache serves it):
  its loss is not finite, training stops there and step 1's checkpoint stays the last."""
  workdir = str(tmp_path / "nan")
  cfg = _config(**{"train.save_every": 1})
  real = loop.global_batch_lib.batch_placer

  def poisoned_placer(mesh):
    place, placed = real(mesh), []

    def poisoned(host_batch):
      placed.append(True)
      if len(placed) == 2:
        action = host_batch[batch_lib.ACTION]
        host_batch = dict(host_batch, **{batch_lib.ACTION: np.full_like(action, np.nan)})
      return place(host_batch)
    return poisoned

  monkeypatch.setattr(loop.global_batch_lib, "batch_placer", poisoned_placer)
  with pytest.raises(FloatingPointError, match="Non-finite training metrics at step 2") as err:
    loop.train(cfg, workdir)
  assert "last good checkpoint is step 1" in str(err.value)
  manager = ckpt.make_manager(ckpt.checkpoint_dir(workdir), read_only=True)
  assert manager.all_steps() == [1]
  manager.close()
  params, _, _, _ = ckpt.load_params_checkpoint(ckpt.checkpoint_dir(workdir))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  assert [r["step"] for r in metrics_writer.read_metrics(workdir)] == [1]
  assert math.isfinite(metrics_writer.read_metrics(workdir)[0]["loss"])


def test_a_step_is_finite_only_with_a_finite_loss_and_gradient_norm():
  assert loop.metrics_are_finite({"loss": 1.0, "grad_norm": 2.0, "lr": 1.0})
  assert not loop.metrics_are_finite({"loss": 1.0, "grad_norm": math.inf})
  assert not loop.metrics_are_finite({"loss": math.nan, "grad_norm": 1.0})
  assert not loop.metrics_are_finite({"loss": 1.0, "grad_norm": 1.0, "finite": 0.0})


def test_non_finite_params_are_never_saved_though_loss_and_gradient_are_finite(tmp_path,
                                                                               monkeypatch):
  """Params that turn non-finite after step 3 while that step's loss and gradient norm stay
  finite (what the in-step non-finite guard checks, so it cannot see this): step 3 is not
  saved, and the error names the last checkpoint that verifies. The params are broken after
  the run's own (cached) train step."""
  import jax.numpy as jnp
  workdir = str(tmp_path / "nan_params")
  cfg = _config(**{"train.save_every": 1, "num_steps": 5})
  real = sharded_state.make_jitted_train_step  # the loop builds its step through sharded_state

  def poisoned(config, model, optimizer, state_shardings, mesh):
    jitted = real(config, model, optimizer, state_shardings, mesh)
    to_nan = jax.jit(lambda params: jax.tree.map(lambda x: x * jnp.nan, params),
                     out_shardings=state_shardings.params)

    def poison(step_fn):
      def train_step(state, batch, rng):
        new, metrics = step_fn(state, batch, rng)
        if int(new.step) >= 3:
          new = new.replace(params=to_nan(new.params))
        return new, metrics
      return train_step

    # The loop compiles ahead (`.lower(...).compile()`): the compiled step is wrapped.
    return types.SimpleNamespace(lower=lambda *args: types.SimpleNamespace(
        compile=lambda: poison(jitted.lower(*args).compile())))

  monkeypatch.setattr(sharded_state, "make_jitted_train_step", poisoned)
  with pytest.raises(FloatingPointError, match="params after step 3 are not finite") as err:
    loop.train(cfg, workdir)
  assert "last good checkpoint is step 2" in str(err.value)
  manager = ckpt.make_manager(ckpt.checkpoint_dir(workdir), read_only=True)
  assert manager.all_steps() == [1, 2]
  manager.close()
