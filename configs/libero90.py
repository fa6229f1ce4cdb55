"""UWM pretraining on LIBERO-90 (90 tasks x 50 demos, task-agnostic; docs/data.md).

  python -m uwm_jax.data.convert_libero --hdf5_dir=/data/LIBERO/libero_90 --data_dir=/data/tfds \\
      --suite=libero_90
  python -m uwm_jax.data.convert_rlds rlds --data_dir=/data/tfds --builder=libero_90 \\
      --out=/data/uwm/libero_90 --camera_keys=agentview_rgb,eye_in_hand_rgb --action_key=action
  python -m uwm_jax.train --config=configs/libero90.py --workdir=/ckpt/uwm_libero90 \\
      --config.data.sources.libero_90.path=/data/uwm/libero_90 \\
      --config.init_from=/ckpt/uwm_init_libero/checkpoints

Reference run: global batch 144 (36 x 4), 100k steps, constant LR 1e-4, actions used as stored
(already in [-1, 1]: data.normalize=False), 225 of the 4500 demos held out for validation,
checkpoints and offline evaluation every 10k steps (no rollouts: the reference skips them for
LIBERO-90). ~0.95 TFLOP per sample per step (analytic, 88% VAE encoding). This run is the
starting point of configs/libero_finetune.py; the paper's finetuned success rates are in
docs/evaluation.md "Paper numbers" (Table II, average 0.79).
"""

from configs import droid, libero


def get_config(variant: str = ""):
  c = libero.get_config(variant)  # the libero_90 source, actions used raw (data.normalize False)
  droid.apply_pretraining(c)
  return c
