"""Read a local LeRobot dataset folder (the `lerobot` package's format), as its own loader does.

  <root>/meta/info.json     codebase_version, fps, robot_type, features {key: {dtype, shape,
                            ...}}, data_path / video_path templates (and chunks_size, v2.1)
  v3.0 (what `lerobot` >= 0.4 writes): many episodes per file
    meta/episodes/chunk-*/file-*.parquet   one row per episode: episode_index, length, tasks,
                                           data/{chunk,file}_index, videos/<camera>/
                                           {chunk_index,file_index,from_timestamp,to_timestamp}
    data/chunk-*/file-*.parquet            the steps' rows (state, action, timestamp, ...)
    videos/<camera>/chunk-*/file-*.mp4     the episodes' frames one after another
  v2.1 (many published datasets): one parquet and one mp4 per episode
    meta/episodes.jsonl, data/chunk-*/episode_*.parquet, videos/chunk-*/<camera>/episode_*.mp4

Step i of an episode shows the frame at `from_timestamp + timestamp[i]` of its camera's video,
the nearest decoded frame, which must lie within `tolerance_s` (LeRobotDataset's default 1e-4 s)
— what `LeRobotDataset.__getitem__` returns for that step. Camera features of dtype "image"
are PNG/JPEG bytes in the parquet rows. Older layouts (v2.0, v1.x) are refused with one line.

Errors name the file and the feature: a missing video or parquet file, a truncated parquet, a
feature the mapping names that meta/info.json lacks, NaN in a state or action value.
Videos are decoded with PyAV (imported inside `decode_video_frames`: the conversion needs it,
training reads the converted JPEG frames and does not).
"""

import dataclasses
import glob
import io
import json
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

SUPPORTED_VERSIONS = ("v2.1", "v3.0")
CAMERA_DTYPES = ("video", "image")
CAMERA_PREFIX = "observation.images."
DEFAULT_STATE = ("observation.state",)
DEFAULT_ACTION = "action"
TOLERANCE_S = 1e-4  # LeRobotDataset(tolerance_s=1e-4), its default
V21_CHUNKS_SIZE = 1000


class LeRobotFormatError(ValueError):
  """The dataset folder does not hold what the reader needs (the message says what and where)."""


@dataclasses.dataclass(frozen=True)
class VideoSegment:
  """Where one episode's frames of one camera lie: a file and its [from, to) seconds."""
  path: str
  from_timestamp: float
  to_timestamp: float


@dataclasses.dataclass(frozen=True)
class Episode:
  index: int  # episode_index
  length: int
  tasks: Tuple[str, ...]
  data_file: str  # absolute path of the parquet file holding its rows
  videos: Mapping[str, VideoSegment]  # camera (dtype video) -> segment


@dataclasses.dataclass(frozen=True)
class FeatureMapping:
  """Which features are cameras, state (concatenated in order) and the action."""
  cameras: Tuple[str, ...]
  state: Tuple[str, ...]
  action: str


@dataclasses.dataclass(frozen=True)
class LeRobotFolder:
  """What `read_dataset` found: meta/info.json and the episodes in episode_index order."""
  root: str
  info: dict
  episodes: Tuple[Episode, ...]

  @property
  def version(self) -> str:
    return str(self.info["codebase_version"])

  @property
  def fps(self) -> float:
    return float(self.info["fps"])

  @property
  def features(self) -> dict:
    return self.info["features"]

  def info_path(self) -> str:
    return os.path.join(self.root, "meta", "info.json")

  def width(self, key: str) -> int:
    """Numbers per step of a low-dim feature."""
    return int(np.prod(self.features[key].get("shape") or [1]))

  def image_shape(self, camera: str) -> Tuple[int, int]:
    """(H, W) of a camera feature (its shape is (H, W, C), or (C, H, W) in old datasets)."""
    feature = self.features[camera]
    info = feature.get("info") or {}
    if "video.height" in info:
      return int(info["video.height"]), int(info["video.width"])
    shape = list(feature["shape"])
    names = feature.get("names") or []
    if len(shape) == 3 and list(names)[:1] in (["channels"], ["channel"]):
      return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise LeRobotFormatError(f"{path} does not exist: {what}") from None
  except json.JSONDecodeError as e:
    raise LeRobotFormatError(f"{path} is not valid JSON ({e})") from None


def read_info(root: str) -> dict:
  """meta/info.json of a LeRobot dataset folder; refuses a version the reader does not know."""
  if not os.path.isdir(root):
    raise LeRobotFormatError(f"LeRobot dataset folder {root!r} does not exist.")
  path = os.path.join(root, "meta", "info.json")
  info = _read_json(path, "not a LeRobot dataset folder (no meta/info.json)")
  version = info.get("codebase_version")
  if version not in SUPPORTED_VERSIONS:
    raise LeRobotFormatError(
        f"{path}: codebase_version {version!r} is not supported (supported: "
        f"{', '.join(SUPPORTED_VERSIONS)}); convert the dataset with a recent `lerobot` first.")
  for key in ("fps", "features", "data_path"):
    if key not in info:
      raise LeRobotFormatError(f"{path} has no {key!r} field.")
  return info


def _v30_episodes(root: str, info: dict) -> List[Episode]:
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  files = sorted(glob.glob(os.path.join(root, "meta", "episodes", "chunk-*", "file-*.parquet")))
  if not files:
    raise LeRobotFormatError(f"{os.path.join(root, 'meta', 'episodes')} holds no "
                             f"chunk-*/file-*.parquet (a v3.0 dataset lists its episodes there).")
  cameras = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
  rows = []
  for path in files:
    rows += read_parquet(path, None, "episode metadata").to_pylist()
  episodes = []
  for r in sorted(rows, key=lambda r: r["episode_index"]):
    data = os.path.join(root, info["data_path"].format(chunk_index=r["data/chunk_index"],
                                                       file_index=r["data/file_index"]))
    videos = {}
    for cam in cameras:
      rel = info["video_path"].format(video_key=cam, chunk_index=r[f"videos/{cam}/chunk_index"],
                                      file_index=r[f"videos/{cam}/file_index"])
      videos[cam] = VideoSegment(os.path.join(root, rel), float(r[f"videos/{cam}/from_timestamp"]),
                                 float(r[f"videos/{cam}/to_timestamp"]))
    episodes.append(Episode(int(r["episode_index"]), int(r["length"]),
                            tuple(r.get("tasks") or ()), data, videos))
  return episodes


def _v21_episodes(root: str, info: dict) -> List[Episode]:
  path = os.path.join(root, "meta", "episodes.jsonl")
  if not os.path.exists(path):
    raise LeRobotFormatError(f"{path} does not exist (a v2.1 dataset lists its episodes there).")
  cameras = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
  chunks_size = int(info.get("chunks_size") or V21_CHUNKS_SIZE)
  episodes = []
  with open(path) as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
      except json.JSONDecodeError as e:
        raise LeRobotFormatError(f"{path} line {n} is not valid JSON ({e}).") from None
      e, chunk = int(r["episode_index"]), int(r["episode_index"]) // chunks_size
      data = os.path.join(root, info["data_path"].format(episode_chunk=chunk, episode_index=e))
      videos = {cam: VideoSegment(os.path.join(root, info["video_path"].format(
          episode_chunk=chunk, video_key=cam, episode_index=e)), 0.0, float("inf"))
                for cam in cameras}
      episodes.append(Episode(e, int(r["length"]), tuple(r.get("tasks") or ()), data, videos))
  return sorted(episodes, key=lambda ep: ep.index)


def read_dataset(root: str) -> LeRobotFolder:
  """meta/info.json and the episode list of a v3.0 or v2.1 dataset folder."""
  root = os.path.abspath(root)
  info = read_info(root)
  reader = _v30_episodes if info["codebase_version"] == "v3.0" else _v21_episodes
  episodes = reader(root, info)
  if not episodes:
    raise LeRobotFormatError(f"LeRobot dataset {root} lists no episodes.")
  return LeRobotFolder(root, info, tuple(episodes))


# ------------------------------------------------------------------------------- the mapping
def default_cameras(info: dict) -> Tuple[str, ...]:
  """The camera features of the common layouts: `observation.images.*` of dtype video or image,
  in meta/info.json order."""
  return tuple(k for k, f in info["features"].items()
               if k.startswith(CAMERA_PREFIX) and f.get("dtype") in CAMERA_DTYPES)


def resolve_mapping(ds: LeRobotFolder, cameras: Sequence[str] = (),
                    state: Optional[Sequence[str]] = None, action: str = "") -> FeatureMapping:
  """The features to read: named ones checked against meta/info.json; empty = the defaults
  (`observation.images.*`, `observation.state` when present, `action`)."""
  features, where = ds.features, ds.info_path()
  cameras = tuple(cameras) or default_cameras(ds.info)
  if state is None or not len(state):
    state = tuple(k for k in DEFAULT_STATE if k in features)
  action = action or DEFAULT_ACTION

  def check(key: str, role: str, dtypes) -> None:
    if key not in features:
      raise LeRobotFormatError(f"{where} has no feature {key!r} (named as {role}); its features "
                               f"are {sorted(features)}.")
    dtype = features[key].get("dtype")
    if not dtypes(dtype):
      raise LeRobotFormatError(f"{where}: feature {key!r} (named as {role}) has dtype {dtype!r}, "
                               f"which cannot be {role}.")

  if not cameras:
    raise LeRobotFormatError(f"{where} has no camera feature ({CAMERA_PREFIX}* of dtype video or "
                             f"image); name the cameras (--cameras).")
  for key in cameras:
    check(key, "a camera", lambda d: d in CAMERA_DTYPES)
  numeric = lambda d: d is not None and d not in CAMERA_DTYPES + ("string", "str")
  for key in state:
    check(key, "state", numeric)
  check(action, "the action", numeric)
  return FeatureMapping(tuple(cameras), tuple(state), action)


# ------------------------------------------------------------------------------- parquet rows
def read_parquet(path: str, columns: Optional[Sequence[str]], what: str):
  """A pyarrow Table of `path`; a missing or unreadable (truncated, corrupt) file is one error
  naming it."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise LeRobotFormatError(f"{path} does not exist ({what}).")
  try:
    table = pq.read_table(path)
  except (pa.ArrowException, OSError) as e:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise LeRobotFormatError(f"{path} is unreadable (truncated or corrupt?): "
                             f"{type(e).__name__}: {first}") from None
  if columns is not None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
      raise LeRobotFormatError(f"{path} has no column {missing} ({what}); it has "
                               f"{table.column_names}.")
    table = table.select(list(columns))
  return table


class RowReader:
  """The parquet rows of episodes, one data file held at a time (episodes are read in order,
  and a v3.0 file holds many)."""

  def __init__(self, ds: LeRobotFolder):
    self.ds = ds
    self._path, self._table, self._episode_column = None, None, None

  def _file(self, path: str, columns: Sequence[str]):
    if path != self._path:
      self._table = read_parquet(path, columns, "the episodes' data rows")
      self._episode_column = np.asarray(self._table.column("episode_index").to_numpy())
      self._path = path
    return self._table

  def episode(self, ep: Episode, low_dim: Sequence[str], cameras: Sequence[str] = ()
              ) -> Dict[str, object]:
    """{"timestamp": (L,) float64, key: (L, width) float64 per low-dim key, camera: [L bytes]
    per image-dtype camera} of one episode, checked (length, frame order, NaN)."""
    columns = ["episode_index", "frame_index", "timestamp", *low_dim, *cameras]
    table = self._file(ep.data_file, columns)
    rows = np.flatnonzero(self._episode_column == ep.index)
    where = f"{ep.data_file}, episode {ep.index}"
    if len(rows) != ep.length:
      raise LeRobotFormatError(f"{where}: {len(rows)} rows, the episode metadata says "
                               f"{ep.length} steps.")
    part = table.take(rows)
    frame_index = np.asarray(part.column("frame_index").to_numpy())
    if not np.array_equal(frame_index, np.arange(ep.length)):
      raise LeRobotFormatError(f"{where}: frame_index is not 0..{ep.length - 1} in order.")
    out: Dict[str, object] = {
        "timestamp": np.asarray(part.column("timestamp").to_numpy(), np.float64)}
    for key in low_dim:
      values = np.asarray(part.column(key).to_pylist(), np.float64).reshape(ep.length, -1)
      bad = ~np.isfinite(values)
      if bad.any():
        raise LeRobotFormatError(f"{where}: field {key!r} holds NaN/inf (first at frame "
                                 f"{int(np.argwhere(bad)[0][0])}).")
      out[key] = values
    for key in cameras:
      out[key] = [_image_bytes(v, where, key) for v in part.column(key).to_pylist()]
    return out


def _image_bytes(value, where: str, key: str) -> bytes:
  """An image-dtype cell ({"bytes": ..., "path": ...}) -> the encoded image bytes."""
  data = value.get("bytes") if isinstance(value, dict) else value
  if not data:
    raise LeRobotFormatError(f"{where}: camera {key!r} has a row without image bytes.")
  return bytes(data)


def decode_image(data: bytes) -> np.ndarray:
  """PNG/JPEG bytes -> (H, W, 3) uint8."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------ videos
def decode_video_frames(segment: VideoSegment, timestamps: Sequence[float], camera: str,
                        tolerance_s: float = TOLERANCE_S) -> Iterator[np.ndarray]:
  """(H, W, 3) uint8 frames, one per step: the frame of `segment.path` nearest to
  `from_timestamp + timestamps[i]`, decoded once in a single pass from the keyframe before the
  segment (timestamps must increase). A frame farther than tolerance_s is an error naming the
  file, camera and step (as LeRobot's FrameTimestampError)."""
  import av  # pylint: disable=import-outside-toplevel
  path = segment.path
  if not os.path.exists(path):
    raise LeRobotFormatError(f"video {path} of camera {camera!r} does not exist.")
  queries = segment.from_timestamp + np.asarray(timestamps, np.float64)
  if len(queries) and np.any(np.diff(queries) <= 0):
    raise LeRobotFormatError(f"{path} ({camera!r}): the steps' timestamps do not increase.")
  try:
    container = av.open(path)
  except av.FFmpegError as e:
    raise LeRobotFormatError(f"video {path} of camera {camera!r} is unreadable: {e}") from None
  with container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if segment.from_timestamp > 0:
      container.seek(int(segment.from_timestamp / stream.time_base), stream=stream,
                     backward=True, any_frame=False)
    prev = None  # (time, frame)
    q = 0
    try:
      for frame in container.decode(stream):
        if q == len(queries):
          break
        t = float(frame.pts * stream.time_base)
        while q < len(queries) and t >= queries[q]:
          best = (t, frame) if prev is None or t - queries[q] < queries[q] - prev[0] else prev
          yield _checked_frame(best, queries[q], q, path, camera, tolerance_s)
          q += 1
        prev = (t, frame)
    except av.FFmpegError as e:
      raise LeRobotFormatError(f"video {path} of camera {camera!r} is unreadable at step {q}: "
                               f"{e}") from None
    while q < len(queries):  # queries after the last frame: the last frame, if within tolerance
      if prev is None:
        raise LeRobotFormatError(f"video {path} of camera {camera!r} has no frame.")
      yield _checked_frame(prev, queries[q], q, path, camera, tolerance_s)
      q += 1


def _checked_frame(best, query: float, step: int, path: str, camera: str,
                   tolerance_s: float) -> np.ndarray:
  t, frame = best
  if abs(t - query) >= tolerance_s:
    raise LeRobotFormatError(
        f"video {path} of camera {camera!r}: step {step} asks for the frame at {query:.4f} s, the "
        f"nearest frame is at {t:.4f} s (tolerance {tolerance_s} s); missing or misaligned "
        f"frames.")
  return frame.to_ndarray(format="rgb24")
