"""Print a config's token layout, shapes and parameter counts (no arrays are allocated).

  python -m uwm_jax.summarize --config=configs/droid.py
  python -m uwm_jax.summarize --config=configs/libero.py --config.model.num_registers=8
"""

from absl import app
from ml_collections import config_flags

from uwm_jax.model.summary import describe

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)


def main(argv):
  del argv
  print(describe(_CONFIG.value))


if __name__ == "__main__":
  app.run(main)
