"""The downstream task of the pretrain -> finetune experiment: reach, in the embedded demo's scene.

  python -m uwm_jax.train --config=configs/demo_reach.py \
      --config.init_from=workdirs/pretrain_finetune/stage1/uwm_small_seed0/checkpoints
  python -m uwm_jax.train --config=configs/demo_reach.py:dp     # DP, trained on it alone
  python -m experiments.pretrain_finetune                       # the whole experiment

configs/demo.py's model (so that a checkpoint pretrained on the push task loads with
`--config.init_from`) on EPISODES scripted-expert episodes of `tabletop_reach`, generated on
first use into workdirs/data/tabletop_reach with the demo's recovery noise
(`data.demo_action_noise`): the same pusher, table, puck, goal pad and cameras as the push task,
another task (bring the pusher onto the goal pad, around the puck). Every run of the
experiment, finetuned or trained on this set alone, uses this recipe: STEPS steps, the demo's
learning rate with a cosine schedule after WARMUP_STEPS of warmup, a fresh optimizer; a
finetuned run keeps its pretraining run's normalisation statistics (the reference's default,
docs/training.md, "Finetuning"). The policy is evaluated on `tabletop_reach`
(`eval.env`; its out-of-distribution variants: tabletop_reach_ood[_<shift>]).
"""

import ml_collections

from configs import demo
from uwm_jax.data import source_configs

TASK = "tabletop_reach"
DATA_PATH = f"workdirs/data/{TASK}"
EPISODES = 30
STEPS = 1000
WARMUP_STEPS = 100


def get_config(variant: str = ""):
  c = demo.get_config(variant)
  c.data.sources = ml_collections.ConfigDict(
      {TASK: source_configs.array_record(DATA_PATH, cache_decoded_frames=True)})
  c.data.demo_task = TASK
  c.data.demo_episodes = EPISODES
  c.num_steps = STEPS
  c.optim.warmup_steps = WARMUP_STEPS
  c.eval.env = TASK
  return c
