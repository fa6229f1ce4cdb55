"""Run by tests/test_data_lerobot.py with the LeRobot venv's python (.venv-lerobot: lerobot
0.4.4 and torchcodec; `.ci/run` builds it from requirements-lerobot.txt): writes datasets with
LeRobot's OWN writer and reads items back with LeRobot's OWN loader, so that the project's reader
is compared with the real library.

  python tests/lerobot_dataset_script.py write ROOT SPEC_JSON
      LeRobotDataset.create / add_frame / save_episode / finalize: a v3.0 dataset at ROOT.
      SPEC: {"fps", "cameras": {key: [H, W]}, "state_dim", "action_dim", "lengths": [...],
      "seed", "vcodec", "camera_dtype" ("video" or "image")}. Prints one JSON line with the
      arrays written (state, action).
  python tests/lerobot_dataset_script.py to_v21 SRC DST
      The v3.0 dataset SRC rewritten in the v2.1 layout published datasets use (one parquet
      and one H.264 mp4 per episode, meta/episodes.jsonl, tasks.jsonl, episodes_stats.jsonl).
  python tests/lerobot_dataset_script.py convert_v21 SRC_V21 WORK
      LeRobot's own v2.1 -> v3.0 converter (`convert_dataset_v21_to_v30.convert_dataset`, local,
      nothing pushed) on a copy of SRC_V21 in WORK; prints the converted folder.
  python tests/lerobot_dataset_script.py read ROOT INDICES_JSON OUT_NPZ
      `LeRobotDataset(root=ROOT, video_backend="torchcodec")[i]` for every index: frames as
      uint8 (round(255 x), the loader's float images), state, action, episode and frame index.
  python tests/lerobot_dataset_script.py fixture DIR SPEC_JSON
      All of it in one process (one start-up): DIR/v30 written, DIR/v21 from it, LeRobot's
      conversion of DIR/v21 under DIR/work, DIR/images (the same data with cameras of dtype
      "image"), and every item of DIR/v30, of that conversion and of DIR/images read into
      DIR/items_v30.npz, DIR/items_v21.npz and DIR/items_images.npz.

Every step is deterministic (seeded); nothing touches the network (HF_HUB_OFFLINE=1).
"""

import json
import os
import shutil
import sys
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # pylint: disable=wrong-import-position

STATE = "observation.state"
ACTION = "action"


def frame_image(shape, episode: int, t: int, camera: int) -> np.ndarray:
  """(H, W, 3) uint8: a smooth gradient with a square moving with t (compresses well, so
  decoded frames stay close to what was written)."""
  h, w = shape
  yy, xx = np.mgrid[0:h, 0:w]
  img = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                  np.full_like(xx, (40 * episode + 90 * camera) % 256)], -1)
  s = max(4, h // 4)
  y0, x0 = (3 * t + 5 * camera) % (h - s), (4 * t + 7 * episode) % (w - s)
  img[y0:y0 + s, x0:x0 + s] = (255 - 60 * camera, 30 * episode % 256, 200)
  return img.astype(np.uint8)


def write(root: str, spec: dict) -> dict:
  # pylint: disable-next=import-outside-toplevel
  from lerobot.datasets.lerobot_dataset import LeRobotDataset
  cameras = {k: tuple(v) for k, v in spec["cameras"].items()}
  dtype = spec.get("camera_dtype", "video")  # "image": PNG frames inside the parquet rows
  features = {k: {"dtype": dtype, "shape": (h, w, 3), "names": ["height", "width", "channels"]}
              for k, (h, w) in cameras.items()}
  features[STATE] = {"dtype": "float32", "shape": (spec["state_dim"],),
                     "names": [f"s{i}" for i in range(spec["state_dim"])]}
  features[ACTION] = {"dtype": "float32", "shape": (spec["action_dim"],),
                      "names": [f"a{i}" for i in range(spec["action_dim"])]}
  ds = LeRobotDataset.create(repo_id="uwm/lerobot_test", fps=spec["fps"], features=features,
                             root=root, robot_type="test_arm", use_videos=dtype == "video",
                             vcodec=spec.get("vcodec", "libsvtav1"))
  rng = np.random.default_rng(spec.get("seed", 0))
  written = {"state": [], "action": []}
  for e, length in enumerate(spec["lengths"]):
    state = rng.normal(size=(length, spec["state_dim"])).astype(np.float32)
    action = rng.uniform(-3, 3, size=(length, spec["action_dim"])).astype(np.float32)
    for t in range(length):
      frame = {k: frame_image(cameras[k], e, t, c) for c, k in enumerate(cameras)}
      frame.update({STATE: state[t], ACTION: action[t], "task": f"task {e % 2}"})
      ds.add_frame(frame)
    ds.save_episode()
    written["state"].append(state.tolist())
    written["action"].append(action.tolist())
  ds.finalize()
  return written


def _remux_h264(src: str, dst: str, start: float, end: float, fps: int) -> None:
  """Frames of `src` with start <= time < end, re-encoded as an H.264 mp4 starting at 0."""
  import av  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with av.open(src) as inp, av.open(dst, "w") as out:
    stream = None
    for frame in inp.decode(video=0):
      if frame.time < start - 1e-4 or frame.time >= end - 1e-4:
        continue
      if stream is None:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
        stream.options = {"crf": "18", "g": "4"}
      image = frame.to_ndarray(format="rgb24")
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


def to_v21(src: str, dst: str) -> None:
  """SRC (v3.0, written by `write`) -> the v2.1 layout at DST."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  info = json.load(open(os.path.join(src, "meta", "info.json")))
  episodes = pq.read_table(os.path.join(src, "meta", "episodes", "chunk-000",
                                        "file-000.parquet")).to_pylist()
  data = pq.read_table(os.path.join(src, "data", "chunk-000", "file-000.parquet"))
  tasks = pq.read_table(os.path.join(src, "meta", "tasks.parquet")).to_pandas()
  videos = [k for k, f in info["features"].items() if f["dtype"] == "video"]
  os.makedirs(os.path.join(dst, "meta"), exist_ok=True)
  chunk = "chunk-000"
  episodes_lines, stats_lines = [], []
  for ep in episodes:
    e = ep["episode_index"]
    rows = data.slice(ep["dataset_from_index"], ep["length"])
    path = os.path.join(dst, "data", chunk, f"episode_{e:06d}.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(rows, path)
    for key in videos:
      src_video = os.path.join(src, "videos", key, f"chunk-{ep[f'videos/{key}/chunk_index']:03d}",
                               f"file-{ep[f'videos/{key}/file_index']:03d}.mp4")
      _remux_h264(src_video, os.path.join(dst, "videos", chunk, key, f"episode_{e:06d}.mp4"),
                  ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"],
                  info["fps"])
    episodes_lines.append({"episode_index": e, "tasks": list(ep["tasks"]),
                           "length": ep["length"]})
    stats = {}
    for name in (STATE, ACTION):
      x = np.asarray(rows.column(name).to_pylist(), np.float64)
      stats[name] = {"min": x.min(0).tolist(), "max": x.max(0).tolist(),
                     "mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "count": [len(x)]}
    stats_lines.append({"episode_index": e, "stats": stats})
  with open(os.path.join(dst, "meta", "episodes.jsonl"), "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in episodes_lines)
  with open(os.path.join(dst, "meta", "episodes_stats.jsonl"), "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in stats_lines)
  with open(os.path.join(dst, "meta", "tasks.jsonl"), "w") as f:
    f.writelines(json.dumps({"task_index": int(i), "task": t}) + "\n"
                 for t, i in zip(tasks.index, tasks["task_index"]))
  info.update({"codebase_version": "v2.1", "total_chunks": 1, "total_videos":
               len(videos) * len(episodes), "chunks_size": 1000,
               "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
               "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/"
                             "episode_{episode_index:06d}.mp4"})
  for key in ("data_files_size_in_mb", "video_files_size_in_mb"):
    info.pop(key, None)
  for key in videos:
    info["features"][key]["info"]["video.codec"] = "h264"
  for feature in info["features"].values():
    feature.pop("fps", None)
  with open(os.path.join(dst, "meta", "info.json"), "w") as f:
    json.dump(info, f, indent=4)


def convert_v21(src: str, work: str) -> str:
  # pylint: disable-next=import-outside-toplevel
  from lerobot.datasets.v30 import convert_dataset_v21_to_v30 as conv
  repo = "uwm/lerobot_test_v21"
  copy = os.path.join(work, repo)
  shutil.rmtree(copy, ignore_errors=True)
  shutil.copytree(src, copy)
  conv.convert_dataset(repo, root=work, push_to_hub=False)
  return copy


def read(root: str, indices: Optional[list], out: str) -> None:
  # pylint: disable-next=import-outside-toplevel
  from lerobot.datasets.lerobot_dataset import LeRobotDataset
  ds = LeRobotDataset("uwm/lerobot_test", root=root, video_backend="torchcodec")
  indices = range(len(ds)) if indices is None else indices
  arrays = {}
  for i in indices:
    item = ds[int(i)]
    for key, value in item.items():
      if key in ds.meta.camera_keys:  # (C, H, W) float in [0, 1], video or image
        value = np.round(value.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
      elif hasattr(value, "numpy"):
        value = value.numpy()
      else:
        continue
      arrays.setdefault(key, []).append(value)
  np.savez(out, **{k: np.stack(v) for k, v in arrays.items()})


def fixture(out: str, spec: dict) -> None:
  written = write(os.path.join(out, "v30"), spec)
  to_v21(os.path.join(out, "v30"), os.path.join(out, "v21"))
  converted = convert_v21(os.path.join(out, "v21"), os.path.join(out, "work"))
  read(os.path.join(out, "v30"), None, os.path.join(out, "items_v30.npz"))
  read(converted, None, os.path.join(out, "items_v21.npz"))
  write(os.path.join(out, "images"), dict(spec, camera_dtype="image"))
  read(os.path.join(out, "images"), None, os.path.join(out, "items_images.npz"))
  print(json.dumps(written))


def main(argv):
  command = argv[1]
  if command == "write":
    print(json.dumps(write(argv[2], json.loads(argv[3]))))
  elif command == "fixture":
    fixture(argv[2], json.loads(argv[3]))
  elif command == "to_v21":
    to_v21(argv[2], argv[3])
  elif command == "convert_v21":
    print(json.dumps({"root": convert_v21(argv[2], argv[3])}))
  elif command == "read":
    read(argv[2], json.loads(argv[3]), argv[4])
  else:
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
  main(sys.argv)
