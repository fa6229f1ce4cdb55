"""Print a config's token layout, shapes and parameter counts (no arrays are allocated).

Example:

  python -m uwm_jax.summarize --config=configs/droid.py
  python -m uwm_jax.summarize --config=configs/libero.py --config.model.num_registers=8
"""

from absl import flags

from uwm_jax import cli_config
from uwm_jax.model.summary import describe

_CONFIG = cli_config.define_config_flag("Config file.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  print(describe(_CONFIG.value))


if __name__ == "__main__":
  cli_config.run(main)
