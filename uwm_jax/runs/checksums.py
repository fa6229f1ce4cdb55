"""Checksums of a checkpoint step's files, recorded when the step is final, verified at restore.

Orbax 0.12 and TensorStore do not checksum array data: the default (zarr2 + OCDBT) layout
has no checksum at all, and the zarr3 layout checksums only the shard index (`crc32c` index
codec), so random bytes written into a data file are read back as wrong numbers without an
error. A step folder therefore carries its own manifest, `<step>/checksums.json`:

  {"format": 1, "files": {"<path relative to the step folder>": [size, crc32], ...}}

Rules (docs/training.md, "Checkpoints"):
  - written once the step is final (after Orbax renamed its temporary folder, or wrote its
    commit file on gs://, i.e. after every host finished writing), by process 0 only, from the
    shared step folder (local path or gs://: every file access goes through `etils.epath`), in
    one atomic write (`uwm_jax.runs.storage.write_atomic`);
  - a restore verifies the files of the items it reads: a missing file, another size or
    another checksum makes the step corrupt (`CorruptCheckpointError`), and the caller falls
    back to the previous step;
  - a step without a manifest (written before manifests existed, or killed between Orbax's
    rename and the manifest) is restored unverified.
"""

import json
import zlib
from typing import Dict, Iterable, Iterator, Optional, Tuple

from etils import epath

from uwm_jax.runs import storage

MANIFEST_FILENAME = "checksums.json"
FORMAT = 1
_CHUNK_BYTES = 8 * 2**20  # zlib.crc32 reads ~2-3 GB/s on one core


class CorruptCheckpointError(ValueError):
  """A checkpoint step's files do not match its manifest (or a required file is missing)."""


def file_checksum(path: epath.PathLike) -> Tuple[int, int]:
  """(size in bytes, crc32) of one file, read in chunks."""
  crc, size = 0, 0
  with storage.as_path(path).open("rb") as f:
    while True:
      chunk = f.read(_CHUNK_BYTES)
      if not chunk:
        return size, crc
      crc = zlib.crc32(chunk, crc)
      size += len(chunk)


def _files(step_dir: epath.Path) -> Iterator[str]:
  """Paths (relative to `step_dir`, '/'-separated) of every file under it but the manifest."""
  stack = [step_dir]
  while stack:
    folder = stack.pop()
    for child in folder.iterdir():
      if child.is_dir():
        stack.append(child)
      elif child.name != MANIFEST_FILENAME or folder != step_dir:
        yield child.relative_to(step_dir).as_posix()


def compute(step_dir: epath.PathLike) -> Dict[str, list]:
  """{relative path: [size, crc32]} of every file of a step folder."""
  step_dir = storage.as_path(step_dir)
  return {rel: list(file_checksum(step_dir / rel)) for rel in sorted(_files(step_dir))}


def write_manifest(step_dir: epath.PathLike) -> epath.Path:
  """Checksum every file of a final step folder and write its manifest (call on one process)."""
  step_dir = storage.as_path(step_dir)
  path = step_dir / MANIFEST_FILENAME
  storage.write_atomic(path, json.dumps({"format": FORMAT, "files": compute(step_dir)}))
  return path


def verify(step_dir: epath.PathLike, items: Optional[Iterable[str]] = None) -> bool:
  """Check the files of `items` (top-level folders of the step; None = every file) against the
  manifest. Returns False when the step has no manifest (unverified), True when every file
  matches; raises CorruptCheckpointError naming the first files that do not."""
  step_dir = storage.as_path(step_dir)
  path = step_dir / MANIFEST_FILENAME
  if not path.exists():
    return False
  try:
    files = json.loads(path.read_text())["files"]
  except (ValueError, KeyError) as e:
    raise CorruptCheckpointError(f"its {MANIFEST_FILENAME} is unreadable ({e})") from None
  wanted = None if items is None else tuple(items)
  problems = []
  for rel, (size, crc) in sorted(files.items()):
    if wanted is not None and rel.split("/", 1)[0] not in wanted:
      continue
    if not (step_dir / rel).exists():
      problems.append(f"{rel} is missing")
      continue
    found_size, found_crc = file_checksum(step_dir / rel)
    if found_size != size:
      problems.append(f"{rel} has {found_size} bytes, {size} were written")
    elif found_crc != crc:
      problems.append(f"{rel} does not match the checksum recorded at save time")
  if problems:
    more = f" (and {len(problems) - 3} more files)" if len(problems) > 3 else ""
    raise CorruptCheckpointError("; ".join(problems[:3]) + more)
  return True
