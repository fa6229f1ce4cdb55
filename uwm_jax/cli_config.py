"""The one way every entry point gets its config: `--config=FILE[:variant]` plus overrides.

Entry points declare the flag with `define_config_flag` (ml_collections `config_flags`): the file
is executed, `get_config(variant)` called (`get_config()` without a variant) and any
`--config.FIELD=VALUE` applied, e.g.

  python -m uwm_jax.train --config=configs/droid.py:dp --config.batch_size=64

Library code and tests that hold a spec string load it with `load_config(spec, overrides)`,
which goes through that same flag (a relative path is also tried from the repository root, so
`configs/tiny.py` works from any working directory). Nothing else in the package loads config
files.
"""

import os
import sys
from typing import Callable, Sequence, Tuple

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from uwm_jax import cli_errors, cli_logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELP_ARGS = ("--help", "-h", "-?", "--helpshort")

# Flags defined through this module (the --config flag) belong to the entry point that calls
# `define_config_flag`, so that its --help lists them.
flags.disclaim_key_flags()


def split_spec(spec: str) -> Tuple[str, str]:
  """`path/to/config.py[:variant]` -> (path, variant); variant is "" when there is none."""
  path, _, variant = spec.partition(":")
  return path, variant


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`path/to/config.py[:variant]` -> the config that `--config=spec` gives an entry point.

  overrides: `--config.FIELD=VALUE` strings, applied as on a command line. An unknown field or a
  value of the wrong type raises ValueError.
  """
  path, variant = split_spec(spec)
  if not os.path.isfile(path) and os.path.isfile(os.path.join(REPO_ROOT, path)):
    path = os.path.join(REPO_ROOT, path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} not found.")
  argv = ["load_config", f"--config={path}" + (f":{variant}" if variant else ""), *overrides]
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                           lock_config=False, sys_argv=argv)
  try:
    flag_values(argv)
  except flags.Error as e:
    raise ValueError(f"--config={spec}: {e}") from None
  except (AttributeError, KeyError) as e:  # ml_collections: an override names no config field
    raise ValueError(f"--config={spec}: the config has no field {e} ({' '.join(overrides)})."
                     ) from None
  return holder.value


# Names of the config flags defined with `define_config_flag` (their files are checked by `run`).
_CONFIG_FLAG_NAMES = []


def define_config_flag(help_string: str, *, lock_config: bool = True):
  """The `--config` flag of an entry point (a FlagHolder; `.value` is the ConfigDict or None)."""
  _CONFIG_FLAG_NAMES.append("config")
  return config_flags.DEFINE_config_file("config", None, help_string, lock_config=lock_config)


def config_arg(name: str = "config") -> str:
  """The `FILE[:variant]` text given to the config flag (after parsing), "" when not given."""
  return config_flags.get_config_filename(flags.FLAGS[name]) or ""


def check_config_file(flag_name: str = "config") -> None:
  """A config flag naming a file that does not exist is one clear error (ml_collections
  reports it, when the value is first read, as "Configuration is not available because of an
  earlier failure" with the load attempts, over several lines)."""
  if not flags.FLAGS[flag_name].present:
    return
  path, _ = split_spec(config_arg(flag_name))
  if path and not os.path.isfile(path):
    raise FileNotFoundError(f"--{flag_name}: config file {path} does not exist.")


def config_value(flag_holder, flag_name: str = "config"):
  """The value of a config flag (`define_config_flag`); a missing file is one clear error."""
  check_config_file(flag_name)
  return flag_holder.value


def default_workdir(config_spec: str) -> str:
  """workdirs/<config file stem>[_<variant>] for --config=configs/<stem>.py[:<variant>]."""
  path, variant = split_spec(config_spec)
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", stem + (f"_{variant}" if variant else ""))


def run(main: Callable) -> None:
  """`app.run(main)` for every entry point. `--help` prints the entry point's docstring (which
  opens with a worked example) and its flags, and exits 0 (absl's own --help exits 1); an
  error is one `error:` line and exit status 2 (`cli_errors.run`; `--traceback` shows it all).
  The log shows the project's progress and every warning; libraries' INFO lines only with
  `--verbosity=0` (DEBUG too with `--verbosity=1`; `uwm_jax.cli_logging`)."""
  if any(arg in HELP_ARGS for arg in sys.argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)

  def checked_main(argv):
    cli_logging.show_libraries(cli_logging.verbosity_given())
    for name in _CONFIG_FLAG_NAMES:
      check_config_file(name)
    return main(argv)

  cli_errors.run(checked_main)
