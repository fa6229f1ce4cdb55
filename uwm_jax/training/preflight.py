"""Checks before a training run builds anything expensive (train state, compilation, dataset
statistics), so that bad input fails in seconds with one clear error.

  prepare_workdir(workdir)      the workdir exists and is writable (or is a reachable bucket)
  check_inputs(config, workdir) the mesh fits the devices, the datasets exist, and `init_from`
                                exists when the run starts from scratch
  check_batch_size(config, mesh) the global batch splits over the mesh and the processes
"""

import os

import jax
import ml_collections

from uwm_jax.data import sources as sources_lib
from uwm_jax.runs import checkpoint as ckpt_lib
from uwm_jax.runs import storage
from uwm_jax.training import mesh as mesh_lib


def prepare_workdir(workdir: str) -> None:
  """Create the workdir (a filesystem path every host sees, or a gs:// URL); errors say plainly
  when it is another URL, a file or not writable."""
  storage.require_gcs_or_local(workdir, "--workdir")
  if storage.is_gcs(workdir):
    if not os.fspath(workdir)[len(storage.GCS_PREFIX):].strip("/"):
      raise ValueError(f"--workdir={workdir}: name a bucket, e.g. gs://my-bucket/runs/droid.")
    storage.check_bucket(workdir)
    return  # nothing to create on a bucket
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir={workdir} is a file, not a folder.")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"--workdir={workdir} cannot be created ({e.strerror}).") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise PermissionError(f"--workdir={workdir} is not writable.")


def check_inputs(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Cheap checks of everything a run needs: the mesh fits the devices, the datasets exist,
  and `init_from` exists when the run starts from scratch."""
  mesh_lib.resolve_mesh_shape(config.train.mesh_shape, jax.device_count())
  sources_lib.check_sources(config)
  resuming = bool(ckpt_lib.finished_steps(ckpt_lib.checkpoint_dir(workdir)))
  if config.init_from and not resuming:
    directory, _ = ckpt_lib.split_step_folder(config.init_from)
    if not storage.isdir(directory):
      raise FileNotFoundError(f"init_from: checkpoint folder {directory} does not exist.")


def check_batch_size(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """The global batch must split evenly over the mesh's batch shards and the processes."""
  shards = mesh_lib.batch_shards(mesh)
  if config.batch_size % shards:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the {shards} batch "
                     f"shards of the mesh {dict(mesh.shape)} (data x fsdp).")
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                     f"{jax.process_count()} processes.")
