"""gs:// workdirs against a real GCS JSON API server on 127.0.0.1 (fake-gcs-server, started by
tests/gcs_emulator.py): the storage layer, the workdir lock's exclusivity, and configs/tiny.py
trained to gs://bucket/run, killed with -9, resumed bit-identically with more steps, evaluated
and finetuned from (init_from) the bucket. The trained run is the core-only install's
(.venv-core: no extras, to a bucket, resumed from it) where .ci/run built that environment, else
this interpreter's. Only STORAGE_EMULATOR_HOST is set, as a user would;
uwm_jax.runs.storage derives TensorStore's variables from it.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import jax
import numpy as np
import pytest

from tests import gcs_emulator
from tests.helpers import CORE_PYTHON, FAST_COMPILE
from tests.test_train_processes import _cli, _config, _losses, _wait_for
from uwm_jax.data import sources as sources_lib
from uwm_jax.evaluation import evaluator
from uwm_jax.policies import inference_checkpoint
from uwm_jax.runs import checkpoint as ckpt
from uwm_jax.runs import checksums, storage, workdir_lock
from uwm_jax.training import loop, preflight, resume

pytestmark = pytest.mark.skipif(gcs_emulator.missing_reason() is not None,
                                reason=str(gcs_emulator.missing_reason()))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bucket"
RUN = f"gs://{BUCKET}/run"
# Orbax saves the first step, then every SAVE_EVERY: the CLI run is killed once step 1 is on the
# bucket, with 5 steps to spare; the rerun asks for more steps and saves steps 4 and 8.
KILLED_STEPS, RESUMED_STEPS = 7, 8
SAVE_EVERY = 4


@pytest.fixture(scope="module")
def emulator():
  """One server for the module; STORAGE_EMULATOR_HOST set here and for every subprocess."""
  with gcs_emulator.serving(buckets=(BUCKET,)) as emu:
    yield emu


def _fresh(prefix: str) -> str:
  return f"gs://{BUCKET}/{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------ storage
def test_write_atomic_leaves_no_temporary_file_locally(tmp_path):
  path = str(tmp_path / "stats.json")
  for text in ("one", "two"):
    storage.write_atomic(path, text)
  assert storage.read_text(path) == "two"
  assert os.listdir(tmp_path) == ["stats.json"]
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_files_on_a_bucket(emulator):
  root = _fresh("files")
  storage.makedirs(root)  # nothing to create on a bucket
  assert not storage.exists(root) and storage.listdir(root) == []
  storage.write_atomic(f"{root}/a.json", '{"x": 1}')
  storage.write_atomic(f"{root}/a.json", '{"x": 2}')  # replaced whole
  assert json.loads(storage.read_text(f"{root}/a.json")) == {"x": 2}
  assert storage.isdir(root) and storage.listdir(root) == ["a.json"]
  # Appending: an object is uploaded whole, at flush/close (or every upload_every_s).
  log = storage.AppendableFile(f"{root}/m.jsonl", upload_every_s=3600)
  log.write("1\n")
  assert not storage.exists(f"{root}/m.jsonl")
  log.flush()
  log.write("2\n")
  assert storage.read_text(f"{root}/m.jsonl") == "1\n"
  log.close()
  again = storage.AppendableFile(f"{root}/m.jsonl")  # a resumed run appends after it
  again.write("3\n")
  again.close()
  assert storage.read_text(f"{root}/m.jsonl") == "1\n2\n3\n"
  with storage.local_file(f"{root}/videos/v.gif") as local:
    with open(local, "wb") as f:
      f.write(b"GIF89a")
  assert storage.read_bytes(f"{root}/videos/v.gif") == b"GIF89a"
  storage.move(f"{root}/videos", f"{root}/moved")
  assert storage.listdir(root) == ["a.json", "m.jsonl", "moved"]


def test_exclusive_create_read_and_delete_on_a_bucket(emulator):
  path = f"{_fresh('lock')}/lock.json"
  version = storage.create_exclusive(path, b"first")
  with pytest.raises(FileExistsError):
    storage.create_exclusive(path, b"second")  # ifGenerationMatch=0: the object exists
  data, found = storage.read_versioned(path)
  assert (data, found) == (b"first", version)
  assert storage.delete(path, if_version=found)
  assert storage.read_versioned(path) is None and not storage.delete(path)
  with pytest.raises(FileNotFoundError, match="bucket does not exist"):
    storage.create_exclusive("gs://no-such-bucket/run/lock.json", b"x")


# ------------------------------------------------------------------------------------ lock
_CONTENDER = """
import sys, time
from uwm_jax.runs import workdir_lock
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
  lock = workdir_lock.WorkdirLock(sys.argv[1]).acquire()
except workdir_lock.WorkdirLockedError:
  print("locked", flush=True)
  sys.exit(0)
print("held", flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin
lock.release()
"""


def _contenders(workdir: str, count: int, start_in_s: float = 6.0):
  start = time.time() + start_in_s  # every contender imported and waiting by then
  return [subprocess.Popen([sys.executable, "-c", _CONTENDER, workdir, str(start)], cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=REPO), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True) for _ in range(count)]


def test_two_trainers_starting_at_once_on_a_bucket_one_wins(emulator):
  workdir = _fresh("race")
  procs = _contenders(workdir, 2)
  try:
    answers = [p.stdout.readline().strip() for p in procs]
    assert sorted(answers) == ["held", "locked"], answers
    holder = procs[answers.index("held")]
    # A live holder on this host refuses this process too, naming it.
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"PID {holder.pid} on host"):
      workdir_lock.WorkdirLock(workdir).acquire()
    holder.kill()  # kill -9: the lock stays behind, stale (its PID is gone)
    holder.wait(timeout=30)
    with workdir_lock.WorkdirLock(workdir) as lock:
      assert json.loads(storage.read_text(lock.path))["pid"] == os.getpid()
    assert not storage.exists(lock.path)  # released
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait(timeout=30)


def test_another_hosts_lock_on_a_bucket_is_respected_while_it_beats_then_waited_out(emulator):
  """A holder on another host that refreshes its heartbeat stops the second trainer; once it
  falls silent, the second trainer waits until the heartbeat is stale and takes over."""
  workdir = _fresh("hosts")
  path = f"{workdir}/{workdir_lock.LOCK_FILENAME}"
  record = {"host": f"not-{socket.gethostname()}", "pid": 1, "started": "x"}
  stop = threading.Event()

  def beat():
    while not stop.wait(0.3):
      storage.write_atomic(path, json.dumps({**record, "heartbeat": time.time()}))

  storage.write_atomic(path, json.dumps({**record, "heartbeat": time.time()}))
  beating = threading.Thread(target=beat)
  beating.start()
  try:
    with pytest.raises(workdir_lock.WorkdirLockedError, match="refreshed its heartbeat"):
      workdir_lock.WorkdirLock(workdir, heartbeat_interval_s=0.3, stale_after_s=30).acquire()
  finally:
    stop.set()
    beating.join()
  with workdir_lock.WorkdirLock(workdir, heartbeat_interval_s=0.3, stale_after_s=2.0):
    assert json.loads(storage.read_text(path))["host"] == socket.gethostname()


# ------------------------------------------------------------------------------------ paths
def test_gcs_workdir_is_accepted_and_other_urls_are_refused(emulator):
  preflight.prepare_workdir(RUN)  # defect 2: this raised "use a filesystem path ... not a URL"
  for bad in ("s3://bucket/run", "gs://"):
    with pytest.raises(ValueError):
      preflight.prepare_workdir(bad)
  with pytest.raises(FileNotFoundError, match="bucket gs://no-such-bucket does not exist"):
    preflight.prepare_workdir("gs://no-such-bucket/run")
  with pytest.raises(FileNotFoundError, match="does not exist"):  # never created by gcsfs
    ckpt.make_manager("gs://no-such-bucket/run/checkpoints")
  assert not storage.isdir("gs://no-such-bucket")


def test_a_dataset_on_a_bucket_is_one_line_saying_to_mount_it():
  config = _config()
  config.data.sources.synthetic.path = "gs://bucket/droid"
  with pytest.raises(ValueError) as err:
    sources_lib.check_sources(config)
  message = str(err.value)
  assert len(message.splitlines()) == 1
  assert "config.data.sources.synthetic.path=gs://bucket/droid" in message
  assert "gcsfuse" in message and "-o ro" in message


# ------------------------------------------------------------------------------------ training
def _bucket_steps(workdir: str):
  return ckpt.finished_steps(ckpt.checkpoint_dir(workdir))


@pytest.fixture(scope="module")
def gcs_run(emulator, tmp_path_factory):
  """tiny.py trained to gs://bucket/run by the CLI, killed with -9 after its first checkpoint,
  rerun with more steps; beside it the same run uninterrupted, locally (in this process). The
  CLI is the core venv's where it exists (the same pinned jax: the same bits)."""
  extra = {"train.save_every": SAVE_EVERY, "train.tensorboard": True}
  python = CORE_PYTHON if os.path.exists(CORE_PYTHON) else sys.executable
  proc = _cli(RUN, num_steps=KILLED_STEPS, python=python, **extra)
  try:
    # Each look lists the bucket (HTTP requests the emulator answers): every 0.1 s, not 0.02 s,
    # leaves the 2 cores to the run being watched.
    reached = _wait_for(proc, lambda: bool(_bucket_steps(RUN)), timeout=400, poll_s=0.1)
    os.kill(proc.pid, signal.SIGKILL)
    output = proc.communicate(timeout=60)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert reached, f"the run committed no checkpoint to the bucket:\n{output[-3000:]}"
  assert proc.returncode == -signal.SIGKILL
  killed = {"steps": _bucket_steps(RUN), "losses": _losses(RUN)}
  assert max(killed["steps"]) < KILLED_STEPS, "the run finished before it was killed"

  resumed = _cli(RUN, num_steps=RESUMED_STEPS, python=python, **extra)
  output = resumed.communicate(timeout=400)[0]
  assert resumed.returncode == 0, output[-4000:]
  assert f"Resumed from {RUN}/checkpoints at step {max(killed['steps'])}" in output, \
      output[-4000:]

  reference = str(tmp_path_factory.mktemp("reference"))
  loop.train(_config(num_steps=RESUMED_STEPS, **extra), reference)
  return {"killed": killed, "reference": reference}


@pytest.mark.slow
def test_a_run_on_a_bucket_killed_and_resumed_matches_an_uninterrupted_run(gcs_run):
  reference = gcs_run["reference"]
  losses = _losses(RUN)  # metrics.jsonl read from the bucket
  assert sorted(losses) == list(range(1, RESUMED_STEPS + 1))
  assert all(len(v) == 1 for v in losses.values())  # the killed run's extra rows are dropped
  want = {s: v[0] for s, v in _losses(reference).items()}
  assert {s: v[0] for s, v in losses.items()} == want
  # The final params, read back from the bucket, are bit-identical.
  got = ckpt.load_params_checkpoint(ckpt.checkpoint_dir(RUN), RESUMED_STEPS)
  ref = ckpt.load_params_checkpoint(ckpt.checkpoint_dir(reference), RESUMED_STEPS)
  for a, b in zip(jax.tree.leaves(got[:2]), jax.tree.leaves(ref[:2])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_a_bucket_run_commits_without_renames_and_writes_everything_there(gcs_run):
  del gcs_run
  steps = _bucket_steps(RUN)
  assert steps == [RESUMED_STEPS - SAVE_EVERY, RESUMED_STEPS]  # keep_last=2
  names = storage.listdir(ckpt.checkpoint_dir(RUN))
  assert sorted(names) == [str(s) for s in steps]  # no temporary (to-be-renamed) folder
  for step in steps:
    folder = f"{ckpt.checkpoint_dir(RUN)}/{step}"
    assert storage.exists(f"{folder}/commit_success.txt")  # Orbax's commit on GCS
    assert checksums.verify(folder)  # its checksums.json, written through gcsfs, verifies
  top = storage.listdir(RUN)
  assert {"metrics.jsonl", resume.STATS_FILENAME, "tensorboard", "checkpoints"} <= set(top)
  assert workdir_lock.LOCK_FILENAME not in top  # released at the end
  assert any(n.startswith("events.out.tfevents") for n in storage.listdir(f"{RUN}/tensorboard"))
  stats = json.loads(storage.read_text(f"{RUN}/{resume.STATS_FILENAME}"))
  assert stats == ckpt.load_params_checkpoint(ckpt.checkpoint_dir(RUN))[3]


@pytest.mark.slow
def test_evaluate_and_serve_load_a_checkpoint_from_the_bucket(gcs_run):
  del gcs_run
  overrides = {"offline_num_batches": 1, "prediction_videos": False}
  result = evaluator.evaluate_checkpoint(RUN, eval_overrides=overrides, progress=False)
  assert result.step == RESUMED_STEPS
  assert np.isfinite(result.metrics["offline/action_mse_marginal"])
  assert result.output_dir == f"{RUN}/eval/step_{RESUMED_STEPS}"
  saved = json.loads(storage.read_text(f"{result.output_dir}/metrics.json"))
  assert saved["metrics"] == pytest.approx(result.metrics)
  rows = [json.loads(line) for line in
          storage.read_text(f"{RUN}/eval/metrics.jsonl").splitlines()]
  assert [r["step"] for r in rows] == [RESUMED_STEPS]
  assert evaluator.evaluated_steps(ckpt.checkpoint_dir(RUN)) == [RESUMED_STEPS]
  # The policy server's loader (uwm_jax.serve) reads the same checkpoint.
  loaded = inference_checkpoint.load_checkpoint(f"{RUN}/checkpoints")
  assert loaded.step == RESUMED_STEPS and loaded.directory == ckpt.checkpoint_dir(RUN)


@pytest.mark.slow
def test_a_latent_cache_is_built_from_a_bucket_checkpoint_into_a_local_folder(gcs_run, tmp_path):
  del gcs_run  # its checkpoint
  from uwm_jax.model import latent_cache_builder  # pylint: disable=import-outside-toplevel
  config = _config()
  metas = latent_cache_builder.build_latent_caches_from_checkpoint(
      config, ckpt.checkpoint_dir(RUN), str(tmp_path), batch_size=8)
  assert len(metas["synthetic"]["episodes"]) == config.data.sources.synthetic.num_episodes
  with pytest.raises(ValueError, match="mount the bucket"):
    latent_cache_builder.build_latent_caches_from_checkpoint(
        config, ckpt.checkpoint_dir(RUN), f"{RUN}/latents")


def test_init_from_a_bucket_checkpoint(emulator, tmp_path):
  """`--config.init_from=gs://.../checkpoints/<step>` (written as `import_weights --out`
  writes it) initialises the params of a new local run."""
  from uwm_jax.model.uwm import UnifiedWorldModel  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import optimizer as optim_lib  # pylint: disable=import-outside-toplevel
  from uwm_jax.training import sharded_state  # pylint: disable=import-outside-toplevel
  cfg = _config()
  cfg.train.compiler_options = FAST_COMPILE
  model = UnifiedWorldModel(cfg.model)
  tx = optim_lib.make_optimizer(cfg.optim, cfg.num_steps)
  mesh = mesh_lib.make_mesh((8, 1, 1))
  abstract = sharded_state.abstract_train_state(model, tx, False)
  shardings = sharded_state.train_state_shardings(abstract, mesh, cfg.train.partition_rules,
                                                  cfg.train.fsdp_min_size, log_decisions=False)
  pretrained = sharded_state.init_train_state(model, tx, jax.random.key(7), shardings, False,
                                              FAST_COMPILE)
  params = jax.tree.map(lambda x: x + 0.25, jax.device_get(pretrained.params))
  stats = {"action": {"min": [-1.0] * 4, "max": [1.0] * 4}}
  init_dir = f"{_fresh('init')}/checkpoints"
  ckpt.save_params_checkpoint(init_dir, params=params, frozen=jax.device_get(pretrained.frozen),
                              config=cfg, dataset_stats=stats, step=3)
  cfg.init_from = f"{init_dir}/3"
  workdir = str(tmp_path / "finetune")
  preflight.check_inputs(cfg, workdir)
  manager = ckpt.make_manager(ckpt.checkpoint_dir(workdir))
  start, state, _, got_stats, _ = resume.build_state(cfg, model, tx, mesh, manager)
  manager.close()
  assert start == 0 and got_stats == stats
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  cfg.init_from = f"{_fresh('missing')}/checkpoints"
  with pytest.raises(FileNotFoundError, match="does not exist"):
    preflight.check_inputs(cfg, workdir)
