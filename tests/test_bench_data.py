"""The data benchmark's split into the main process's part and a worker's part
(benchmarks/data_split.py; `python -m benchmarks.data --mode=split`): both handoffs
measure real batches, and the cores-needed arithmetic."""

import os

import numpy as np
import pytest

from configs import tiny
from benchmarks import data_split
from uwm_jax.data import batch_slots
from uwm_jax.data import loader as loader_lib


def _handoffs():
  out = [data_split.GrainHandoff]
  if batch_slots.supported():
    out.append(lambda: data_split.SlotHandoff(max_slots=3))
  return out


@pytest.mark.parametrize("make", _handoffs(), ids=["grain", "slots"][:len(_handoffs())])
def test_both_parts_time_the_loaders_batches_through_each_handoff(make):
  loader = loader_lib.make_train_loader(tiny.get_config(), process_index=0, process_count=1)
  batches = [next(loader) for _ in range(3)]
  handoff = make()
  received = []

  def place(batch):  # what the main process puts on the devices: the batch as it was sent
    received.append({k: np.array(v) for k, v in batch.items()})
    return data_split.local_placer()(batch)

  try:
    serial = data_split.serial_rate(batches, place, handoff, seconds=0.05, transfer_copy=True)
    worker = data_split.worker_rate(loader.read_batch, handoff, seconds=0.05, first=0)
  finally:
    handoff.close()
  total = serial.total
  assert total.windows % (3 * loader.batch_size) == 0 and total.windows >= 3 * loader.batch_size
  assert worker.windows >= loader.batch_size and worker.windows % loader.batch_size == 0
  assert 0 < serial.transfer.cpu_seconds < total.cpu_seconds  # the copy is part of the total
  assert serial.thread.windows_per_s > total.windows_per_s > 0 and worker.windows_per_s > 0
  for got, want in zip(received, batches * (len(received) // 3)):
    assert sorted(got) == sorted(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  if handoff.slot_prefix:
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(handoff.slot_prefix + "_")]


def test_cores_needed_adds_the_workers_and_the_main_process():
  # The main process: 8000 windows/s per core in all, 16000 without the transfer copy.
  serial = data_split.SerialRate(data_split.Rate(8000, seconds=2.0, cpu_seconds=1.0),
                                 data_split.Rate(8000, seconds=1.0, cpu_seconds=0.5))
  worker = data_split.Rate(windows=250, seconds=1.0, cpu_seconds=1.0)
  assert serial.thread.windows_per_s == pytest.approx(16000)
  assert data_split.cores_needed(4000, serial, worker) == pytest.approx(4000 / 250 + 0.5)
  # Above one core of main process in all is fine (the runtime copies in threads of its own)...
  assert data_split.cores_needed(12000, serial, worker) == pytest.approx(12000 / 250 + 1.5)
  # ... above one core of the Python thread is not.
  assert data_split.cores_needed(17000, serial, worker) is None
