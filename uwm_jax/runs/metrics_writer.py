"""Metrics to the workdir: JSON lines (`metrics.jsonl`), TensorBoard events (`tensorboard/`),
optionally Weights & Biases. Only process 0 writes; other processes get a no-op writer.

TensorBoard uses tensorboardX when installed, else `tf.summary` (tensorflow), else it is off
with a warning. Every record is one JSON object per line: {"step": int, "split": "train" |
"eval", <metric>: float, ...}.

The workdir may be a gs:// URL (`uwm_jax.runs.storage`): an object cannot be appended to, so
metrics.jsonl is then uploaded whole, at most every `GCS_UPLOAD_EVERY_S` seconds and at every
`flush` (the training loop flushes before each checkpoint) and `close`. TensorBoard events are
then written to a local temporary folder and uploaded (whole files, `storage.write_atomic`) at
the same moments: tensorboardX's own gs:// writer would re-upload at garbage collection, after
`close`, and so hang a process whose bucket is gone (an emulator) for two minutes of retries.
"""

import json
import logging
import math
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

import jax

from uwm_jax.runs import storage

log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
GCS_UPLOAD_EVERY_S = 30.0  # metrics.jsonl on gs://: at most one upload per this many seconds


class _TensorBoard:

  def __init__(self, logdir: str):
    self._tbx = self._tf = None
    self._remote = logdir if storage.is_url(logdir) else None  # uploaded from a local folder
    if self._remote:
      logdir = tempfile.mkdtemp(prefix="uwm_tensorboard_")
    self._logdir = logdir
    try:
      # Late: optional writers, the first one installed is used.
      import tensorboardX  # pylint: disable=import-outside-toplevel
      self._tbx = tensorboardX.SummaryWriter(logdir)
      return
    except ImportError:
      pass
    try:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      self._tf = tf
      self._writer = tf.summary.create_file_writer(logdir)
    except ImportError:
      log.warning("Neither tensorboardX nor tensorflow is installed: no TensorBoard events "
                  "(metrics still go to %s).", METRICS_FILENAME)

  def scalars(self, step: int, values: Dict[str, float], prefix: str):
    if self._tbx is not None:
      for k, v in values.items():
        self._tbx.add_scalar(f"{prefix}/{k}", v, step)
    elif self._tf is not None:
      with self._writer.as_default():
        for k, v in values.items():
          self._tf.summary.scalar(f"{prefix}/{k}", v, step=step)

  def _upload(self):
    if self._remote is None:
      return
    for folder, _, names in os.walk(self._logdir):
      for name in names:
        local = os.path.join(folder, name)
        storage.write_atomic(os.path.join(self._remote, os.path.relpath(local, self._logdir)),
                             storage.read_bytes(local))

  def flush(self):
    if self._tbx is not None:
      self._tbx.flush()
    elif self._tf is not None:
      self._writer.flush()
    self._upload()

  def close(self):
    if self._tbx is not None:
      self._tbx.close()
    elif self._tf is not None:
      self._writer.close()
    self._upload()
    if self._remote is not None:
      shutil.rmtree(self._logdir, ignore_errors=True)


class MetricWriter:
  """write(step, metrics, split) appends to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, wandb_project: str = "",
               config: Optional[Any] = None, enabled: Optional[bool] = None,
               resume_step: Optional[int] = None):
    """resume_step: the step training restarts from; rows of later steps (written by a killed
    run, which the resumed run replays) are dropped first, so each step has one row."""
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = self._wandb = self._file = None
    if not self.enabled:
      return
    storage.makedirs(workdir)
    self.path = os.path.join(workdir, METRICS_FILENAME)
    if resume_step is not None:
      drop_rows_after(self.path, resume_step)
    self._file = storage.AppendableFile(self.path, upload_every_s=GCS_UPLOAD_EVERY_S)
    if tensorboard:
      self._tb = _TensorBoard(os.path.join(workdir, TENSORBOARD_DIRNAME))
    if wandb_project:
      # Late: optional (pip install wandb).
      import wandb  # pylint: disable=import-outside-toplevel
      self._wandb = wandb.init(project=wandb_project, dir=workdir,
                               config=config.to_dict() if config is not None else None,
                               resume="allow")

  def write(self, step: int, metrics: Dict[str, Any], split: str = "train") -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    record = {"step": int(step), "split": split}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
    self._file.write(json.dumps(record) + "\n")
    if self._tb is not None:
      self._tb.scalars(step, {k: v for k, v in values.items() if math.isfinite(v)}, split)
    if self._wandb is not None:
      self._wandb.log({f"{split}/{k}": v for k, v in values.items()}, step=int(step))

  def flush(self):
    """Everything written so far reaches the workdir (on gs://: uploaded now)."""
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.finish()


def drop_rows_after(path: str, step: int) -> int:
  """Rewrite a metrics.jsonl without the rows of steps > `step` (and without a half-written
  last line); returns how many lines were dropped."""
  if not storage.exists(path):
    return 0
  lines = storage.read_text(path).splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):
      pass
  if len(kept) == len(lines):
    return 0
  storage.write_atomic(path, "".join(kept))
  log.info("%s: dropped %d rows after step %d (the interrupted run's; they are replayed).",
           path, len(lines) - len(kept), step)
  return len(lines) - len(kept)


def read_metrics(workdir: str, split: Optional[str] = "train") -> List[dict]:
  """The records of `metrics.jsonl` (of one split, or all when None), in file order."""
  path = os.path.join(workdir, METRICS_FILENAME)
  out = []
  for line in storage.read_text(path).splitlines():
    if line.strip():
      rec = json.loads(line)
      if split is None or rec.get("split") == split:
        out.append(rec)
  return out
