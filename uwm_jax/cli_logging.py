"""What an entry point's log shows: the project's own progress and every warning.

By default the INFO lines of the libraries underneath (Orbax's ~60 per checkpoint save, absl,
jax, TensorStore, grain, TFDS, websockets) are hidden; the project's own INFO lines (loggers
under `uwm_jax`, the running entry point's `__main__`, and the root logger that the data
modules log through) and every WARNING or worse of anyone show. absl's `--verbosity` flag,
which every entry point has, turns the libraries' lines back on with absl's meaning for every
logger: `--verbosity=0` shows INFO, `--verbosity=1` DEBUG as well; `--verbosity=-1` WARNING
and worse only, the project's progress included. absl's `--logger_levels=orbax:INFO,...` (one
level per logger) shows them too.

  cli_config.run(main)   # calls show_libraries(verbosity_given()) before main
"""

import logging

from absl import flags

PROJECT_LOGGERS = ("uwm_jax", "__main__")


def is_project_logger(name: str) -> bool:
  """The project's own loggers: `uwm_jax.*`, `__main__` and the root logger (`logging.info`)."""
  return name == "root" or any(name == p or name.startswith(p + ".") for p in PROJECT_LOGGERS)


class ProjectOrWarning(logging.Filter):
  """Passes the project's own records and any record at WARNING or above."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or is_project_logger(record.name)


PROJECT_OR_WARNING = ProjectOrWarning()


def verbosity_given() -> bool:
  """True when absl's --verbosity (-v) or --logger_levels was given on the command line."""
  return flags.FLAGS.is_parsed() and any(flags.FLAGS[name].present > 0
                                         for name in ("verbosity", "logger_levels"))


def show_libraries(show: bool) -> None:
  """Show (True) or hide (False) the libraries' INFO and DEBUG lines on every handler of the
  root logger (absl's stderr handler in an entry point)."""
  for handler in logging.root.handlers:
    if show:
      handler.removeFilter(PROJECT_OR_WARNING)
    else:
      handler.addFilter(PROJECT_OR_WARNING)


def libraries_hidden() -> bool:
  """Whether `show_libraries(False)` is in effect (for worker processes to do the same)."""
  return any(PROJECT_OR_WARNING in handler.filters for handler in logging.root.handlers)
