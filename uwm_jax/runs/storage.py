"""Where a run's files live: a local (or mounted) path, or a `gs://` URL; one API for both.

Everything the project reads or writes beside Orbax goes through here: metrics, dataset
statistics, the workdir lock, checksum manifests, evaluation results. A URL goes through
`etils.epath` with gcsfs (fsspec), the client Orbax itself uses for its own files (its arrays go
through TensorStore's GCS driver), and TensorFlow is never needed: epath is told not to prefer
`tf.io.gfile` when TensorFlow happens to be installed (`EPATH_USE_TF=false`), so a run behaves
the same on the core install and on a full one.

Atomic writes (`write_atomic`): a reader sees the previous content or the new one, never a part.
  - local path: the data goes to a temporary file unique to this call, in the same folder
    (`.<name>.tmp.<pid>.<random>`), is flushed to disk, and `os.replace` puts it in place;
  - gs://: one object upload (an object becomes visible whole, when its upload completes). GCS
    has no rename (a "move" copies and deletes), so none is attempted.

The workdir lock's primitives (`create_exclusive`, `read_versioned`, `delete`) keep their
meaning on both: creation is exclusive (local: O_EXCL; gs://: the upload's precondition
`ifGenerationMatch=0`, so of two creators exactly one succeeds) and `delete(if_version=...)`
removes only the version that was read (gs://: `ifGenerationMatch=<generation>`, exact; local:
the file's inode and modification time are compared right before removing it).

Environment: real GCS uses the machine's default credentials (a TPU VM's service account, or
`gcloud auth application-default login`). `STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`, the
standard variable of Google's client libraries, points every client at an emulator: gcsfs and
google-cloud-storage read it themselves; TensorStore (Orbax's array writer) ignores it, so the
first use of a gs:// path (`configure_gcs`) derives its two variables from it
(`TENSORSTORE_GCS_HTTP_URL`, `GOOGLE_AUTH_TOKEN_FOR_TESTING`) and makes gcsfs anonymous.
gcsfs' experimental zonal/hierarchical-bucket layer (`GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`) is off
by default here: it asks every bucket's layout over gRPC first (an emulator never answers; real
buckets pay a round trip), and nothing here renames folders, which is all it would add.
Listings are not cached (gcsfs caches them forever by default, and other processes and
TensorStore write to the same folders).
"""

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
import uuid
from typing import Iterator, List, Optional, Tuple, Union

from etils import epath

GCS_PREFIX = "gs://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# Read by gcsfs when it is imported and by epath at every call: set before either is used.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("EPATH_USE_TF", "false")

Data = Union[str, bytes]
# What `read_versioned` returns beside the data and `delete(if_version=)` compares: the object's
# generation on gs://, (device, inode, mtime_ns, size) of a local file.
Version = Union[int, Tuple[int, int, int, int]]

_DERIVED = {}  # environment variables configure_gcs set from STORAGE_EMULATOR_HOST


def is_url(path) -> bool:
  return "://" in os.fspath(path)


def is_gcs(path) -> bool:
  return os.fspath(path).startswith(GCS_PREFIX)


def emulator_environment(emulator: str) -> dict:
  """The variables TensorStore needs to use the emulator at `emulator` ({} when unset)."""
  if not emulator:
    return {}
  url = emulator if "://" in emulator else f"http://{emulator}"
  return {"TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}


def configure_gcs() -> None:
  """Make every GCS client of this process follow `STORAGE_EMULATOR_HOST` (see the module doc).

  Called before any gs:// access (idempotent and cheap). A variable the user set is kept; one
  derived earlier follows the emulator variable when it changes (tests start several)."""
  wanted = emulator_environment(os.environ.get(EMULATOR_ENV, ""))
  for var in set(wanted) | set(_DERIVED):
    current = os.environ.get(var)
    if current is not None and current != _DERIVED.get(var):
      continue  # set by the user
    if var in wanted:
      os.environ[var] = _DERIVED[var] = wanted[var]
    else:
      os.environ.pop(var, None)
      _DERIVED.pop(var, None)
  # gcsfs logs a line per file it opens at INFO (the trainer's level): warnings only.
  if logging.getLogger("gcsfs").level == logging.NOTSET:
    logging.getLogger("gcsfs").setLevel(logging.WARNING)
  # Late: gcsfs/fsspec load only for a URL (the environment above must be set before).
  import fsspec  # pylint: disable=import-outside-toplevel
  options = fsspec.config.conf.setdefault("gs", {})
  options.setdefault("use_listings_cache", False)
  if wanted:
    options.setdefault("token", "anon")


def as_path(path) -> epath.Path:
  """An epath.Path for a local path or a URL (configuring GCS first for a URL)."""
  if is_url(path):
    configure_gcs()
  return epath.Path(path)


def require_gcs_or_local(path, what: str) -> None:
  """Raise ValueError naming `what` for a URL of another scheme than gs://."""
  if is_url(path) and not is_gcs(path):
    raise ValueError(f"{what}={path}: only local paths and gs:// URLs are supported.")


def require_local(path, what: str) -> None:
  """Raise ValueError (one line) when a path that must be accessed as local files is a URL."""
  if path and is_url(path):
    raise ValueError(
        f"{what}={path} is a URL, but it is accessed as local files (array_record readers, "
        "memory-mapped arrays): mount the bucket with gcsfuse (datasets read-only: -o ro) and "
        "give the mounted path.")


# ------------------------------------------------------------------------------- files, folders
def abspath(path) -> str:
  """A URL as it is; a local path made absolute."""
  return os.fspath(path) if is_url(path) else os.path.abspath(os.fspath(path))


def exists(path) -> bool:
  return as_path(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path) -> bool:
  """A local folder, or a gs:// prefix holding at least one object (or a bucket)."""
  return as_path(path).is_dir() if is_url(path) else os.path.isdir(path)


def listdir(path) -> List[str]:
  """Names in a folder ([] when it does not exist)."""
  if not is_url(path):
    return os.listdir(path) if os.path.isdir(path) else []
  folder = as_path(path)
  return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def makedirs(path) -> None:
  """Create a local folder and its parents; nothing for a URL (object stores have no folders,
  and gcsfs would create a missing bucket)."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path) -> bytes:
  if is_url(path):
    return as_path(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def _encode(data: Data) -> bytes:
  return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def write_atomic(path, data: Data) -> None:
  """Replace the file at `path` with `data` (str: UTF-8) atomically (see the module doc). A
  local file gets the permissions a new file gets (umask), like a plain `open(path, "w")`."""
  data = _encode(data)
  if is_url(path):
    as_path(path).write_bytes(data)
    return
  path = os.fspath(path)
  folder, name = os.path.split(path)
  tmp = os.path.join(folder, f".{name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def remove(path) -> None:
  """Delete a file if it exists."""
  if is_url(path):
    with contextlib.suppress(FileNotFoundError):
      as_path(path).unlink()
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def move(src, dst) -> None:
  """Move a file or folder (local: one rename; gs://: every object copied, then deleted)."""
  if is_url(src):
    as_path(src).rename(as_path(dst))
  else:
    os.rename(src, dst)


@contextlib.contextmanager
def local_file(path) -> Iterator[str]:
  """A local path to write `path` through: `path` itself when it is local; for a URL, a
  temporary file (same extension) uploaded to `path` when the block ends without an error."""
  if not is_url(path):
    yield os.fspath(path)
    return
  folder = tempfile.mkdtemp(prefix="uwm_upload_")
  try:
    local = os.path.join(folder, os.path.basename(os.fspath(path)))
    yield local
    as_path(path).write_bytes(read_bytes(local))
  finally:
    shutil.rmtree(folder, ignore_errors=True)


class AppendableFile:
  """Text appended to a file: a local file opened for appending (each line reaches the OS as
  it is written), or, for a URL (objects cannot be appended to), the whole text kept in memory
  and uploaded at once (`write_atomic`) at most every `upload_every_s` seconds on `write`, and
  at every `flush` and `close`."""

  def __init__(self, path, upload_every_s: float = 30.0):
    self.path = os.fspath(path)
    self._url = is_url(path)
    self._upload_every_s = upload_every_s
    if self._url:
      self._parts = [read_text(path)] if exists(path) else []
      self._dirty = False
      self._uploaded_at = time.monotonic()
      self._file = None
    else:
      self._file = open(self.path, "a", encoding="utf-8", buffering=1)

  def write(self, text: str) -> None:
    if not self._url:
      self._file.write(text)
      return
    self._parts.append(text)
    self._dirty = True
    if time.monotonic() - self._uploaded_at >= self._upload_every_s:
      self.flush()

  def flush(self) -> None:
    if not self._url:
      self._file.flush()
    elif self._dirty:
      write_atomic(self.path, "".join(self._parts))
      self._dirty = False
      self._uploaded_at = time.monotonic()

  def close(self) -> None:
    if self._url:
      self.flush()
    elif self._file is not None:
      self._file.close()
      self._file = None


# ------------------------------------------------------------------------------- lock primitives
@functools.lru_cache(maxsize=4)
def _gcs_client(emulator: str):
  """A google-cloud-storage client (anonymous against an emulator, default credentials
  otherwise): the library that exposes the JSON API's generation preconditions."""
  del emulator  # the cache key: a new emulator gets a new client
  from google.cloud import storage as gcs  # pylint: disable=import-outside-toplevel
  return gcs.Client()


def _blob(path):
  configure_gcs()
  bucket, _, key = os.fspath(path)[len(GCS_PREFIX):].partition("/")
  return _gcs_client(os.environ.get(EMULATOR_ENV, "")).bucket(bucket).blob(key)


def check_bucket(path) -> None:
  """Raise FileNotFoundError (one line) when the bucket of a gs:// path does not exist; call it
  before writing there (Orbax creates its folder with gcsfs, which would create a missing
  bucket). Needs only object listing permission."""
  if not is_gcs(path):
    return
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  blob = _blob(path)
  try:
    next(iter(blob.client.list_blobs(blob.bucket, max_results=1)), None)
  except exceptions.NotFound:
    raise FileNotFoundError(f"{path}: bucket gs://{blob.bucket.name} does not exist (create "
                            "it first, in the accelerators' region).") from None


def _local_version(path) -> Version:
  st = os.stat(path)
  return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def create_exclusive(path, data: Data) -> Version:
  """Create the file at `path` holding `data`, only if it does not exist: FileExistsError
  otherwise (of two callers at once, exactly one succeeds). Returns its version."""
  data = _encode(data)
  if not is_gcs(path):
    require_gcs_or_local(path, "path")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
      os.write(fd, data)
    finally:
      os.close(fd)
    return _local_version(path)
  # Late: only a gs:// run needs the GCS client.
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  blob = _blob(path)
  try:
    blob.upload_from_string(data, if_generation_match=0)
  except exceptions.PreconditionFailed:
    raise FileExistsError(path) from None
  except exceptions.NotFound:
    raise FileNotFoundError(f"{path}: its bucket does not exist.") from None
  except exceptions.Forbidden as e:
    raise PermissionError(f"{path}: this account may not write there ({e.message}).") from None
  return int(blob.generation)


def read_versioned(path) -> Optional[Tuple[bytes, Version]]:
  """(content, version) of the file at `path`, None when it does not exist."""
  if not is_gcs(path):
    try:
      with open(path, "rb") as f:
        version = os.fstat(f.fileno())
        data = f.read()
    except FileNotFoundError:
      return None
    return data, (version.st_dev, version.st_ino, version.st_mtime_ns, version.st_size)
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  blob = _blob(path)
  try:
    data = blob.download_as_bytes()
  except exceptions.NotFound:
    return None
  return data, int(blob.generation)


def delete(path, if_version: Optional[Version] = None) -> bool:
  """Delete the file at `path` (only if it is still at `if_version`, when given). Returns
  whether this call deleted it (False: missing, or replaced since that version)."""
  if not is_gcs(path):
    try:
      if if_version is not None and _local_version(path) != tuple(if_version):
        return False
      os.remove(path)
    except FileNotFoundError:
      return False
    return True
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  try:
    _blob(path).delete(if_generation_match=if_version)
  except (exceptions.NotFound, exceptions.PreconditionFailed):
    return False
  return True
