"""UWM on LIBERO with the reference hyperparameters (docs/model.md "Shapes and tokens").

  python -m uwm_jax.summarize --config=configs/libero.py

Data: LIBERO-90 demonstrations converted once (docs/data.md):
  python -m uwm_jax.data.convert_libero --hdf5_dir=/data/LIBERO/libero_90 --data_dir=/data/tfds
  python -m uwm_jax.data.convert_rlds rlds --data_dir=/data/tfds --builder=libero_90 \
      --out=/data/uwm/libero_90 --camera_keys=agentview_rgb,eye_in_hand_rgb --action_key=action
  ... --config.data.sources.libero_90.path=/data/uwm/libero_90

Expect 138 tokens (16 action + 98 obs + 24 registers), AdaLN condition width 3584, next-obs
latent (2, 4, 2, 28, 28) and 309,160,135 trainable parameters (+ the frozen SDXL VAE).
"""

from uwm_jax import config_base
from uwm_jax.data import source_configs


def conversion_command(builder: str, hdf5_dir: str, suite: str) -> str:
  """The commands that write a LIBERO dataset (docs/data.md): the HDF5 demos to RLDS, then to
  array_record in DIR, the folder that --config.data.sources.<name>.path names."""
  return (f"python -m uwm_jax.data.convert_libero --hdf5_dir={hdf5_dir} --data_dir=/data/tfds "
          f"--suite={suite} && python -m uwm_jax.data.convert_rlds rlds --data_dir=/data/tfds "
          f"--builder={builder} --out=DIR "
          f"--camera_keys={','.join(config_base.LIBERO_CAMERA_KEYS)} --action_key=action")


def get_config(variant: str = ""):
  c = config_base.base_config()
  m = c.model
  m.camera_keys = config_base.LIBERO_CAMERA_KEYS
  m.image_shape = (128, 128)
  m.resize_shape = (240, 240)
  m.crop_shape = (224, 224)
  m.action_dim = 7
  m.num_registers = 24
  # LIBERO actions are already in [-1, 1] and are used unnormalised (docs/data.md).
  c.data.normalize = False
  c.data.sources.libero_90 = source_configs.array_record("", write_command=conversion_command(
      "libero_90", "/data/LIBERO/libero_90", "libero_90"))
  config_base.apply_variant(c, variant)
  return c
