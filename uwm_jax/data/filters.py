"""Episode filters over stored metadata (DROID: `episode_metadata/recording_folderpath`).

Used by the conversion (`python -m uwm_jax.data.convert_rlds`) and again at load time
(`source_configs.array_record(include=..., exclude=..., success_only=..., max_episodes=...)`).
"""

import dataclasses
from typing import Iterable, List, Mapping, Sequence, Tuple

FOLDER_KEY = "recording_folderpath"
FILE_KEY = "file_path"


def is_success(metadata: Mapping[str, str]) -> bool:
  """DROID stores successful episodes under a `success/` folder and failures under `failure/`."""
  for key in (FOLDER_KEY, FILE_KEY):
    parts = str(metadata.get(key, "")).replace("\\", "/").split("/")
    if "success" in parts:
      return True
  return False


@dataclasses.dataclass(frozen=True)
class EpisodeFilter:
  """include: folder path contains any of these; exclude: contains none; success_only."""
  include: Tuple[str, ...] = ()
  exclude: Tuple[str, ...] = ()
  success_only: bool = False

  @classmethod
  def from_args(cls, include: Iterable[str] = (), exclude: Iterable[str] = (),
                success_only: bool = False) -> "EpisodeFilter":
    clean = lambda xs: tuple(x for x in (xs or ()) if x)  # noqa: E731
    return cls(clean(include), clean(exclude), bool(success_only))

  @property
  def active(self) -> bool:
    return bool(self.include or self.exclude or self.success_only)

  def matches(self, metadata: Mapping[str, str]) -> bool:
    folder = str(metadata.get(FOLDER_KEY, ""))
    if self.include and not any(s in folder for s in self.include):
      return False
    if any(s in folder for s in self.exclude):
      return False
    if self.success_only and not is_success(metadata):
      return False
    return True


def select(metadata: Sequence[Mapping[str, str]], filt: EpisodeFilter,
           max_episodes: int = 0) -> List[int]:
  """Indices of the episodes that pass, in order, at most `max_episodes` (0 = all)."""
  out = []
  for i, meta in enumerate(metadata):
    if filt.matches(meta):
      out.append(i)
      if max_episodes and len(out) >= max_episodes:
        break
  return out
