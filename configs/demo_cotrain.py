"""The embedded demo with few action-labelled demonstrations plus action-free video (cotraining).

  python -m uwm_jax.train --config=configs/demo_cotrain.py          # UWM, labelled + video
  python -m uwm_jax.train --config=configs/demo_cotrain.py:matched  # video recorded like them
  python -m experiments.cotrain                                     # the whole experiment

configs/demo.py's task, model and recipe, trained on the first LABELLED_EPISODES of the demo's
expert episodes (the same dataset, workdirs/data/tabletop_push, read with `max_episodes`) and on
VIDEO_EPISODES expert episodes of other seeds recorded without actions
(workdirs/data/tabletop_push_video, generated on first use; `action_mask` False, the action
timestep pinned to pure noise: docs/model.md, "Training loss and the two timesteps"). The
mixture draws a video window with probability VIDEO_WEIGHT / (1 + VIDEO_WEIGHT). The rows without
video are configs/demo.py (and `:dp`) with `--config.data.sources.tabletop_push.max_episodes`;
the experiment, its rows and its results: docs/results/cotraining.md.

The video episodes are recorded by the clean expert (`data.demo_video_action_noise` 0: on-path
states only) while the labelled ones carry the demo's recovery noise (`data.demo_action_noise`
0.5). Variant `matched` records the video exactly like the labelled episodes (the same noise;
other seeds) into its own folder (workdirs/data/tabletop_push_video_noise<noise>: a generated
dataset's recipe holds its noise, so the two never mix).
"""

from configs import demo
from uwm_jax.data import source_configs

VIDEO = f"{demo.TASK}_video"
LABELLED_EPISODES = 100
VIDEO_EPISODES = 500
VIDEO_WEIGHT = 0.5
MATCHED = "matched"  # the variant: video recorded with the labelled episodes' action noise


def video_path(noise: float) -> str:
  """Where the video episodes recorded with executed-action noise `noise` live."""
  return f"workdirs/data/{VIDEO}" + (f"_noise{noise:g}" if noise else "")


def get_config(variant: str = ""):
  parts = [p for p in variant.split(",") if p]
  matched = MATCHED in parts
  c = demo.get_config(",".join(p for p in parts if p != MATCHED))
  if not c.model.predict_next_obs:
    raise ValueError("configs/demo_cotrain.py cotrains on action-free video, which the DP "
                     "baseline cannot use: train it with configs/demo.py:dp.")
  c.data.sources[demo.TASK].max_episodes = LABELLED_EPISODES
  c.data.demo_video_action_noise = c.data.demo_action_noise if matched else 0.0
  c.data.sources[VIDEO] = source_configs.array_record(
      video_path(c.data.demo_video_action_noise), weight=VIDEO_WEIGHT, action_free=True,
      cache_decoded_frames=True)
  c.data.demo_video_episodes = VIDEO_EPISODES
  return c
