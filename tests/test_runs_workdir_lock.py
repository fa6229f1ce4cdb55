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


# ---------------------------------------------------------------- holders on another host
# A trainer on another node of a shared filesystem: a subprocess whose host name is patched
# (this machine cannot run a second host), holding the lock with the real WorkdirLock.
_REMOTE_HOLDER = """
import socket, sys, time
socket.gethostname = lambda: "node-b"
from uwm_jax.runs import workdir_lock
lock = workdir_lock.WorkdirLock(sys.argv[1], heartbeat_interval_s=float(sys.argv[2]))
lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def remote_holder(tmp_path):
  """start(interval_s, **env) -> the subprocess holding tmp_path's lock from host node-b."""
  procs = []

  def start(interval_s, **env):
    proc = subprocess.Popen([sys.executable, "-c", _REMOTE_HOLDER, str(tmp_path), str(interval_s)],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, **env))
    procs.append(proc)
    assert proc.stdout.readline() == "held\n"
    return proc

  yield start
  for proc in procs:
    proc.kill()
    proc.wait()


def _holder(workdir):
  with open(os.path.join(workdir, workdir_lock.LOCK_FILENAME)) as f:
    return json.load(f)


def test_a_live_holder_on_another_host_is_never_taken_over(tmp_path, remote_holder):
  """It refreshes its heartbeat while the second trainer waits: the wait ends in an error
  after about one heartbeat interval, long before the lock could count as stale."""
  remote_holder(0.2)
  t0 = time.monotonic()
  with pytest.raises(workdir_lock.WorkdirLockedError, match="refreshed its heartbeat"):
    workdir_lock.WorkdirLock(str(tmp_path), heartbeat_interval_s=0.2,
                             stale_after_s=30.0).acquire()
  assert time.monotonic() - t0 < 10
  assert _holder(tmp_path)["host"] == "node-b"


def test_a_dead_holder_on_another_host_is_waited_out(tmp_path, remote_holder, caplog):
  """Killed uncleanly (kill -9, a node failure): its heartbeat stops; the next trainer says
  it waits, and takes the workdir over once the heartbeat is stale_after_s old."""
  proc = remote_holder(0.2)
  proc.kill()
  proc.wait()
  stale_after_s = 1.5
  caplog.set_level("INFO", logger=workdir_lock.__name__)
  t0 = time.monotonic()
  with workdir_lock.WorkdirLock(str(tmp_path), heartbeat_interval_s=0.2,
                                stale_after_s=stale_after_s):
    waited = time.monotonic() - t0
    assert _holder(tmp_path)["pid"] == os.getpid()
  assert stale_after_s - 0.5 < waited < stale_after_s + 5
  assert "held by PID" in caplog.text and "on another host" in caplog.text
  assert "Replacing the stale workdir lock" in caplog.text and "heartbeat is" in caplog.text


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock(tmp_path, remote_holder,
                                                               monkeypatch):
  """The lock names the SLURM job and its restart count; a requeued run of the same job (a
  higher SLURM_RESTART_COUNT) replaces it at once, even from another node with the heartbeat
  fresh: SLURM has ended the earlier run before requeueing."""
  proc = remote_holder(0.2, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="1")
  assert _holder(tmp_path)["slurm_job_id"] == "4242"
  assert _holder(tmp_path)["slurm_restart_count"] == 1
  # Another job, or the same run of this job (e.g. a second srun step): a live holder.
  for job, restart in (("999", "5"), ("4242", "1")):
    monkeypatch.setenv("SLURM_JOB_ID", job)
    monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
    with pytest.raises(workdir_lock.WorkdirLockedError, match="PID"):
      workdir_lock.WorkdirLock(str(tmp_path), heartbeat_interval_s=0.2,
                               stale_after_s=5.0).acquire()
  proc.kill()  # what SLURM does to a job's processes before it requeues it
  proc.wait()
  monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
  t0 = time.monotonic()
  with workdir_lock.WorkdirLock(str(tmp_path), stale_after_s=5.0):
    assert time.monotonic() - t0 < 2.5  # taken at once, not waited out
    assert _holder(tmp_path)["slurm_restart_count"] == 2
  assert workdir_lock.stale_reason(
      {"host": "node-b", "pid": 1, "heartbeat": time.time(), "slurm_job_id": "4242",
       "slurm_restart_count": 1}, host="node-a", now=time.time(),
      job=workdir_lock.slurm_job({"SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "2"})
  ).startswith("it was taken by restart 1 of this SLURM job 4242")


def test_a_holder_whose_lock_was_replaced_stops_at_once(tmp_path):
  """Its heartbeat stalled past stale_after_s and another run took the workdir: at its next
  heartbeat it ends its process (exit status 2) with one error line."""
  proc = subprocess.Popen([sys.executable, "-c", _REMOTE_HOLDER, str(tmp_path), "0.1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline() == "held\n"
    _write_lock(str(tmp_path), host="node-c", pid=1, started="x", heartbeat=time.time())
    _, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 2, err
  assert "was taken over by PID 1 on host node-c" in err
  assert _holder(tmp_path)["host"] == "node-c"
