"""Errors of the command-line entry points: one readable line and exit status 2.

  from uwm_jax import cli_errors
  if __name__ == "__main__":
    cli_errors.run(main)            # instead of absl.app.run(main)

Any exception raised by `main` (a missing file, a bad config field, a mesh that does not fit,
a corrupt checkpoint, ...) prints `error: <message>` on stderr and exits with status 2; the
full traceback is printed instead with `--traceback`. Messages written for a person on several
lines (a list of mismatched arrays, one line per unreadable checkpoint) keep their lines.
"""

import ast
import sys
from typing import Callable

from absl import app, flags

from uwm_jax import extras

_TRACEBACK = flags.DEFINE_bool("traceback", False,
                               "On an error, print the full Python traceback instead of one line.")

EXIT_STATUS = 2
_MAX_LINES = 40


def _unescape(text: str) -> str:
  """`'\\'sav_every\\'\\nDid you mean ...'` (a repr, as ml_collections' AttributeError and every
  KeyError print) -> the text it stands for."""
  text = text.strip()
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
    if isinstance(value, str):
      return value
  return text


def readable_message(error: BaseException) -> str:
  """The message of `error` for a person: unescaped, blank lines dropped, at most 40 lines;
  an unknown config field reads `unknown config field 'sav_every' (did you mean ...)`, a missing
  optional dependency names the extra that installs it (`extras`)."""
  if isinstance(error, ModuleNotFoundError) and extras.missing_module_message(error):
    return extras.missing_module_message(error)
  lines = [line.rstrip() for line in _unescape(str(error)).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if isinstance(error, AttributeError) and len(lines) == 2 and lines[1].startswith("Did you mean"):
    return f"unknown config field {lines[0]} ({lines[1][0].lower()}{lines[1][1:]})"
  if isinstance(error, (AttributeError, KeyError)) and len(lines) == 1 and " " not in lines[0]:
    return f"unknown config field or key {lines[0]}"
  if len(lines) > _MAX_LINES:
    lines = lines[:_MAX_LINES] + [f"... ({len(lines) - _MAX_LINES} more lines)"]
  return "\n".join(lines)


def _show_traceback() -> bool:
  if flags.FLAGS.is_parsed():
    return _TRACEBACK.value
  return any(a in ("--traceback", "--traceback=true", "--traceback=True") for a in sys.argv)


def _fail(error: Exception) -> None:
  if _show_traceback():
    raise error
  print(f"error: {readable_message(error)}", file=sys.stderr)
  sys.exit(EXIT_STATUS)


def run(main: Callable) -> None:
  """absl.app.run(main), with every exception of `main` or of flag parsing (ml_collections
  applies `--config.FIELD=VALUE` overrides while absl parses the flags) reported as one
  `error:` line."""

  def guarded(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      _fail(e)

  try:
    app.run(guarded)
  except Exception as e:  # pylint: disable=broad-except
    _fail(e)
