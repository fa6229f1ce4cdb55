"""Finetune a pretrained UWM on your own robot's LeRobot dataset (docs/data.md, "Your own robot
(LeRobot)"): convert once, finetune, serve back with the dataset's own keys.

  python -m uwm_jax.data.convert_lerobot --src=/data/lerobot/so101_pick_place \\
      --out=/data/uwm/so101_pick_place --image_shape=128,128
  python -m uwm_jax.train --config=configs/lerobot_finetune.py --workdir=/ckpt/uwm_so101 \\
      --config.data.sources.lerobot.path=/data/uwm/so101_pick_place \\
      --config.init_from=/ckpt/uwm_libero90/checkpoints
  python -m uwm_jax.serve --checkpoint_dir=/ckpt/uwm_so101/checkpoints --robot=lerobot \\
      --host=0.0.0.0

The variant is the pretrained model's architecture, which the finetuned model keeps (init_from
loads every parameter; shapes must match):
  libero (default) configs/libero90.py: two views of 128x128 (convert with
                   --image_shape=128,128), 7-d actions, no low-dim input: a two-camera arm
                   (e.g. observation.images.front and .wrist) maps onto it as it is.
  droid            configs/droid.py: three views of 180x320 (--image_shape=180,320), 10-d
                   actions, no low-dim input; name a camera per view, e.g.
                   --config.data.sources.lerobot.cameras='("observation.images.front",
                   "observation.images.front","observation.images.wrist")' (on one line).
  tiny             configs/tiny.py's model with 8-d actions and 8-d low-dim input, 32x32 views
                   (--image_shape=32,32): CPU tests and a quick look at the whole path.
Append ",dp" for the diffusion-policy baseline of a `:dp` pretraining run (e.g. `:libero,dp`).

Mapping (`source_configs.lerobot`): the dataset's cameras feed the model's views in order — as
many cameras as views, a camera may repeat (a two-camera arm on the DROID model,
as above); the dataset's action (A_d numbers) and state (D_d) are zero-padded to the
model's widths, so a 6-d SO-101 action trains the LIBERO model's 7-d head; the state is used by
models with low-dim input only. The normalisation statistics are this dataset's
(train.recompute_dataset_stats: the pretraining run's belong to another robot). The policy
server reads the mapping from the checkpoint: requests carry "observation.images.*" and
"observation.state" as the dataset names them, answers hold A_d-d actions, de-normalised.

Recipe (the LIBERO finetuning of configs/libero_finetune.py): global batch 72, 10k steps, AdamW
1e-4 with 1000 linear warmup steps then a half cosine to 0, gradient clipping at 1.0, fresh
optimizer state; 5% of the episodes held out (offline metrics every 2000 steps, the number to
watch is action_mse_marginal on them).
"""

import ml_collections

from configs import droid, libero90, libero_finetune, tiny
from uwm_jax.data import source_configs

BASES = {"droid": droid.get_config, "libero": libero90.get_config, "tiny": tiny.get_config}


def parse_variant(variant: str):
  """"" | "libero" | "droid,dp" | "tiny" -> (base, model variant)."""
  base, _, model_variant = (variant or "").partition(",")
  base = base or "libero"
  if base not in BASES:
    raise ValueError(f"configs/lerobot_finetune.py: unknown variant {base!r}; known: "
                     f"{sorted(BASES)} (e.g. --config=configs/lerobot_finetune.py:libero).")
  return base, model_variant


def get_config(variant: str = ""):
  base, model_variant = parse_variant(variant)
  c = BASES[base](model_variant)
  c.data.sources = ml_collections.ConfigDict(
      {"lerobot": source_configs.lerobot("")})
  c.data.normalize = True
  c.train.recompute_dataset_stats = True
  c.init_from = ""  # required: the pretraining run's checkpoints folder
  c.eval.env = ""  # no simulator for your robot: offline metrics on the held-out episodes
  if base == "tiny":
    c.model.action_dim = 8
    c.model.low_dim_dim = 8
    c.num_steps = 20
    t = c.train
    t.log_every = 5
    t.save_every = 10
    t.eval_every = 20
    t.eval_num_batches = 1
    return c
  libero_finetune.apply_finetuning(c)
  return c
