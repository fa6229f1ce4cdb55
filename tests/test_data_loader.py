"""The grain loader on the synthetic source: windows, determinism, resume, hosts, mixtures."""

import hashlib
import json
import os

import numpy as np
import pytest

from configs import tiny
from uwm_jax import batch as batch_lib
from uwm_jax.data import loader as loader_lib
from uwm_jax.data import normalization, source_configs
from uwm_jax.data.synthetic import SyntheticSource
from uwm_jax.data.windows import SOURCE, WindowReader


def _config(**data):
  c = tiny.get_config()
  for k, v in data.items():
    setattr(c.data, k, v)
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _sample_hashes(batch):
  keys = sorted(batch)
  return [hashlib.sha1(b"".join(np.ascontiguousarray(batch[k][i]).tobytes() for k in keys))
          .hexdigest() for i in range(len(batch[batch_lib.ACTION]))]


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_fit_the_contract_and_windows_line_up():
  c = _config()
  loader = loader_lib.make_train_loader(c, process_index=0, process_count=1)
  b = next(loader)
  batch_lib.validate_batch(b, c.model)
  assert b[batch_lib.ACTION].dtype == np.float32 and b[batch_lib.ACTION_MASK].all()
  assert np.abs(b[batch_lib.ACTION]).max() <= 1.0 + 1e-6

  # A window reads frames/actions exactly where uwm_jax.batch.window_slices puts them.
  src = loader.sources[0]
  reader = WindowReader([src], c.model, loader.dataset_stats)
  sl = batch_lib.window_slices(c.model.num_obs_frames, c.model.action_len)
  ep, start = 3, 5
  sample = reader((0, ep, start))
  all_frames = src.frames(ep, np.arange(start, start + sl.window))
  np.testing.assert_array_equal(sample[batch_lib.OBS], all_frames[:, sl.obs])
  np.testing.assert_array_equal(sample[batch_lib.NEXT_OBS], all_frames[:, sl.next_obs])
  raw = src.actions(ep)[start:start + sl.window][sl.action]
  np.testing.assert_allclose(
      normalization.denormalize(sample[batch_lib.ACTION], loader.dataset_stats["action"]), raw,
      rtol=1e-5, atol=1e-6)
  # The synthetic images move: consecutive frames differ.
  assert (sample[batch_lib.OBS][:, 0] != sample[batch_lib.OBS][:, 1]).any()


def test_same_config_same_stream_and_seed_changes_it():
  a = _take(loader_lib.make_train_loader(_config(), process_index=0, process_count=1), 3)
  b = _take(loader_lib.make_train_loader(_config(), process_index=0, process_count=1), 3)
  _assert_batches_equal(a, b)
  c = _take(loader_lib.make_train_loader(_config(seed=1), process_index=0, process_count=1), 1)
  assert not np.array_equal(a[0][batch_lib.ACTION], c[0][batch_lib.ACTION])


def test_restored_state_reproduces_the_next_batches():
  c = _config()
  first = loader_lib.make_train_loader(c, process_index=0, process_count=1)
  _take(first, 4)
  state = json.loads(json.dumps(first.get_state()))  # survives a JSON checkpoint
  expected = _take(first, 5)
  second = loader_lib.make_train_loader(c, process_index=0, process_count=1)
  _take(second, 1)  # a loader that already moved elsewhere
  second.set_state(state)
  _assert_batches_equal(_take(second, 5), expected)


def test_restore_with_worker_processes_and_across_epochs():
  # 270 training windows / 8 = 33.75 batches per epoch: batches 32..37 cross an epoch.
  c = _config(num_workers=2)
  ref = loader_lib.make_train_loader(_config(), process_index=0, process_count=1)
  ref_batches = _take(ref, 38)[32:]
  loader = loader_lib.make_train_loader(c, process_index=0, process_count=1)
  loader.set_state({**loader.get_state(), "next_batch": 32})
  try:
    _assert_batches_equal(_take(loader, 6), ref_batches)
  finally:
    loader.close()


def test_worker_count_auto_follows_the_usable_cores():
  assert loader_lib.resolve_num_workers(0, cores=208) == 0  # a count is taken as given
  assert loader_lib.resolve_num_workers(3, cores=2) == 3
  assert loader_lib.resolve_num_workers(-1, cores=2) == 0  # small hosts: the main process reads
  assert loader_lib.resolve_num_workers(-1, cores=7) == 0
  assert loader_lib.resolve_num_workers(-1, cores=8) == 6  # two cores left to the main process
  assert loader_lib.resolve_num_workers(-1, cores=20) == 18
  assert loader_lib.resolve_num_workers(-1, cores=208) == 32  # a v5p host: capped (memory)
  assert loader_lib.resolve_num_workers(-1) == loader_lib.resolve_num_workers(
      -1, cores=len(os.sched_getaffinity(0)))  # this process's cores, not the machine's
  with pytest.raises(ValueError, match="num_workers = -2"):
    loader_lib.resolve_num_workers(-2)


def test_hosts_are_disjoint_and_cover_the_global_batch():
  c = _config()
  one = _take(loader_lib.make_train_loader(c, process_index=0, process_count=1), 3)
  hosts = [_take(loader_lib.make_train_loader(c, process_index=p, process_count=2), 3)
           for p in range(2)]
  for j in range(3):
    assert all(len(h[j][batch_lib.ACTION]) == c.batch_size // 2 for h in hosts)
    h0, h1 = (set(_sample_hashes(h[j])) for h in hosts)
    assert not h0 & h1
    # Stacked in process order, the hosts' batches are exactly the single-host batch.
    _assert_batches_equal([{k: np.concatenate([h[j][k] for h in hosts]) for k in one[j]}],
                          [one[j]])
  # A single-host state restores on two hosts (same global batch): batch 2 matches.
  two = loader_lib.make_train_loader(c, process_index=1, process_count=2)
  two.set_state({**two.get_state(), "next_batch": 2})
  _assert_batches_equal([next(two)], [hosts[1][2]])


def test_batch_size_must_divide_across_hosts():
  with pytest.raises(ValueError, match="divisible"):
    loader_lib.make_train_loader(_config(), process_index=0, process_count=3)


def test_mixture_ratio_source_index_and_action_free_samples():
  c = _config()
  c.batch_size = 16
  c.data.sources = {}
  c.data.sources.robot = source_configs.synthetic(weight=3.0, num_episodes=8, seed=1)
  c.data.sources.video = source_configs.synthetic(weight=1.0, num_episodes=8, seed=2,
                                                  action_free_fraction=1.0)
  loader = loader_lib.make_train_loader(c, process_index=0, process_count=1)
  assert loader.source_names == ("robot", "video")
  batches = _take(loader, 20)
  src = np.concatenate([b[SOURCE] for b in batches])
  mask = np.concatenate([b[batch_lib.ACTION_MASK] for b in batches])
  acts = np.concatenate([b[batch_lib.ACTION] for b in batches])
  n = len(src)
  frac = (src == 0).mean()
  assert abs(frac - 0.75) <= 3 * np.sqrt(0.75 * 0.25 / n)
  np.testing.assert_array_equal(mask, src == 0)  # video samples carry action_mask False
  assert not acts[src == 1].any() and acts[src == 0].any()  # and zero actions


def test_action_free_fraction_and_robot_only_validation():
  c = _config(val_fraction=0.25)
  c.data.sources.synthetic = source_configs.synthetic(num_episodes=16, episode_len=24,
                                                      action_free_fraction=0.5)
  train = loader_lib.make_train_loader(c, process_index=0, process_count=1)
  mask = np.concatenate([b[batch_lib.ACTION_MASK] for b in _take(train, 30)])
  assert 0.2 < mask.mean() < 0.8  # 8 video episodes train, 4 robot ones are held out
  ev = loader_lib.make_eval_loader(c, process_index=0, process_count=1)
  batches = list(ev)
  assert len(batches) == len(ev) > 0
  assert all(b[batch_lib.ACTION_MASK].all() for b in batches)
  # The validation episodes are robot episodes the training split never uses.
  src = train.sources[0]
  val_eps = set(np.unique(train.split.val[0][:, 0]).tolist())
  assert len(val_eps) == 2 and not val_eps & set(np.unique(train.split.train[0][:, 0]).tolist())
  assert not src.action_free[list(val_eps)].any()
  # ... and the split names them (what the evaluator's held-out trajectory is taken from).
  assert sorted(val_eps) == sorted(train.split.val_episodes[0].tolist())


def test_eval_loader_hosts_split_validation_evenly():
  c = _config(val_fraction=0.25)
  one = list(loader_lib.make_eval_loader(c, process_index=0, process_count=1))
  hosts = [list(loader_lib.make_eval_loader(c, process_index=p, process_count=2))
           for p in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == len(one) > 0
  h = [set(sum((_sample_hashes(b) for b in hb), [])) for hb in hosts]
  assert not h[0] & h[1]
  assert h[0] | h[1] == set(sum((_sample_hashes(b) for b in one), []))
  # Re-iterable and deterministic.
  _assert_batches_equal(one, list(loader_lib.make_eval_loader(c, process_index=0,
                                                              process_count=1)))


def test_low_dim_observations_are_normalised():
  c = _config()
  c.model.low_dim_dim = 3
  loader = loader_lib.make_train_loader(c, process_index=0, process_count=1)
  b = next(loader)
  batch_lib.validate_batch(b, c.model)
  assert "low_dim" in loader.dataset_stats
  assert np.abs(b[batch_lib.LOW_DIM]).max() <= 1.0 + 1e-6


def test_statistics_equal_numpy_on_raw_arrays():
  c = _config()
  loader = loader_lib.make_train_loader(c, process_index=0, process_count=1)
  src: SyntheticSource = loader.sources[0]
  raw = np.concatenate([src.actions(e) for e in range(src.num_episodes)])
  np.testing.assert_allclose(loader.dataset_stats["action"]["min"], raw.min(0), rtol=1e-6)
  np.testing.assert_allclose(loader.dataset_stats["action"]["max"], raw.max(0), rtol=1e-6)


def test_empty_sources_and_unknown_kind_errors():
  c = _config()
  c.data.sources = {}
  with pytest.raises(ValueError, match="config.data.sources is empty"):
    loader_lib.make_train_loader(c, process_index=0, process_count=1)
  c.data.sources.bad = source_configs.synthetic()
  c.data.sources.bad.kind = "zarr"
  with pytest.raises(ValueError, match="'bad'.*unknown kind"):
    loader_lib.make_train_loader(c, process_index=0, process_count=1)


def test_episodes_shorter_than_a_window_are_skipped():
  c = _config()
  c.data.sources.synthetic.episode_len = 5  # window is 7
  with pytest.raises(ValueError, match="no training windows"):
    loader_lib.make_train_loader(c, process_index=0, process_count=1)


def test_short_episodes_are_skipped_with_a_logged_count(caplog):
  from uwm_jax.data.episodes import window_starts
  with caplog.at_level("INFO"):
    rows = window_starts(np.array([10, 3, 7, 6]), np.arange(4), window=7, name="mine")
  assert sorted(set(rows[:, 0].tolist())) == [0, 2]
  assert len(rows) == 4 + 1  # starts 0..3 of episode 0, start 0 of episode 2
  assert "mine: skipped 2 of 4 episodes shorter than the 7-frame window" in caplog.text


def test_nan_in_actions_names_dataset_episode_and_field():
  from uwm_jax.data import stats as stats_lib

  class Poisoned(SyntheticSource):
    def actions(self, episode):
      a = super().actions(episode).copy()
      if episode == 2:
        a[5, 1] = np.inf
      return a

  c = _config()
  src = Poisoned("poisoned", c.model.camera_keys, c.model.image_shape, c.model.action_dim,
                 num_episodes=4, episode_len=12)
  with pytest.raises(ValueError, match=r"poisoned/episode 2: field 'action'.*NaN/inf.*step 5"):
    stats_lib.dataset_stats(c.data, c.model, [src])
  stats = {"action": normalization.identity_entry(c.model.action_dim)}
  reader = WindowReader([src], c.model, stats)
  start = 5 - reader.slices.action.start - 1  # a window whose action chunk covers step 5
  # The episode step is reported, not the position inside the window's action chunk.
  with pytest.raises(ValueError, match=r"poisoned/episode 2: field 'action'.*\(first at step "
                     r"5\)"):
    reader((0, 2, start))


def test_validation_split_holds_out_the_reference_episodes():
  """The reference holds out default_rng(0).choice(N, round(0.05 N), replace=False) episodes of
  a dataset (docs/data.md, "Windows and the validation split"); a permutation prefix picks other
  episodes."""
  from uwm_jax.data.episodes import split_episodes
  n = 2000
  train, val = split_episodes(np.zeros(n, bool), 0.05, 0)
  reference = np.sort(np.random.default_rng(0).choice(n, 100, replace=False))
  np.testing.assert_array_equal(val, reference)
  assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == n
  # Action-free episodes always train; the robot episodes are chosen among themselves.
  action_free = np.arange(40) % 4 == 0
  train, val = split_episodes(action_free, 0.1, 0)
  robot = np.flatnonzero(~action_free)
  np.testing.assert_array_equal(val, np.sort(robot[np.random.default_rng(0).choice(30, 3,
                                                                                     replace=False)]))
