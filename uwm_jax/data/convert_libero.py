"""LIBERO demonstration HDF5 files -> RLDS/TFDS datasets (images turned upright).

  # LIBERO-90 pretraining set (90 files x 50 demos) as builder `libero_90`:
  python -m uwm_jax.data.convert_libero --hdf5_dir=/data/LIBERO/libero_90 --data_dir=/data/tfds \\
      --suite=libero_90
  # The five downstream tasks of the paper, one builder each (libero_book_caddy, ...):
  python -m uwm_jax.data.convert_libero --hdf5_dir=/data/LIBERO/libero_10 --data_dir=/data/tfds \\
      --suite=paper_tasks
  # Then into the training format, e.g.:
  python -m uwm_jax.data.convert_rlds rlds --data_dir=/data/tfds --builder=libero_90 \\
      --out=/data/uwm/libero_90 --camera_keys=agentview_rgb,eye_in_hand_rgb --action_key=action

HDF5 layout read (docs/data.md, "Action encodings"): `data/demo_<i>/obs/<camera>`
(L, 128, 128, 3) uint8 stored upside down, `data/demo_<i>/actions` (L, 7) = delta position 3 | delta axis-angle 3 | gripper,
already in [-1, 1]; optional low-dim obs (`ee_pos`, `ee_ori`, `gripper_states`,
`joint_states`). Files are read in sorted order and demos in index order (demo_2 before
demo_10). Images are flipped vertically (axis H) as the reference's `flip_rgb` does.
RLDS episode: steps/observation/{agentview_rgb, eye_in_hand_rgb} (PNG by default, lossless),
steps/observation/<low-dim key> float32, steps/action (7,) float32, steps/language_instruction;
episode_metadata/{file_path ("<file stem>/demo_<i>"), recording_folderpath (the file stem)}.
"""

import glob
import json
import logging
import os
import re
from typing import Dict, Iterator, List, Sequence

import h5py
import numpy as np
from absl import app, flags

from uwm_jax import cli_config
from uwm_jax.config_base import LIBERO_CAMERA_KEYS
from uwm_jax.data.rlds_writer import write_rlds_dataset

LOW_DIM_KEYS = ("ee_pos", "ee_ori", "gripper_states", "joint_states")

# The paper's downstream LIBERO-10 tasks: builder name -> (paper name, file stem in libero_10/).
PAPER_TASKS: Dict[str, tuple] = {
    "libero_book_caddy": ("Book-Caddy", "STUDY_SCENE1_pick_up_the_book_and_place_it_in_the_"
                                        "back_compartment_of_the_caddy"),
    "libero_soup_cheese": ("Soup-Cheese", "LIVING_ROOM_SCENE1_put_both_the_alphabet_soup_and_"
                                          "the_cream_cheese_box_in_the_basket"),
    "libero_bowl_drawer": ("Bowl-Drawer", "KITCHEN_SCENE4_put_the_black_bowl_in_the_bottom_"
                                          "drawer_of_the_cabinet_and_close_it"),
    "libero_moka_moka": ("Moka-Moka", "KITCHEN_SCENE8_put_both_moka_pots_on_the_stove"),
    "libero_mug_mug": ("Mug-Mug", "LIVING_ROOM_SCENE5_put_the_white_mug_on_the_left_plate_and_"
                                  "put_the_yellow_and_white_mug_on_the_right_plate"),
}
DEMO_SUFFIX = "_demo.hdf5"


def task_file(hdf5_dir: str, task: str) -> str:
  """The demo file of a paper task, by builder name (libero_book_caddy) or paper name."""
  for builder, (paper, stem) in PAPER_TASKS.items():
    if task in (builder, paper, builder[len("libero_"):]):
      path = os.path.join(hdf5_dir, stem + DEMO_SUFFIX)
      if not os.path.exists(path):
        raise FileNotFoundError(f"LIBERO task {paper} ({builder}): {path!r} does not exist.")
      return path
  raise ValueError(f"Unknown LIBERO task {task!r}; known: "
                   f"{[f'{b} ({p})' for b, (p, _) in PAPER_TASKS.items()]}.")


def _demo_index(name: str) -> int:
  m = re.fullmatch(r"demo_(\d+)", name)
  return int(m.group(1)) if m else -1


def read_hdf5_episodes(path: str, camera_keys: Sequence[str] = LIBERO_CAMERA_KEYS,
                       low_dim_keys: Sequence[str] = LOW_DIM_KEYS) -> Iterator[dict]:
  """Episodes (RLDS dicts, images upright) of one LIBERO demonstration file, in demo order."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"LIBERO file {path!r} does not exist.")
  stem = os.path.basename(path)
  stem = stem[:-len(DEMO_SUFFIX)] if stem.endswith(DEMO_SUFFIX) else os.path.splitext(stem)[0]
  with h5py.File(path, "r") as f:
    if "data" not in f:
      raise ValueError(f"LIBERO file {path!r} has no 'data' group (keys {sorted(f.keys())}).")
    language = ""
    if "problem_info" in f["data"].attrs:
      language = json.loads(f["data"].attrs["problem_info"]).get("language_instruction", "")
    demos = sorted((k for k in f["data"] if _demo_index(k) >= 0), key=_demo_index)
    for name in demos:
      g = f["data"][name]
      where = f"LIBERO file {path!r}, episode {name}"
      for key in camera_keys:
        if key not in g.get("obs", {}):
          raise ValueError(f"{where}: no field 'obs/{key}' (it has "
                           f"{sorted(g['obs'].keys()) if 'obs' in g else []}).")
      if "actions" not in g:
        raise ValueError(f"{where}: no field 'actions'.")
      actions = np.asarray(g["actions"], np.float32)
      if not np.isfinite(actions).all():
        step = int(np.argwhere(~np.isfinite(actions))[0][0])
        raise ValueError(f"{where}: field 'actions' holds NaN/inf (first at step {step}).")
      obs = {k: np.ascontiguousarray(np.asarray(g["obs"][k])[:, ::-1]) for k in camera_keys}
      for k in low_dim_keys:
        if k in g["obs"]:
          obs[k] = np.asarray(g["obs"][k], np.float32).reshape(len(actions), -1)
      yield {"steps": {"observation": obs, "action": actions,
                       "language_instruction": language},
             "episode_metadata": {"file_path": f"{stem}/{name}", "recording_folderpath": stem}}


def write_libero_rlds(hdf5_paths: Sequence[str], data_dir: str, name: str, *,
                      image_format: str = "png", num_shards: int = 0,
                      file_format: str = "tfrecord") -> str:
  """Write the demos of `hdf5_paths` (sorted) as RLDS builder `name`; returns its directory.

  num_shards: output files (0 = one per HDF5 file, so the array_record conversion can run one
  process per file).
  """
  paths = sorted(hdf5_paths)
  if not paths:
    raise FileNotFoundError(f"No LIBERO HDF5 files given for {name!r}.")

  def episodes():
    for p in paths:
      yield from read_hdf5_episodes(p)
  return write_rlds_dataset(data_dir, name, episodes(), image_format=image_format,
                            num_shards=num_shards or len(paths), file_format=file_format,
                            description=f"LIBERO demonstrations from {len(paths)} files, "
                                        f"images upright.")


def convert_suite(hdf5_dir: str, data_dir: str, suite: str, **kwargs) -> List[str]:
  """libero_90: every *.hdf5 in hdf5_dir as one builder; paper_tasks: one builder per task;
  or a single paper task by name. Returns the builder directories."""
  if not os.path.isdir(hdf5_dir):
    raise FileNotFoundError(f"LIBERO hdf5_dir {hdf5_dir!r} does not exist.")
  if suite == "libero_90":
    return [write_libero_rlds(glob.glob(os.path.join(hdf5_dir, "*.hdf5")), data_dir, suite,
                              **kwargs)]
  if suite == "paper_tasks":
    return [write_libero_rlds([task_file(hdf5_dir, b)], data_dir, b, **kwargs)
            for b in PAPER_TASKS]
  path = task_file(hdf5_dir, suite)
  builder = next(b for b, (p, s) in PAPER_TASKS.items() if path.endswith(s + DEMO_SUFFIX))
  return [write_libero_rlds([path], data_dir, builder, **kwargs)]


def define_flags() -> None:
  """The command line's flags, defined only when this module runs as a program (it is also a
  library: flags defined at import would collide with those of the entry point importing it)."""
  flags.DEFINE_string("hdf5_dir", None, "folder of LIBERO *_demo.hdf5 files.", required=True)
  flags.DEFINE_string("data_dir", None, "TFDS data_dir to write into.", required=True)
  flags.DEFINE_string("suite", "libero_90",
                      "libero_90 | paper_tasks | one task (book_caddy, Book-Caddy, ...).")
  flags.DEFINE_enum("image_format", "png", ["png", "jpeg"], "image encoding in the dataset.")
  flags.DEFINE_enum("file_format", "tfrecord", ["tfrecord", "array_record"],
                    "TFDS file format.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}.")
  logging.basicConfig(level=logging.INFO)
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  for d in convert_suite(FLAGS.hdf5_dir, FLAGS.data_dir, FLAGS.suite,
                         image_format=FLAGS.image_format, file_format=FLAGS.file_format):
    print(d)


if __name__ == "__main__":
  define_flags()
  cli_config.run(main)
