"""Config entries for `config.data.sources` (one ConfigDict per dataset, keyed by its name).

Kept free of heavy imports: config files import this module.

  config.data.sources.droid = source_configs.array_record("/data/droid_uwm", weight=1.0)
  config.data.sources.video = source_configs.array_record("/data/droid_video_uwm",
                                                          action_free=True)
  config.data.sources.web = source_configs.video_folder("/data/clips", weight=0.5)
  config.data.sources.k400 = source_configs.video_index("/data/k400/train.txt", weight=0.5)
  config.data.sources.lerobot = source_configs.lerobot("/data/uwm/so101_pick_place")

Every source has `kind`, `weight` (mixture weight, > 0) and `action_free` (read without
actions: samples get zero actions and action_mask False; never in the validation split).
Command-line overrides address fields by name: `--config.data.sources.droid.path=/x`.
"""

import ml_collections

LEROBOT = "lerobot"  # the kind of a converted LeRobot dataset (`lerobot`)
KINDS = ("synthetic", "array_record", "video_folder", "video_index", LEROBOT)
# What writes an array_record dataset when its config names no `write_command` (docs/data.md);
# DIR is the folder that `--config.data.sources.<name>.path` then names.
CONVERSION_COMMANDS = ("python -m uwm_jax.data.convert_rlds droid|rlds --data_dir=TFDS_DIR "
                       "--builder=BUILDER --out=DIR")


def synthetic(weight: float = 1.0, num_episodes: int = 16, episode_len: int = 32,
              action_free_fraction: float = 0.0, seed: int = 0) -> ml_collections.ConfigDict:
  """Deterministic moving-shapes episodes (no files): for tests and smoke runs.

  action_free_fraction: this fraction of episodes is used as action-free video.
  """
  return ml_collections.ConfigDict(dict(
      kind="synthetic", weight=float(weight), action_free=False, num_episodes=num_episodes,
      episode_len=episode_len, action_free_fraction=float(action_free_fraction), seed=seed))


def array_record(path: str = "", weight: float = 1.0, action_free: bool = False,
                 include: tuple = (), exclude: tuple = (), success_only: bool = False,
                 max_episodes: int = 0, cache_decoded_frames: bool = False,
                 write_command: str = "") -> ml_collections.ConfigDict:
  """A dataset converted by `python -m uwm_jax.data.convert_rlds` (DROID, LIBERO, any RLDS).

  write_command: the shell command that writes this dataset, with `--out=DIR` where DIR is the
    folder `path` names (e.g. the DROID conversion); a missing folder's error shows it
    (default: the generic CONVERSION_COMMANDS).

  The episode filters repeat the conversion's (docs/data.md) at load time, over the stored
  episode metadata, in stored (= TFDS) order:
    include: keep episodes whose recording_folderpath contains any of these substrings;
    exclude: drop episodes whose recording_folderpath contains any of these;
    success_only: keep episodes whose file_path / recording_folderpath says "success";
    max_episodes: keep the first N episodes that pass (0 = all).
  cache_decoded_frames: keep every frame decoded once in memory (per process), so later epochs
    skip the PNG/JPEG decoding; memory = steps x views x H x W x 3 bytes (the embedded demo:
    ~170 MB). For small datasets only (docs/data.md, "Decoded-frame cache").
  """
  return ml_collections.ConfigDict(dict(
      kind="array_record", weight=float(weight), action_free=bool(action_free), path=path,
      include=tuple(include), exclude=tuple(exclude), success_only=bool(success_only),
      max_episodes=int(max_episodes), cache_decoded_frames=bool(cache_decoded_frames),
      write_command=str(write_command)))


def _clip_fields(frame_stride: float, padding: str, min_bytes: int, max_bytes: int) -> dict:
  """The fields every video-clip source has (see `video_folder`)."""
  if padding not in ("same", "none"):
    raise ValueError(f"video clip padding must be 'same' or 'none', got {padding!r}.")
  return dict(action_free=True, frame_stride=float(frame_stride), padding=padding,
              min_bytes=int(min_bytes), max_bytes=int(max_bytes))


def video_folder(path: str = "", weight: float = 1.0, frame_stride: float = 2.0,
                 padding: str = "same", extensions: tuple = ("mp4", "webm"),
                 min_bytes: int = 1024, max_bytes: int = 2**30) -> ml_collections.ConfigDict:
  """A folder (searched recursively) of video files used as action-free clips (docs/data.md).

  frame_stride: source frames per window frame (reference: a 38-frame span for 19 frames).
  padding: how a clip fills the camera views: "same" (the clip in every view), "none" (first
    view only, others black).
  Files smaller than min_bytes / larger than max_bytes, unreadable or too short are skipped
  (one logged count).
  """
  return ml_collections.ConfigDict(dict(
      kind="video_folder", weight=float(weight), path=path, extensions=tuple(extensions),
      **_clip_fields(frame_stride, padding, min_bytes, max_bytes)))


def video_index(path: str = "", weight: float = 1.0, frame_stride: float = 2.0,
                padding: str = "same", min_bytes: int = 1024,
                max_bytes: int = 2**30) -> ml_collections.ConfigDict:
  """The clips an index file lists, used as action-free clips (docs/data.md, "Video corpora").

  path: a text file, one video path per line (relative paths are resolved against the index
  file's folder; blank lines and `#` comments ignored), e.g. a filtered Kinetics-400 list.
  Several lists mix as several sources with their weights. Other fields as `video_folder`.
  """
  return ml_collections.ConfigDict(dict(
      kind="video_index", weight=float(weight), path=path,
      **_clip_fields(frame_stride, padding, min_bytes, max_bytes)))


def lerobot(path: str = "", weight: float = 1.0, cameras: tuple = (), state: tuple = (),
            action: str = "", max_episodes: int = 0,
            cache_decoded_frames: bool = False) -> ml_collections.ConfigDict:
  """A LeRobot dataset converted by `python -m uwm_jax.data.convert_lerobot` (docs/data.md,
  "Your own robot (LeRobot)"), mapped onto the model (`uwm_jax.data.lerobot_source`):

    cameras: the dataset's camera keys, one per model view in model.camera_keys order (a key
      may repeat); empty = the converted cameras in their order.
    state: the dataset's state keys making the low-dim input (models with
      model.low_dim_dim > 0), zero-padded to model.low_dim_dim; empty = every converted one.
    action: the dataset's action key (empty = the converted one), zero-padded to
      model.action_dim.

  state_widths / action_width are filled from the converted dataset when training starts, and
  the checkpoints' config carries the whole mapping: the policy server (`--robot=lerobot`)
  takes the dataset's keys and returns actions of its width. max_episodes and
  cache_decoded_frames as `array_record`.
  """
  return ml_collections.ConfigDict(dict(
      kind=LEROBOT, weight=float(weight), action_free=False, path=path,
      cameras=tuple(cameras), state=tuple(state), action=str(action), state_widths=(),
      action_width=0, max_episodes=int(max_episodes),
      cache_decoded_frames=bool(cache_decoded_frames)))
