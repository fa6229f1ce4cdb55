"""Finetune a LIBERO-90 pretrained UWM on one downstream LIBERO-10 task (docs/training.md).

The task is the config variant: book_caddy, soup_cheese, bowl_drawer, moka_moka or mug_mug
(the paper's Book-Caddy, Soup-Cheese, Bowl-Drawer, Moka-Moka, Mug-Mug; 50 demos each, 2 held
out for validation). Append ",dp" for the DP baseline (e.g. `:book_caddy,dp`).

  python -m uwm_jax.data.convert_libero --hdf5_dir=/data/LIBERO/libero_10 --data_dir=/data/tfds \\
      --suite=paper_tasks
  python -m uwm_jax.data.convert_rlds rlds --data_dir=/data/tfds --builder=libero_book_caddy \\
      --out=/data/uwm/libero_book_caddy --camera_keys=agentview_rgb,eye_in_hand_rgb \\
      --action_key=action
  python -m uwm_jax.train --config=configs/libero_finetune.py:book_caddy \\
      --workdir=/ckpt/uwm_book_caddy_s0 --config.seed=0 \\
      --config.init_from=/ckpt/uwm_libero90/checkpoints \\
      --config.data.sources.book_caddy.path=/data/uwm/libero_book_caddy

Recipe (template_finetune_robomimic.yaml + paper): global batch 72 (36 x 2), 10k steps (the
paper; the reference config says 20k), AdamW 1e-4 with 1000 linear warmup steps then a half
cosine to 0, gradient clipping at global norm 1.0, fresh optimizer state, and the pretraining
run's normalisation statistics (identity for LIBERO). The paper reports, over 3 seeds x 50
initialisations of its OOD variant, 0.91 / 0.93 / 0.80 / 0.68 / 0.65 success (average 0.79);
rollouts are run by `python -m uwm_jax.evaluate` on the finished checkpoint.
"""

import ml_collections

from configs import libero
from uwm_jax.data import source_configs

DATA_ROOT = "/data/uwm"  # task data at DATA_ROOT/libero_<task>; override the source's path
# variant name -> the paper's task name (data written by `uwm_jax.data.convert_libero` as
# libero_<task>).
TASKS = {
    "book_caddy": "Book-Caddy",
    "soup_cheese": "Soup-Cheese",
    "bowl_drawer": "Bowl-Drawer",
    "moka_moka": "Moka-Moka",
    "mug_mug": "Mug-Mug",
}


def parse_variant(variant: str):
  """"book_caddy" or "book_caddy,dp" -> ("book_caddy", "" | "dp")."""
  task, _, model_variant = (variant or "").partition(",")
  if task not in TASKS:
    raise ValueError(f"configs/libero_finetune.py needs a task variant, e.g. "
                     f"--config=configs/libero_finetune.py:book_caddy; known: {sorted(TASKS)} "
                     f"(got {variant!r}).")
  return task, model_variant


def apply_finetuning(c) -> None:
  """The finetuning recipe above (also configs/lerobot_finetune.py's)."""
  c.batch_size = 72
  c.num_steps = 10_000
  o = c.optim
  o.learning_rate = 1e-4
  o.schedule = "cosine"
  o.warmup_steps = 1000
  o.grad_clip_norm = 1.0
  t = c.train
  c.init_from = ""  # required: the pretraining run's checkpoints folder
  t.log_every = 50
  t.save_every = 2_000
  t.eval_every = 2_000
  t.keep_last = 2
  t.keep_every = 0


def get_config(variant: str = ""):
  task, model_variant = parse_variant(variant)
  c = libero.get_config(model_variant)
  c.data.sources = ml_collections.ConfigDict(
      {task: source_configs.array_record(f"{DATA_ROOT}/libero_{task}",
                                         write_command=libero.conversion_command(
                                             f"libero_{task}", "/data/LIBERO/libero_10",
                                             "paper_tasks"))})
  c.data.normalize = False
  apply_finetuning(c)
  return c
