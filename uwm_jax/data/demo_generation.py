"""The embedded task's demonstrations as a training dataset, generated on first use.

`python -m uwm_jax.train` calls `prepare(config)` before training (on process 0); it does
nothing unless `config.data.demo_episodes` > 0. Expert episodes (`envs.demos.generate_episodes`)
are written as an RLDS dataset (`uwm_jax.data.rlds_writer`) and converted to the training
format (`uwm_jax.data.convert_rlds.convert_rlds`), exactly the path DROID and LIBERO data take,
so the embedded task is an ordinary `array_record` source:

  config.data.sources.tabletop_push = source_configs.array_record("workdirs/data/tabletop_push")
  config.data.demo_task = "tabletop_push"
  config.data.demo_episodes = 200        # generated into that path if it holds no dataset

Robot episodes use seeds 0..N-1; action-free video episodes (`config.data.demo_video_episodes`,
source `<task>_video`) use seeds from VIDEO_SEED_OFFSET and are written without actions;
their executed actions get `config.data.demo_video_action_noise` (the robot episodes':
`demo_action_noise`). Every dataset's recipe (`generation.json`) records its noise.
Evaluation seeds start at `config.eval.first_seed` (100000), far from both.

The simulator (`uwm_jax.envs.tabletop`, which imports MuJoCo) is imported inside the functions
that need it: a training run that generates nothing never loads MuJoCo, and rendering happens
in worker processes (`envs.demos.generate_in_workers`) because MuJoCo's EGL rendering and
TensorFlow (the RLDS writer, here) crash when they share a process.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, Iterable, List

import numpy as np

from uwm_jax import envs as envs_lib
from uwm_jax.data import array_record_format as fmt
from uwm_jax.data import convert_rlds, profiles
from uwm_jax.data.rlds_writer import write_rlds_dataset

log = logging.getLogger(__name__)

VIDEO_SEED_OFFSET = 50_000
RECIPE_JSON = "generation.json"  # how a generated dataset was made (checked before reuse)
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
  return os.path.exists(os.path.join(path, fmt.DATASET_JSON))


def write_dataset(path: str, episodes: Iterable[dict], camera_keys, *, action_free: bool,
                  name: str) -> str:
  """RLDS (temporary folder) -> array_record dataset at `path`."""
  tmp = tempfile.mkdtemp(prefix="uwm_tabletop_rlds_")
  try:
    builder = write_rlds_dataset(tmp, name, (to_rlds_episode(e, camera_keys) for e in episodes),
                                 image_format="png")
    profile = profiles.rlds_profile(camera_keys, action_key="action",
                                    low_dim_keys=LOW_DIM_KEYS, action_free=action_free)
    if not convert_rlds.convert_rlds(builder, path, profile, dataset=name, progress=False):
      raise RuntimeError(f"Conversion of the generated {name!r} dataset into {path} did not "
                         "finish.")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def recipe(spec, camera_keys, num_episodes: int, episode_options: dict) -> dict:
  """Everything that determines a generated dataset's contents (JSON-able): the spec (a
  `tabletop.TabletopSpec`), the scene file's hash (a moved camera makes other images), cameras,
  episode count and the `demos.expert_episode` options it was generated with."""
  from uwm_jax.envs import tabletop  # pylint: disable=import-outside-toplevel  # MuJoCo: see top
  with open(tabletop.XML_PATH, "rb") as f:
    scene = hashlib.sha1(f.read()).hexdigest()[:12]
  spec_fields = dataclasses.asdict(spec)
  shifts = spec_fields.pop("shifts", ())
  if shifts:  # the out-of-distribution variant; in-distribution recipes stay as they were
    spec_fields["shifts"] = list(shifts)
    scene += "+ood" + hashlib.sha1(json.dumps(tabletop.ood_settings()).encode()).hexdigest()[:12]
  return {"spec": spec_fields, "scene_sha1": scene,
          "camera_keys": list(camera_keys), "episodes": int(num_episodes), **episode_options}


def check_recipe(path: str, wanted: dict) -> None:
  """Raise ValueError when the dataset at `path` was generated differently than `wanted`."""
  file = os.path.join(path, RECIPE_JSON)
  found = None
  if os.path.exists(file):
    with open(file) as f:
      found = json.load(f)
  if found == wanted:
    return
  if found is None:
    what = f"has no {RECIPE_JSON} (generated by an older uwm_jax, or not generated here)"
  else:
    diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    what = "was generated with other settings: " + "; ".join(
        f"{k}: {found.get(k)} (dataset) vs {wanted.get(k)} (config)" for k in diff)
  raise ValueError(f"The embedded-task dataset at {path} {what}. Delete that folder to "
                   "generate it again, or point config.data.sources at another path.")


@dataclasses.dataclass(frozen=True)
class Job:
  """One dataset `prepare` makes: the source `name`, its `path`, the episode `seeds`, and
  `demos.expert_episode`'s options (the recording's action noise among them)."""
  name: str
  path: str
  seeds: range
  action_free: bool
  options: dict


def generation_jobs(config) -> List[Job]:
  """The embedded-task datasets `config` asks for (robot episodes, and action-free video
  episodes when `data.demo_video_episodes` > 0); [] when `data.demo_episodes` is 0. Reads the
  config only: nothing is generated and MuJoCo is not imported."""
  d = config.data
  if not d.get("demo_episodes"):
    return []
  task = d.demo_task
  if task not in envs_lib.EMBEDDED_TASKS:
    raise ValueError(f"config.data.demo_episodes > 0 needs config.data.demo_task to name an "
                     f"embedded task ({', '.join(envs_lib.EMBEDDED_TASKS)}), not {task!r}.")
  wanted = [(task, range(d.demo_episodes), False)]
  if d.get("demo_video_episodes"):
    wanted.append((f"{task}_video",
                   range(VIDEO_SEED_OFFSET, VIDEO_SEED_OFFSET + d.demo_video_episodes), True))
  jobs = []
  for name, seeds, action_free in wanted:
    if name not in config.data.sources:
      raise ValueError(f"config.data.demo_episodes asks for the {name!r} dataset but "
                       f"config.data.sources has no {name!r} entry.")
    noise = d.get("demo_video_action_noise", 0.0) if action_free else d.demo_action_noise
    options = dict(  # demos.expert_episode's
        hold_steps=int(config.model.action_len), with_actions=not action_free,
        action_noise=float(noise),
        wait_steps=int(config.model.num_obs_frames - 1))  # the rollout's padded first history
    jobs.append(Job(name, config.data.sources[name].path, seeds, action_free, options))
  return jobs


def prepare(config) -> Dict[str, str]:
  """Generate the embedded task's datasets the config names, when missing (run it on one
  process: `python -m uwm_jax.train` calls it on process 0).

  Needs `config.data.demo_task` = an embedded task, `config.data.demo_episodes` > 0 and a
  source `config.data.sources[<task>]` (and `<task>_video` for video episodes). Returns
  {name: path} of the datasets generated now.
  """
  jobs = generation_jobs(config)
  if not jobs:
    return {}  # nothing to generate: MuJoCo and the simulator modules stay unimported
  task = config.data.demo_task
  # MuJoCo is imported only now (see the module docstring).
  from uwm_jax.envs import demos, tabletop  # pylint: disable=import-outside-toplevel
  spec = envs_lib.tabletop_spec(task, config.model)
  keys = tuple(config.model.camera_keys)
  unknown = [k for k in keys if k not in tabletop.camera_keys()]
  if unknown:
    raise ValueError(f"model.camera_keys {unknown} are not cameras of {task!r} "
                     f"({tabletop.camera_keys()}).")
  made = {}
  for job in jobs:
    wanted = recipe(spec, keys, len(job.seeds), job.options)
    if dataset_ready(job.path):
      check_recipe(job.path, wanted)
      continue
    shutil.rmtree(job.path, ignore_errors=True)  # an unfinished generation: start again
    log.info("Generating %d %s episodes of %s into %s", len(job.seeds),
             "video" if job.action_free else "expert", task, job.path)
    episodes = demos.generate_in_workers(job.seeds, spec, desc=f"generate {job.name}",
                                         **job.options)
    made[job.name] = write_dataset(job.path, episodes, keys, action_free=job.action_free,
                                   name=job.name)
    with open(os.path.join(job.path, RECIPE_JSON), "w") as f:
      json.dump(wanted, f, indent=2)
  return made
