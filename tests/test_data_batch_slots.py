"""Reused shared-memory slots between grain workers and the main process (data/batch_slots.py):
the data bit for bit, a slot reused only once every view of its batch is gone, names cleaned up.
The loader's use of them with real worker processes: tests/test_data_droid.py."""

import gc
import os

import numpy as np
import pytest

from uwm_jax.data import batch_slots

pytestmark = pytest.mark.skipif(not batch_slots.supported(), reason="needs /dev/shm (Linux)")


def _samples(n, seed):
  rng = np.random.default_rng(seed)
  return [{"obs": rng.integers(0, 256, (3, 2, 6, 10, 3), np.uint8),
           "action": rng.standard_normal((16, 10)).astype(np.float32),
           "next_latent_mean": rng.standard_normal((3, 4, 2, 3, 3)).astype(np.float16),
           "action_mask": np.bool_(i % 3), "source": np.int32(i)} for i in range(n)]


def _names(prefix):
  return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix + "_"))


@pytest.fixture
def prefix():
  p = batch_slots.new_prefix()
  yield p
  batch_slots.remove_slots(p)


def test_a_batch_in_a_slot_is_the_stacked_samples_bit_for_bit(prefix):
  writer, reader = batch_slots.SlotWriter(prefix, max_slots=2), batch_slots.SlotReader()
  samples = _samples(5, 0)
  batch = reader(writer.write(samples))
  assert sorted(batch) == sorted(samples[0])
  for key, value in batch.items():
    want = np.stack([s[key] for s in samples])
    assert value.dtype == want.dtype and value.shape == want.shape, key
    assert value.tobytes() == want.tobytes(), key
    assert value.ctypes.data % 64 == 0, key  # every array starts aligned
  # A plain dict (grain's own handoff, when every slot is in use) passes through unchanged.
  plain = {"obs": np.zeros(3)}
  assert reader(plain) is plain
  assert (reader.slot_batches, reader.other_batches) == (1, 1)


def test_a_slot_is_reused_only_after_every_view_of_its_batch_is_gone(prefix):
  writer, reader = batch_slots.SlotWriter(prefix, max_slots=2), batch_slots.SlotReader()
  first = reader(writer.write(_samples(4, 1)))
  second = reader(writer.write(_samples(4, 2)))
  assert len(_names(prefix)) == 0  # the reader removed the names once it had mapped them
  assert writer.write(_samples(4, 3)) is None  # both slots in use: the caller hands over plainly
  # Views of a batch (slices, np.asarray, reshapes: what the device placement makes) keep the
  # slot in use after the batch's own dict is gone.
  kept = np.asarray(first["obs"][1:3]).reshape(-1)
  want = kept.copy()
  del first
  gc.collect()
  assert writer.write(_samples(4, 4)) is None
  np.testing.assert_array_equal(kept, want)
  del kept
  third_ref = writer.write(_samples(4, 5))
  assert third_ref is not None
  third = reader(third_ref)
  np.testing.assert_array_equal(third["obs"], np.stack([s["obs"] for s in _samples(4, 5)]))
  np.testing.assert_array_equal(second["obs"], np.stack([s["obs"] for s in _samples(4, 2)]))
  assert len(reader._maps) == 2  # pylint: disable=protected-access  # no third slot was made


def test_names_of_slots_never_received_are_removed(prefix):
  writer = batch_slots.SlotWriter(prefix, max_slots=3)
  for seed in range(3):
    assert writer.write(_samples(2, seed)) is not None  # in flight when the pipeline closes
  assert len(_names(prefix)) == 3
  batch_slots.remove_slots(prefix)
  assert _names(prefix) == []


def test_too_little_shared_memory_is_one_clear_error(prefix, monkeypatch):
  class Full:
    f_bavail, f_frsize = 0, 4096
  monkeypatch.setattr(batch_slots.os, "statvfs", lambda path: Full())
  with pytest.raises(OSError, match=r"/dev/shm has 0 MiB free.*--shm-size"):
    batch_slots.SlotWriter(prefix, max_slots=1).write(_samples(4, 0))
  assert _names(prefix) == []
