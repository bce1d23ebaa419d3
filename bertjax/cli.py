"""How bertjax command-line programs report user errors.

A user's mistake (a bad flag, a missing file, a checkpoint that does not fit
the config) gets one line naming the problem and exit status 2, not a wall of
traceback. By convention every such error in bertjax and data_pipeline is a
`ValueError` (bad content: `UserError`, `model.ConfigError`, ...) or an
`OSError` (missing or unreadable files); other exceptions are bugs and keep
their traceback. Set BERTJAX_TRACEBACK=1 to see the traceback of a user
error too.

Commands that allocate large CPU buffers in a loop (training on CPU,
offline example creation) also restart themselves once with malloc on
huge pages: `restart_with_malloc_huge_pages`.
"""

import os
import platform
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import flags


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


def _fail(message: str) -> NoReturn:
  """Prints `prog: error: message` on one line; exits with status 2."""
  message = ' '.join(message.split())
  print(f'{_program_name(sys.argv[0])}: error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a mistake (an unknown flag, a bad value, a
  missing required flag) as one line and exit status 2.

  absl's own parser prints two lines and exits 1; its `app.UsageError` is
  only caught once `main` runs. Pass as `app.run(..., flags_parser=...)`.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(f'{e} (--helpshort lists the flags)')


def run(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an absl `main(argv)` so user errors print one line and exit 2."""

  def wrapped(argv: list[str]) -> None:
    try:
      main(argv)
    except _USER_ERRORS as e:
      if os.environ.get('BERTJAX_TRACEBACK'):
        raise
      _fail(str(e) or type(e).__name__)

  return wrapped


# glibc's malloc serves every buffer over its mmap threshold (at most 32 MB;
# on CPU, a training step's vocabulary logits and their gradients: 78 MB
# each for the tiny demo; in example creation, batch arrays of megabytes)
# with a fresh mmap that the kernel fills one 4 KB page fault at a time:
# ~100,000 faults per training step, ~4 us each on the dev machine's VM.
# Transparent huge pages for malloc, a glibc (>= 2.35) tunable read only at
# process start, cut them 17x: the CPU demo trains ~25% faster, offline
# example creation at dupe_factor=10 5-9% (BENCHMARKS.md). So such a command
# restarts itself once with the tunable set, before anything heavy is
# imported; worker processes it spawns inherit it. Accelerators do not
# care, and older glibc ignores it. BERTJAX_MALLOC_HUGETLB=0 opts out.
_HUGETLB_TUNABLE = 'glibc.malloc.hugetlb'


def restart_with_malloc_huge_pages() -> None:
  """Re-executes this process with `GLIBC_TUNABLES` adding huge pages.

  Call it first thing in a command's `__main__`, before numpy, TensorFlow or
  JAX are imported (they would be imported twice). Returns only where there
  is nothing to do: not glibc, opted out, or already restarted.
  """
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc':
    return
  if os.environ.get('BERTJAX_MALLOC_HUGETLB', '1') == '0':
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if _HUGETLB_TUNABLE in tunables:
    return  # Set by the user, or by the restart itself.
  env = dict(os.environ)
  env['GLIBC_TUNABLES'] = ':'.join(
    filter(None, [tunables, f'{_HUGETLB_TUNABLE}=1'])
  )
  # The same interpreter, options and arguments; the process keeps its pid.
  os.execve(sys.executable, sys.orig_argv, env)
