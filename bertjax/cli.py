"""How bertjax command-line programs report user errors.

A user's mistake (a bad flag, a missing file, a checkpoint that does not fit
the config) gets one line naming the problem and exit status 2, not a wall of
traceback. By convention every such error in bertjax and data_pipeline is a
`ValueError` (bad content: `UserError`, `model.ConfigError`, ...) or an
`OSError` (missing or unreadable files); other exceptions are bugs and keep
their traceback. Set BERTJAX_TRACEBACK=1 to see the traceback of a user
error too.
"""

import os
import sys
from collections.abc import Callable


class UserError(ValueError):
  """An error in what the user gave us: flags, files, configs, checkpoints."""


# Errors that come from the user's input rather than from a bug (UserError
# and UnicodeError are ValueErrors).
_USER_ERRORS = (ValueError, OSError)


def _program_name(argv0: str) -> str:
  """`python -m bertjax.embed` shows as `bertjax.embed`."""
  path = os.path.abspath(argv0)
  stem, ext = os.path.splitext(os.path.basename(path))
  if ext == '.py':
    return f'{os.path.basename(os.path.dirname(path))}.{stem}'
  return stem or 'bertjax'


def run(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl `main(argv)` so user errors print one line and exit 2."""

  def wrapped(argv: list[str]) -> None:
    try:
      main(argv)
    except _USER_ERRORS as e:
      if os.environ.get('BERTJAX_TRACEBACK'):
        raise
      prog = _program_name(sys.argv[0])
      message = ' '.join(str(e).split()) or type(e).__name__
      print(f'{prog}: error: {message}', file=sys.stderr)
      sys.exit(2)

  return wrapped
