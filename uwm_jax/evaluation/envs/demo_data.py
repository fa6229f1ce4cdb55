"""The embedded task's demonstrations as a training dataset, generated on first use.

Expert episodes (`demos.generate_episodes`) are written as an RLDS dataset
(`uwm_jax.data.rlds_writer`) and converted to the training format
(`uwm_jax.data.convert.convert_rlds`), exactly the path DROID and LIBERO data take, so the
embedded task is an ordinary `array_record` source:

  config.data.sources.tabletop_push = source_configs.array_record("workdirs/data/tabletop_push")
  config.eval.demo_episodes = 200        # generated into that path if it holds no dataset

Robot episodes use seeds 0..N-1; action-free video episodes (`config.eval.demo_video_episodes`,
source `<env>_video`) use seeds from VIDEO_SEED_OFFSET and are written without actions.
Evaluation seeds start at `config.eval.first_seed` (100000), far from both.
"""

import logging
import os
import shutil
import tempfile
from typing import Dict, Iterable

import numpy as np

from uwm_jax.evaluation import envs as envs_lib
from uwm_jax.evaluation.envs import demos, tabletop

log = logging.getLogger(__name__)

VIDEO_SEED_OFFSET = 50_000
LOW_DIM_KEYS = envs_lib.EMBEDDED_LOW_DIM_KEYS  # kept as low-dim observations in the dataset


def to_rlds_episode(episode: dict, camera_keys) -> dict:
  """A `demos` episode -> the RLDS writer's {"steps": ..., "episode_metadata": ...} dict."""
  obs = episode["observation"]
  steps = {"observation": {k: obs[k] for k in tuple(camera_keys) + LOW_DIM_KEYS}}
  length = len(obs[camera_keys[0]])
  steps["action"] = episode.get("action", np.zeros((length, 2), np.float32))
  return {"steps": steps,
          "episode_metadata": {"file_path": f"seed_{episode['seed']}",
                               "recording_folderpath": "tabletop"}}


def dataset_ready(path: str) -> bool:
  """True when `path` holds a finished conversion."""
  from uwm_jax.data import array_record_format as fmt  # pylint: disable=import-outside-toplevel
  return os.path.exists(os.path.join(path, fmt.DATASET_JSON))


def write_dataset(path: str, episodes: Iterable[dict], camera_keys, *, action_free: bool,
                  name: str) -> str:
  """RLDS (temporary folder) -> array_record dataset at `path`."""
  from uwm_jax.data import convert, profiles  # pylint: disable=import-outside-toplevel
  from uwm_jax.data.rlds_writer import write_rlds_dataset  # pylint: disable=import-outside-toplevel
  tmp = tempfile.mkdtemp(prefix="uwm_tabletop_rlds_")
  try:
    builder = write_rlds_dataset(tmp, name, (to_rlds_episode(e, camera_keys) for e in episodes),
                                 image_format="png")
    profile = profiles.rlds_profile(camera_keys, action_key="action",
                                    low_dim_keys=LOW_DIM_KEYS, action_free=action_free)
    if not convert.convert_rlds(builder, path, profile, dataset=name, progress=False):
      raise RuntimeError(f"Conversion of the generated {name!r} dataset into {path} did not "
                         "finish.")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def prepare(config) -> Dict[str, str]:
  """Generate the embedded task's datasets the config names, when missing.

  Needs `config.eval.env` = an embedded task, `config.eval.demo_episodes` > 0 and a source
  `config.data.sources[<env>]` (and `<env>_video` for video episodes). Returns {name: path} of
  the datasets generated now.
  """
  e = config.eval
  if not e.get("demo_episodes") or e.env not in envs_lib.EMBEDDED_TASKS:
    return {}
  spec = envs_lib.tabletop_spec(e.env, config.model, e)
  keys = tuple(config.model.camera_keys)
  unknown = [k for k in keys if k not in tabletop.camera_keys()]
  if unknown:
    raise ValueError(f"model.camera_keys {unknown} are not cameras of {e.env!r} "
                     f"({tabletop.camera_keys()}).")
  jobs = [(e.env, range(e.demo_episodes), False)]
  if e.get("demo_video_episodes"):
    jobs.append((f"{e.env}_video",
                 range(VIDEO_SEED_OFFSET, VIDEO_SEED_OFFSET + e.demo_video_episodes), True))
  made = {}
  for name, seeds, action_free in jobs:
    if name not in config.data.sources:
      raise ValueError(f"config.eval.demo_episodes asks for the {name!r} dataset but "
                       f"config.data.sources has no {name!r} entry.")
    path = config.data.sources[name].path
    if dataset_ready(path):
      continue
    shutil.rmtree(path, ignore_errors=True)  # an unfinished generation: start again
    log.info("Generating %d %s episodes of %s into %s", len(seeds),
             "video" if action_free else "expert", e.env, path)
    episodes = demos.generate_in_workers(seeds, spec, hold_steps=config.model.action_len,
                                         with_actions=not action_free, desc=f"generate {name}")
    made[name] = write_dataset(path, episodes, keys, action_free=action_free, name=name)
  return made
