"""UWM pretraining on DROID with the reference hyperparameters (docs/model.md, docs/training.md).

  python -m uwm_jax.summarize --config=configs/droid.py
  python -m uwm_jax.summarize --config=configs/droid.py:dp      # the DP baseline

Data: DROID (TFDS, as published) converted once (docs/data.md), e.g. the reference's robot split:
  python -m uwm_jax.data.convert_rlds droid --data_dir=/data/tfds --builder=droid \\
      --out=/data/uwm/droid_weird --include=WEIRD --max_episodes=2000 --num_processes=8
  ... --config.data.sources.droid.path=/data/uwm/droid_weird
Cotraining with the action-free split: configs/droid_cotrain.py.

Expect 171 tokens (16 action + 147 obs + 8 registers), AdaLN condition width 5120, next-obs
latent (3, 4, 2, 28, 28) and 396,485,578 trainable parameters (+ the frozen 83.65M SDXL VAE).
The `dp` variant is the diffusion-policy baseline: action tokens only, one timestep.

Training (the SDXL VAE and ImageNet ResNet-18 weights come from an init checkpoint written by
the weight import; see docs/training.md):

  python -m uwm_jax.train --config=configs/droid.py --workdir=/ckpt/uwm_droid \\
      --config.data.sources.droid.path=/data/uwm/droid_weird \\
      --config.init_from=/ckpt/uwm_init_droid/checkpoints

Reference run: global batch 144 (36 x 4 GPUs), 100k steps of constant-LR AdamW (1e-4), ~24 h on
4 A100s (the paper). Checkpoints and offline evaluation (docs/evaluation.md, "Offline metrics")
every 10k steps; action_mse_marginal on the validation split (raw action units) is the number
to watch. This repository has not run the full recipe; the paper's success rates after
finetuning are in docs/evaluation.md, "Paper numbers". Memory per device, FLOPs per step, the
mesh and precision options: docs/training.md; the TPU presets (`:v5p-8`, ...): docs/launch.md.
"""

from uwm_jax import config_base
from uwm_jax.data import source_configs

# The command that writes the robot split (docs/data.md); DIR is the folder that
# --config.data.sources.droid.path names. A missing folder's error shows it.
CONVERT_ROBOT_SPLIT = ("python -m uwm_jax.data.convert_rlds droid --data_dir=/data/tfds "
                       "--builder=droid --out=DIR --include=WEIRD --max_episodes=2000")


def apply_pretraining(c) -> None:
  """The reference's pretraining loop settings (template_train.yaml), shared by the DROID and
  LIBERO-90 pretraining configs."""
  c.batch_size = 144
  c.num_steps = 100_000
  c.optim.schedule = "constant"
  c.optim.learning_rate = 1e-4
  t = c.train
  t.log_every = 100
  t.save_every = 10_000
  t.eval_every = 10_000
  t.keep_last = 2
  t.keep_every = 50_000


def get_config(variant: str = ""):
  c = config_base.base_config()
  m = c.model
  m.camera_keys = config_base.DROID_CAMERA_KEYS
  m.image_shape = (180, 320)
  m.resize_shape = (240, 320)
  m.crop_shape = (224, 224)
  m.action_dim = 10
  m.num_registers = 8
  c.data.sources.droid = source_configs.array_record("", write_command=CONVERT_ROBOT_SPLIT)
  apply_pretraining(c)
  config_base.apply_variant(c, variant)
  return c
