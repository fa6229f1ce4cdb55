"""One workdir, one writer: the workdir lock, and metrics.jsonl rows after a resume."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from uwm_jax.runs import metrics_writer
from uwm_jax.runs import workdir_lock


@pytest.fixture
def other_live_process():
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  yield proc.pid
  proc.kill()
  proc.wait()


def _write_lock(workdir, **record):
  with open(os.path.join(workdir, workdir_lock.LOCK_FILENAME), "w") as f:
    json.dump(record, f)


def test_a_live_holder_is_named_and_refuses_the_second_trainer(tmp_path, other_live_process):
  _write_lock(str(tmp_path), host=socket.gethostname(), pid=other_live_process,
              started="2026-12-01T13:00:00Z", heartbeat=time.time())
  with pytest.raises(workdir_lock.WorkdirLockedError) as err:
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  msg = str(err.value)
  assert len(msg.splitlines()) == 1
  assert f"PID {other_live_process} on host {socket.gethostname()} since 2026-12-01T13:00:00Z" \
      in msg


def test_a_dead_holder_on_this_host_does_not_block_a_restart(tmp_path):
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  _write_lock(str(tmp_path), host=socket.gethostname(), pid=proc.pid, started="x",
              heartbeat=time.time())
  with workdir_lock.WorkdirLock(str(tmp_path)) as lock:
    with open(lock.path) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert not os.path.exists(lock.path)  # released


def test_another_hosts_lock_is_stale_only_after_its_heartbeat_expires():
  now = time.time()
  fresh = {"host": "elsewhere", "pid": 1, "heartbeat": now - 10}
  old = {"host": "elsewhere", "pid": 1, "heartbeat": now - workdir_lock.STALE_AFTER_S - 1}
  assert workdir_lock.stale_reason(fresh, host="here", now=now) is None
  assert "heartbeat" in workdir_lock.stale_reason(old, host="here", now=now)


def test_the_holder_refreshes_its_heartbeat(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), heartbeat_interval_s=0.05) as lock:
    with open(lock.path) as f:
      first = json.load(f)["heartbeat"]
    deadline = time.time() + 10
    while time.time() < deadline:
      time.sleep(0.05)
      with open(lock.path) as f:
        if json.load(f)["heartbeat"] > first:
          break
    else:
      pytest.fail("the heartbeat was never refreshed")


def test_training_refuses_a_locked_workdir_before_building_anything(tmp_path, other_live_process,
                                                                    monkeypatch):
  from configs import tiny
  from uwm_jax.training import loop
  monkeypatch.setattr(loop, "_train", lambda *a: pytest.fail("built the run"))
  _write_lock(str(tmp_path), host=socket.gethostname(), pid=other_live_process, started="x",
              heartbeat=time.time())
  with pytest.raises(workdir_lock.WorkdirLockedError, match=f"PID {other_live_process}"):
    loop.train(tiny.get_config(), str(tmp_path))
  os.remove(os.path.join(tmp_path, workdir_lock.LOCK_FILENAME))
  monkeypatch.setattr(loop, "_train", lambda *a: "trained")
  assert loop.train(tiny.get_config(), str(tmp_path)) == "trained"
  assert not os.path.exists(os.path.join(tmp_path, workdir_lock.LOCK_FILENAME))


def test_resumed_metrics_keep_one_row_per_step(tmp_path):
  writer = metrics_writer.MetricWriter(str(tmp_path), tensorboard=False, enabled=True)
  for step in range(1, 8):
    writer.write(step, {"loss": float(step)})
  writer.write(4, {"mse": 1.0}, "eval")
  writer.close()
  with open(os.path.join(tmp_path, metrics_writer.METRICS_FILENAME), "a") as f:
    f.write('{"step": 8, "spl')  # a line cut by SIGKILL
  writer = metrics_writer.MetricWriter(str(tmp_path), tensorboard=False, enabled=True,
                                       resume_step=4)  # the restored checkpoint
  for step in range(5, 9):
    writer.write(step, {"loss": 10.0 + step})
  writer.close()
  rows = metrics_writer.read_metrics(str(tmp_path), split=None)
  assert [(r["step"], r["split"]) for r in rows] == [
      (1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "eval"),
      (5, "train"), (6, "train"), (7, "train"), (8, "train")]
  assert [r["loss"] for r in rows if r["split"] == "train"][4:] == [15.0, 16.0, 17.0, 18.0]
