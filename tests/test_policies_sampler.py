"""BatchedSampler: a batch split into concurrent calls answers as one call does."""

import threading

import jax
import numpy as np
import pytest

from uwm_jax import sampling
from uwm_jax.model.uwm import UnifiedWorldModel
from uwm_jax.policies.sampler import BatchedSampler, split_sizes
from tests.helpers import tiny_push_config


@pytest.mark.parametrize("n, parts, max_size, want", [
    (4, 2, 4, [2, 2]), (5, 2, 4, [3, 2]), (1, 2, 4, [1]), (3, 4, 4, [1, 1, 1]),
    (9, 1, 4, [3, 3, 3]), (8, 1, 8, [8]), (0, 2, 4, [])])
def test_split_sizes(n, parts, max_size, want):
  assert split_sizes(n, parts, max_size) == want


def _requests(model, n):
  d = model.dims
  H, W = model.cfg.image_shape
  rng = np.random.default_rng(0)
  return [{"obs": rng.integers(0, 256, (len(model.cfg.camera_keys), d.num_obs_frames, H, W, 3),
                               dtype=np.uint8)} for _ in range(n)]


def test_parallel_calls_answer_as_one_call_and_run_concurrently():
  config = tiny_push_config()
  model = UnifiedWorldModel(config.model)
  params, frozen = model.init(jax.random.PRNGKey(0))
  requests = _requests(model, 4)
  keys = [(7, i) for i in range(4)]
  one_call = BatchedSampler(model, config.diffusion, params, frozen, sampling.POLICY, (1, 2, 4))
  split = BatchedSampler(model, config.diffusion, params, frozen, sampling.POLICY, (1, 2, 4),
                         parallel_calls=2)
  want = one_call(requests, keys)

  parts = []  # (thread name, requests in the call)
  run = split._run  # pylint: disable=protected-access
  barrier = threading.Barrier(2, timeout=60)

  def recording_run(reqs, ks):
    parts.append((threading.current_thread().name, len(reqs)))
    barrier.wait()  # both parts are in flight at once, or this times out
    return run(reqs, ks)

  split._run = recording_run  # pylint: disable=protected-access
  got = split(requests, keys)
  assert sorted(n for _, n in parts) == [2, 2]
  assert len({name for name, _ in parts}) == 2
  assert len(got) == 4
  for g, w in zip(got, want):
    # Batch sizes 2 and 4 are separately compiled executables: equal up to float rounding.
    np.testing.assert_allclose(g["action"], w["action"], atol=2e-4)
  # The answers are in request order and differ per request (their own keys and observations).
  assert not np.allclose(got[0]["action"], got[1]["action"])


def test_parallel_calls_must_be_positive():
  config = tiny_push_config()
  model = UnifiedWorldModel(config.model)
  with pytest.raises(ValueError, match="parallel_calls"):
    BatchedSampler(model, config.diffusion, {}, {}, sampling.POLICY, (1,), parallel_calls=0)
