"""The embedded demo with few action-labelled demonstrations plus action-free video (cotraining).

  python -m uwm_jax.train --config=configs/demo_cotrain.py      # UWM, labelled + video
  python -m uwm_jax.bench.cotrain                               # the whole experiment

configs/demo.py's task, model and recipe, trained on the first LABELLED_EPISODES of the demo's
expert episodes (the same dataset, workdirs/data/tabletop_push, read with `max_episodes`) and on
VIDEO_EPISODES expert episodes of other seeds recorded without actions
(workdirs/data/tabletop_push_video, generated on first use; `action_mask` False, the action
timestep pinned to pure noise: docs/model.md, "Training loss and the two timesteps"). The
mixture draws a video window with probability VIDEO_WEIGHT / (1 + VIDEO_WEIGHT). The rows without
video are configs/demo.py (and `:dp`) with `--config.data.sources.tabletop_push.max_episodes`;
the experiment, its rows and its results: docs/results/cotraining.md.
"""

from configs import demo
from uwm_jax.data import source_configs

VIDEO = f"{demo.TASK}_video"
LABELLED_EPISODES = 100
VIDEO_EPISODES = 500
VIDEO_WEIGHT = 0.5


def get_config(variant: str = ""):
  c = demo.get_config(variant)
  if not c.model.predict_next_obs:
    raise ValueError("configs/demo_cotrain.py cotrains on action-free video, which the DP "
                     "baseline cannot use: train it with configs/demo.py:dp.")
  c.data.sources[demo.TASK].max_episodes = LABELLED_EPISODES
  c.data.sources[VIDEO] = source_configs.array_record(
      f"workdirs/data/{VIDEO}", weight=VIDEO_WEIGHT, action_free=True, cache_decoded_frames=True)
  c.data.demo_video_episodes = VIDEO_EPISODES
  return c
