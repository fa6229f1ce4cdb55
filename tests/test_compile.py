"""uwm_jax.compile's library (uwm_jax/training/topology_estimate.py): TPU topology names, the
sweep's candidates, and (with libtpu) the tiny config's train step and policy compiled ahead of
time for a 4-chip v5e topology."""

import importlib.util
import math

import pytest

from tests.helpers import tiny_config
from uwm_jax.training import topology_estimate

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None


def test_friendly_and_jax_topology_names():
  v5p = topology_estimate.resolve_topology("v5p-8")
  assert (v5p.jax_name, v5p.chips, v5p.hbm_gib, v5p.chip_config) == ("v5p:2x2x1", 4, 95,
                                                                    "megacore")
  v5e = topology_estimate.resolve_topology("v5e-8")
  assert (v5e.jax_name, v5e.chips, v5e.hbm_gib) == ("v5e:2x4", 8, 16)
  raw = topology_estimate.resolve_topology("v4:4x4x2")
  assert (raw.chips, raw.hbm_gib, raw.chip_config) == (32, 32, "megacore")
  with pytest.raises(ValueError, match="Unknown topology 'v9-8'"):
    topology_estimate.resolve_topology("v9-8")


def test_sweep_candidates_cover_the_chips():
  for chips in (4, 8, 32):
    meshes = topology_estimate.mesh_candidates(chips)
    assert (chips, 1, 1) in meshes and (1, chips, 1) in meshes
    assert all(math.prod(m) == chips for m in meshes)
  # 144 over 32 batch shards is not whole: the largest multiple below it.
  assert topology_estimate.fit_batch(144, (32, 1, 1)) == 128
  assert topology_estimate.fit_batch(144, (1, 16, 2)) == 144
  assert topology_estimate.fit_batch(8, (1, 16, 2)) == 16


def test_a_chip_without_a_time_estimate_prints_none_not_a_negative_time():
  """libtpu's cost analysis of the DROID step for v4-8 gives optimal_seconds < 0 (measured:
  -322.9): no time, samples/s or MFU is derived from it."""
  setting = dict(batch_size=144, mesh_shape=(4, 1, 1), compute_dtype="bfloat16", remat=False,
                 scan_layers=False, latent_cache=True)
  memory = dict(argument=5, output=1, temp=4, alias=1, generated_code=0, peak=9 << 30)
  rows = [topology_estimate.Estimate("train step", "v4-8", 4, 32 << 30, memory, 5.6e12, 5.7e12,
                               seconds, 144, 275e12, setting) for seconds in (-322.9, 0.05)]
  table = topology_estimate.format_table(rows).splitlines()
  assert "none" in table[1] and "-322" not in table[1] and "nan" not in table[1]
  assert "2880.0" in table[2] and "41.5%" in table[2]  # 144 / 0.05 s; 5.7e12 / 0.05 / 275e12
  text = topology_estimate.format_estimate(rows[0])
  assert "est. time        none" in text and "nan" not in text


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu is not installed "
                    "(pip install -r requirements-tpu.txt compiles for TPUs without one)")
def test_tiny_config_compiles_for_a_tpu_topology():
  topology = topology_estimate.resolve_topology("v5e-4")
  devices = topology_estimate.topology_devices(topology)
  assert len(devices) == 4 and "TPU" in devices[0].device_kind
  config = tiny_config()
  config.train.mesh_shape = (2, 2, 1)  # data x FSDP: the sharded state and batch
  config.train.fsdp_min_size = 1
  e = topology_estimate.estimate_train(config, topology, devices, latent_cache=False)
  assert e.setting["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert 0 < e.memory["peak"] < e.hbm_bytes and e.fits
  assert e.memory["alias"] > 0  # the donated state is updated in place
  # The compiler's FLOPs and the analytic count agree to a factor of 2 (elementwise work,
  # attention softmax and the unrolled 2-block stack differ).
  assert 0.5 < e.compiled_flops / e.analytic_flops < 2.0
  assert e.seconds > 0 and 0 < e.mfu < 1
  # The policy's DDIM loop is unrolled (one copy of the network per step): 2 steps compile in
  # two thirds of the time of the config's 10 and check the same.
  config.diffusion.num_inference_steps = 2
  policy = topology_estimate.estimate_policy(config, topology, devices[0], 2)
  assert policy.fits and policy.seconds > 0 and policy.samples == 2
  assert policy.setting["steps"] == 2


def test_presets_are_config_variants():
  from configs import droid  # pylint: disable=import-outside-toplevel
  c = droid.get_config("dp,v5p-8")
  assert tuple(c.train.mesh_shape) == (1, 4, 1)
  assert c.model.compute_dtype == "bfloat16" and c.model.scan_layers is False
  assert c.model.predict_next_obs is False  # dp still applies
  plain = droid.get_config()
  assert plain.model.compute_dtype == "float32" and plain.model.scan_layers is True
  with pytest.raises(ValueError, match="Unknown config variant 'v9-8'"):
    droid.get_config("v9-8")
