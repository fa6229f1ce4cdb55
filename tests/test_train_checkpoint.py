"""Orbax checkpoints: restore onto another mesh and onto one CPU device, fall back past a
corrupt latest step, params-only save/load, finetuning from a (mismatched) checkpoint."""

import logging
import os
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from tests.helpers import FAST_COMPILE
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.runs import checkpoint as ckpt
from uwm_jax.runs import checksums
from uwm_jax.training import loop, resume
from uwm_jax.training import mesh as mesh_lib
from uwm_jax.training import optimizer as optim_lib
from uwm_jax.training import sharded_state

FSDP_MIN = 1024
STATS = {"action": {"min": [-2.0, -1.0, 0.0, 3.0], "max": [2.0, 1.0, 0.5, 3.0]}}


def _config():
  c = tiny.get_config()
  c.train.fsdp_min_size = FSDP_MIN
  c.train.compiler_options = dict(FAST_COMPILE)
  return c


def _setup(cfg, mesh_shape, ema=False):
  model = UnifiedWorldModel(cfg.model)
  tx = optim_lib.make_optimizer(cfg.optim, cfg.num_steps)
  mesh = mesh_lib.make_mesh(mesh_shape, jax.devices()[:int(np.prod(mesh_shape))])
  abstract = sharded_state.abstract_train_state(model, tx, ema)
  shardings = sharded_state.train_state_shardings(abstract, mesh, cfg.train.partition_rules,
                                                  FSDP_MIN, log_decisions=False)
  return model, tx, abstract, shardings


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A train checkpoint of an (EMA) state sharded on a (2, 4, 1) mesh, at steps 1 and 2."""
  cfg = _config()
  cfg.train.ema_decay = 0.9
  model, tx, abstract, shardings = _setup(cfg, (2, 4, 1), ema=True)
  state = sharded_state.init_train_state(model, tx, jax.random.key(3), shardings, ema=True,
                                         compiler_options=FAST_COMPILE)
  # An EMA that differs from the params (a fresh state's EMA is a copy of them); jitted, as
  # eagerly every array shape compiles its own addition.
  shift = jax.jit(lambda t: jax.tree.map(lambda x: x + 0.5, t), out_shardings=shardings.ema_params)
  state = state.replace(ema_params=shift(state.ema_params))
  directory = str(tmp_path_factory.mktemp("run") / "checkpoints")
  manager = ckpt.make_manager(directory)
  for step in (1, 2):
    assert ckpt.save_train_checkpoint(manager, step, state=state,
                                      inference_params=state.inference_params,
                                      dataset_stats=STATS, config=cfg,
                                      data_iter_state={"next_batch": step}, force=True)
  manager.wait_until_finished()
  manager.close()
  return cfg, jax.device_get(state), directory


def _assert_trees_equal(a, b):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.mark.parametrize("mesh_shape", [(1, 2, 4), (1, 1, 1)])
def test_restore_onto_a_different_mesh_is_exact(saved, mesh_shape):
  cfg, host_state, directory = saved
  _, _, abstract, shardings = _setup(cfg, mesh_shape, ema=True)
  manager = ckpt.make_manager(directory)
  step, state, stats, data_iter = ckpt.restore_train_checkpoint(manager, abstract, shardings)
  manager.close()
  assert step == 2 and stats == STATS
  assert ckpt.local_process_state(data_iter) == {"next_batch": 2}
  _assert_trees_equal(host_state, jax.device_get(state))
  kernel = state.params["noise_net"]["dit"]["blocks"]["adaLN_modulation"]["kernel"]
  assert kernel.sharding == shardings.params["noise_net"]["dit"]["blocks"]["adaLN_modulation"][
      "kernel"]


def test_params_only_load_on_cpu_and_roundtrip(saved, tmp_path):
  cfg, host_state, directory = saved
  params, frozen, config, stats = ckpt.load_params_checkpoint(directory)
  assert stats == STATS
  assert config.model.crop_shape == cfg.model.crop_shape and config == ckpt.config_from_json(
      ckpt.config_to_json(cfg))
  _assert_trees_equal(host_state.ema_params, params)  # inference params = the EMA ...
  with pytest.raises(AssertionError):  # ... not the params
    _assert_trees_equal(host_state.params, params)
  leaf = jax.tree.leaves(params)[0]
  assert len(leaf.sharding.device_set) == 1
  # save_params_checkpoint writes the layout load_params_checkpoint reads (any step).
  out = ckpt.save_params_checkpoint(str(tmp_path / "checkpoints"), params=params, frozen=frozen,
                                    config=config, dataset_stats=stats, step=7)
  assert {"config", "dataset_stats", "params"} <= set(os.listdir(out))
  p2, _, c2, s2 = ckpt.load_params_checkpoint(str(tmp_path / "checkpoints"), step=7)
  _assert_trees_equal(params, p2)
  assert c2 == config and s2 == stats
  with pytest.raises(FileNotFoundError, match="No checkpoint step 3"):
    ckpt.load_params_checkpoint(str(tmp_path / "checkpoints"), step=3)


def test_relative_checkpoint_folder_saves_and_loads(saved, tmp_path, monkeypatch):
  """`--workdir` defaults to the relative workdirs/<config>: Orbax's writer needs absolute
  paths, so make_manager resolves them."""
  params, frozen, config, stats = ckpt.load_params_checkpoint(saved[2])
  monkeypatch.chdir(tmp_path)
  ckpt.save_params_checkpoint(os.path.join("rel", "checkpoints"), params=params, frozen=frozen,
                              config=config, dataset_stats=stats, step=2)
  p2, _, _, _ = ckpt.load_params_checkpoint(os.path.join("rel", "checkpoints"))
  _assert_trees_equal(params, p2)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(saved, tmp_path, caplog):
  cfg, host_state, directory = saved
  import shutil
  copy = str(tmp_path / "checkpoints")
  shutil.copytree(directory, copy)
  # Damage step 2: truncate every file of its state item.
  for root, _, files in os.walk(os.path.join(copy, "2", "state")):
    for f in files:
      with open(os.path.join(root, f), "wb"):
        pass
  _, _, abstract, shardings = _setup(cfg, (8, 1, 1), ema=True)
  manager = ckpt.make_manager(copy)
  with caplog.at_level(logging.WARNING):
    step, state, _, _ = ckpt.restore_train_checkpoint(manager, abstract, shardings)
  assert step == 1
  assert any("step 2" in r.getMessage() and "falling back" in r.getMessage()
             for r in caplog.records)
  _assert_trees_equal(host_state, jax.device_get(state))
  # The damaged step is set aside, so the run can save step 2 again later.
  assert manager.all_steps() == [1]
  assert os.listdir(tmp_path / ckpt.CORRUPT_DIRNAME)
  manager.close()


def test_resume_with_another_model_config_is_a_clear_error(saved):
  cfg, _, directory = saved
  other = _config()
  other.model.embed_dim = 32
  _, _, abstract, shardings = _setup(other, (8, 1, 1), ema=True)
  manager = ckpt.make_manager(directory)
  with pytest.raises(ValueError, match="different model"):
    ckpt.restore_train_checkpoint(manager, abstract, shardings)
  assert manager.all_steps() == [1, 2]  # nothing set aside
  manager.close()


def test_init_from_mismatched_config_lists_every_mismatch(saved, tmp_path):
  _, _, directory = saved
  cfg = _config()
  cfg.model.action_dim = 5
  cfg.model.num_registers = 3
  cfg.init_from = directory
  with pytest.raises(ValueError) as err:
    loop.train(cfg, str(tmp_path / "finetune"))
  msg = str(err.value)
  assert "does not fit this model config" in msg
  assert "noise_net/action_encoder/fc_0/kernel: checkpoint (4, 256) vs model (5, 256)" in msg
  assert "noise_net/registers: checkpoint (1, 4, 64) vs model (1, 3, 64)" in msg
  assert "noise_net/pos_embed" in msg


def test_init_from_loads_params_and_keeps_pretraining_stats(saved, tmp_path):
  _, host_state, directory = saved
  cfg = _config()
  cfg.init_from = os.path.join(directory, "1")  # a step folder works too
  workdir = str(tmp_path / "finetune")
  model, tx, _, _ = _setup(cfg, (8, 1, 1))
  mesh = mesh_lib.make_mesh((8, 1, 1))
  manager = ckpt.make_manager(ckpt.checkpoint_dir(workdir))
  start, state, _, stats, data_iter = resume.build_state(cfg, model, tx, mesh, manager)
  manager.close()
  assert start == 0 and data_iter is None and stats == STATS
  _assert_trees_equal(host_state.ema_params, jax.device_get(state.params))
  assert int(state.step) == 0
  loader, _ = resume.make_run_loader(cfg, stats, workdir)
  try:
    assert loader.dataset_stats == STATS  # the data is normalised with the pretraining stats
  finally:
    loader.close()
  cfg.train.recompute_dataset_stats = True
  manager = ckpt.make_manager(ckpt.checkpoint_dir(workdir))
  _, _, _, stats, _ = resume.build_state(cfg, model, tx, mesh, manager)
  manager.close()
  assert stats is None  # the loader computes its own


# ------------------------------------------------------------------------------ integrity
def _copy(directory, tmp_path):
  import shutil
  copy = str(tmp_path / "checkpoints")
  shutil.copytree(directory, copy)
  return copy


def _largest_file(folder):
  files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def _scribble(path, seed=0):
  """Overwrite 64 bytes in the middle of a file with random bytes (same size)."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    f.write(np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8).tobytes())


def test_every_saved_step_has_a_checksum_manifest(saved):
  _, _, directory = saved
  for step in ("1", "2"):
    assert checksums.verify(os.path.join(directory, step)) is True


def _restore_copy(cfg, copy, caplog, level):
  """(step, state) that a trainer restores from the checkpoints folder `copy`, logs captured."""
  _, _, abstract, shardings = _setup(cfg, (8, 1, 1), ema=True)
  manager = ckpt.make_manager(copy)
  with caplog.at_level(level):
    step, state, _, _ = ckpt.restore_train_checkpoint(manager, abstract, shardings)
  manager.close()
  return step, state


@pytest.mark.parametrize("item", ["params", "state"])
def test_random_bytes_in_a_data_file_fall_back_to_the_previous_step(saved, tmp_path, caplog,
                                                                    item):
  cfg, host_state, directory = saved
  copy = _copy(directory, tmp_path)
  _scribble(_largest_file(os.path.join(copy, "2", item)))
  step, state = _restore_copy(cfg, copy, caplog, logging.INFO)
  assert step == 1
  _assert_trees_equal(host_state, jax.device_get(state))
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
              and "step 2" in r.getMessage()]
  assert len(warnings) == 1 and "checksum" in warnings[0] and item in warnings[0], warnings


def test_params_only_load_verifies_checksums(saved, tmp_path):
  _, _, directory = saved
  copy = _copy(directory, tmp_path)
  _scribble(_largest_file(os.path.join(copy, "2", "params")))
  with pytest.raises(checksums.CorruptCheckpointError, match="params/.*checksum"):
    ckpt.load_params_checkpoint(copy, step=2)
  ckpt.load_params_checkpoint(copy, step=1)


def test_latest_params_skip_a_truncated_step_with_one_warning(saved, tmp_path, caplog):
  """What the evaluator loads without --step: the latest step that loads."""
  _, host_state, directory = saved
  copy = _copy(directory, tmp_path)
  os.remove(os.path.join(copy, "2", checksums.MANIFEST_FILENAME))  # no checksum to catch it
  open(_largest_file(os.path.join(copy, "2", "params")), "wb").close()
  with pytest.raises(ckpt.UnreadableCheckpointError) as err:
    ckpt.load_params_checkpoint(copy, step=2)
  assert len(str(err.value).splitlines()) == 1 and os.path.join(copy, "2") in str(err.value)
  with caplog.at_level(logging.WARNING):
    step, params, _, _, _ = ckpt.load_params_step(copy)
  assert step == 1
  _assert_trees_equal(host_state.ema_params, params)
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING][0].startswith(
      "Checkpoint step 2 cannot be loaded")


def test_checkpoint_without_manifest_loads_with_one_info_line(saved, tmp_path, caplog):
  cfg, host_state, directory = saved
  copy = _copy(directory, tmp_path)
  os.remove(os.path.join(copy, "2", checksums.MANIFEST_FILENAME))
  step, state = _restore_copy(cfg, copy, caplog, logging.INFO)
  assert step == 2
  _assert_trees_equal(host_state, jax.device_get(state))
  lines = [r.getMessage() for r in caplog.records if "without verification" in r.getMessage()]
  assert len(lines) == 1 and os.path.join(copy, "2") in lines[0]


def test_deleted_metadata_file_is_named(saved, tmp_path, caplog):
  cfg, _, directory = saved
  copy = _copy(directory, tmp_path)
  for step in ("1", "2"):
    os.remove(os.path.join(copy, step, checksums.MANIFEST_FILENAME))  # the old layout
  os.remove(os.path.join(copy, "2", "state", "_METADATA"))
  step, _ = _restore_copy(cfg, copy, caplog, logging.WARNING)
  assert step == 1
  warning = [r.getMessage() for r in caplog.records if "step 2" in r.getMessage()][0]
  assert "state/_METADATA" in warning and "missing" in warning, warning


def test_every_step_corrupt_is_one_line_per_step(saved, tmp_path, caplog, capfd):
  cfg, _, directory = saved
  copy = _copy(directory, tmp_path)
  _scribble(_largest_file(os.path.join(copy, "2", "state")))
  os.remove(os.path.join(copy, "1", checksums.MANIFEST_FILENAME))  # unverified, unreadable
  for root, _, files in os.walk(os.path.join(copy, "1", "state")):
    for f in files:
      if f != "_METADATA":
        open(os.path.join(root, f), "wb").close()
  _, _, abstract, shardings = _setup(cfg, (8, 1, 1), ema=True)
  manager = ckpt.make_manager(copy)
  with caplog.at_level(logging.INFO), pytest.raises(ckpt.NoUsableCheckpointError) as err:
    ckpt.restore_train_checkpoint(manager, abstract, shardings)
  manager.close()
  lines = str(err.value).splitlines()
  assert len(lines) == 3, lines  # the headline, then one line per step
  assert os.path.join(copy, "2") in lines[1] and "checksum" in lines[1]
  assert os.path.join(copy, "1") in lines[2]
  # each step's reason is shortened (TensorStore's errors run to kilobytes); the line also
  # holds the step's folder, as long as the temporary path is
  assert all(len(line) - len(copy) < 400 for line in lines)
  logged = "\n".join(r.getMessage() for r in caplog.records) + "".join(capfd.readouterr())
  assert "Traceback" not in logged and "Event loop is closed" not in logged
  assert len(logged.splitlines()) < 10, logged


def test_loading_does_not_warn_about_the_read_only_manager(saved, caplog):
  """Orbax warns "Given directory is read only" for every read-only manager: that is how
  evaluation and init_from read, not a problem, so the line is dropped."""
  _, _, directory = saved
  with caplog.at_level(logging.WARNING):
    ckpt.load_params_checkpoint(directory)
    ckpt.load_params_step(directory)
  assert not [r for r in caplog.records if "read only" in r.getMessage()]


def test_only_the_loop_thread_reports_steps_to_the_preemption_sync(tmp_path, monkeypatch):
  """jax's preemption sync point is one past the last step reported; Orbax's finalize thread
  reports the step it saved, which may be older than the loop's. Only the thread that made the
  manager (the training loop) may report, or a SIGTERM can set a sync point the loop has
  already passed (the run then never stops)."""
  reported = []

  def recorder(self, step):
    del self
    reported.append((step, threading.get_ident()))
    return False

  monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption", recorder)
  manager = ckpt.make_manager(str(tmp_path / "checkpoints"))  # asynchronous saves
  for step in (1, 2):
    manager.should_save(step)  # the loop asks every step
    manager.save(step, args=ocp.args.Composite(**{
        ckpt.DATASET_STATS: ocp.args.JsonSave(STATS)}), force=True)
    manager.wait_until_finished()  # Orbax's save_finalize thread has run
  manager.close()
  assert ckpt.finished_steps(str(tmp_path / "checkpoints")) == [1, 2]
  assert sorted({step for step, _ in reported}) == [1, 2]  # should_save and save ask, in order
  assert [step for step, _ in reported] == sorted(step for step, _ in reported)
  assert {thread for _, thread in reported} == {threading.get_ident()}
