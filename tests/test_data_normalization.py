"""normalize / denormalize on numpy and jax; zero ranges; global batches on a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from uwm_jax.data import normalization
from uwm_jax.training.global_batch import host_batch_to_global


def test_normalize_maps_range_to_unit_interval_and_round_trips():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 4)) * [1, 10, 0.1, 3] + [0, 5, -2, 1]
  stats = normalization.minmax_entry(x.min(0), x.max(0))
  xn = normalization.normalize(x, stats)
  np.testing.assert_allclose(xn.min(0), -1, atol=1e-5)
  np.testing.assert_allclose(xn.max(0), 1, atol=1e-5)
  np.testing.assert_allclose(normalization.denormalize(xn, stats), x, rtol=1e-5, atol=1e-5)
  scale, offset = normalization.scale_offset(stats)
  np.testing.assert_allclose(scale, (x.max(0) - x.min(0)) / 2, rtol=1e-6)
  np.testing.assert_allclose(offset, (x.max(0) + x.min(0)) / 2, rtol=1e-6, atol=1e-6)
  # The same functions on jax arrays (also under jit).
  xj = jnp.asarray(x, jnp.float32)
  out = jax.jit(lambda v: normalization.denormalize(normalization.normalize(v, stats), stats))(xj)
  assert isinstance(out, jax.Array)
  np.testing.assert_allclose(np.asarray(out), x, rtol=1e-4, atol=1e-4)


def test_zero_range_maps_to_zero_without_nan():
  stats = normalization.minmax_entry([2.0, -1.0], [2.0, 1.0])
  x = np.array([[2.0, 0.5], [2.0, -1.0]])
  xn = normalization.normalize(x, stats)
  assert np.isfinite(xn).all()
  np.testing.assert_array_equal(xn[:, 0], 0.0)
  np.testing.assert_allclose(normalization.denormalize(xn, stats), x)


def test_host_batch_to_global_on_a_mesh():
  devices = np.array(jax.devices()[:8]).reshape(2, 4)
  mesh = Mesh(devices, ("data", "fsdp"))
  batch = {"obs": np.arange(8 * 2 * 3, dtype=np.uint8).reshape(8, 2, 3),
           "action_mask": np.arange(8) % 2 == 0}
  out = host_batch_to_global(batch, mesh, PartitionSpec(("data", "fsdp")))
  for k, v in batch.items():
    assert out[k].shape == v.shape and out[k].dtype == v.dtype
    np.testing.assert_array_equal(np.asarray(out[k]), v)
    assert len(out[k].sharding.device_set) == 8
