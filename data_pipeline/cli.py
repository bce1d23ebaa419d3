"""How every bertjax command reports a user's mistake and starts up.

A mistake in what a user gave (a flag, a file, a config, a checkpoint) is
one line, `prog: error: ...`, with exit status 2, not a traceback; a run
stopped by SIGTERM after saving exits with 75 (`Preempted`). Library code
raises its own error classes (`ValueError` subclasses for bad content,
`OSError` ones for files); a command's `__main__` turns them into that
line through `run` (`is_user_error` says which). Other exceptions are bugs
and keep their traceback; BERTJAX_TRACEBACK=1 shows it for user errors too.

Here, not in `bertjax`, because both packages' commands use it and
`data_pipeline` imports nothing from `bertjax`.
"""

import os
import platform
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags, logging

# EX_TEMPFAIL (sysexits.h): stopped before the end on request, nothing
# wrong; the same command resumes. Launchers tell it from 0 (done) and 2
# (a user error).
PREEMPTED_STATUS = 75


class UsageError(ValueError):
  """A command's flags used wrongly: one missing, or two that conflict."""


class Preempted(Exception):
  """A command stopped early because it was asked to (SIGTERM), after
  saving its work; `run` exits with `PREEMPTED_STATUS`."""


# TensorFlow's file system errors (tf.io.gfile, tf.data readers), named, not
# imported: TF loads slowly.
_TF_FILE_ERRORS = frozenset(
  {
    'NotFoundError',
    'PermissionDeniedError',
    'FailedPreconditionError',
    'AlreadyExistsError',
    'ResourceExhaustedError',
    'DataLossError',
  }
)


def is_user_error(error: BaseException) -> bool:
  """Whether `error` is about what the user gave, shown as one line: the
  library's own error classes (those of `bertjax` and `data_pipeline`),
  and the operating system or TensorFlow refusing a path. Anything else,
  a ValueError from deep in JAX included, is a bug: its traceback shows."""
  kind = type(error)
  module = kind.__module__
  if module == '__main__':  # A class of the command run as `python -m`.
    spec = getattr(sys.modules['__main__'], '__spec__', None)
    module = spec.name if spec else module
  if module.split('.')[0] in ('bertjax', 'data_pipeline', 'configs', 'launch'):
    return True
  if isinstance(error, OSError):
    return True
  return (
    kind.__module__ == 'tensorflow.python.framework.errors_impl'
    and kind.__name__ in _TF_FILE_ERRORS
  )


def program_name() -> str:
  """`python -m bertjax.embed` shows as `bertjax.embed`."""
  path = os.path.abspath(sys.argv[0])
  stem, ext = os.path.splitext(os.path.basename(path))
  if ext == '.py':
    return f'{os.path.basename(os.path.dirname(path))}.{stem}'
  return stem or 'bertjax'


def fail(message: str, at_once: bool = False) -> NoReturn:
  """Prints `prog: error: message` on one line; exits with status 2.

  `at_once` skips the interpreter's shutdown: work a failed command left
  in background threads (the writes of an abandoned checkpoint) would
  print a traceback each as the interpreter tears down their event loops.
  """
  message = ' '.join(message.split())
  print(f'{program_name()}: error: {message}', file=sys.stderr)
  if at_once:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a mistake (an unknown flag, a bad value, a
  missing required flag) as one line and exit status 2 (absl prints two
  lines and exits 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{e} (--helpshort lists the flags)')


def parse_config_flags(argv: list[str]) -> list[str]:
  """`parse_flags` for a command with an ml_collections `--config` flag: a
  missing recipe file and a bad override (`--config.bach_size=3`, which fails
  while flags are parsed, before `main` runs) are one line and exit 2 too."""
  args = argv[1:]
  for i, arg in enumerate(args):
    value = (
      arg[len('--config=') :]
      if arg.startswith('--config=')
      else (args[i + 1] if arg == '--config' and i + 1 < len(args) else None)
    )
    if value is not None:
      path = value.split(':', 1)[0]
      if not os.path.isfile(path):
        # ml_collections would report it wrapped in two other messages.
        fail(f'--config: {path}: no such file')
  try:
    return parse_flags(argv)
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    message = ' '.join(str(e).replace('\\n', ' ').split()).strip('\'"')
    fail('bad flag: ' + message.replace("\\'", "'"))


# Libraries whose INFO logs bury what a command has to say: Orbax's, on every
# checkpoint, and jax's xla_bridge's, that a CPU machine has no TPU.
_CHATTY_LIBRARIES = ('orbax', 'jax/_src/xla_bridge.py')


class _QuietLibraries(logging.logging.Filter):
  """Hides the INFO logs of `_CHATTY_LIBRARIES` unless --verbosity >= 1;
  their warnings and errors always show, errors without the traceback
  (Orbax logs one per background thread of a failed save, and the command
  reports the failure itself)."""

  def filter(self, record) -> bool:
    if logging.get_verbosity() > 0 or not any(
      name in record.pathname for name in _CHATTY_LIBRARIES
    ):
      return True
    if record.exc_info and not os.environ.get('BERTJAX_TRACEBACK'):
      record.exc_info = record.exc_text = None
    return record.levelno >= logging.logging.WARNING


def run(
  main: Callable[[list[str]], None],
  flags_parser: Callable[[list[str]], list[str]] = parse_flags,
  takes_arguments: bool = False,
) -> None:
  """`absl.app.run(main)`, with user errors as one line and exit status 2;
  `main(argv)` gets the program name in `argv`, and the arguments that are
  not flags if `takes_arguments` (else they are an error)."""

  def checked(argv: list[str]) -> None:
    logging.get_absl_handler().addFilter(_QuietLibraries())
    try:
      if len(argv) > 1 and not takes_arguments:
        raise UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
      main(argv)
    except Preempted as e:
      print(f'{program_name()}: {e}', file=sys.stderr)
      sys.exit(PREEMPTED_STATUS)
    except Exception as e:
      if not is_user_error(e) or os.environ.get('BERTJAX_TRACEBACK'):
        raise
      fail(str(e) or type(e).__name__, at_once=True)

  app.run(checked, flags_parser=flags_parser)


# glibc's malloc serves every buffer over its mmap threshold (at most 32 MB;
# on CPU, e.g. a training step's vocabulary logits) with a fresh mmap that
# the kernel fills one 4 KB page fault at a time. Malloc's transparent huge
# pages (glibc >= 2.35, a tunable read only at process start) cut most of
# those faults (BENCHMARKS.md), hence the restart below; older glibc ignores
# the tunable.
_HUGETLB_TUNABLE = 'glibc.malloc.hugetlb'


def restart_with_malloc_huge_pages() -> None:
  """Re-executes this process with `GLIBC_TUNABLES` adding huge pages.

  Call it first thing in a command's `__main__`, before numpy, TensorFlow or
  JAX are imported (they would be imported twice); processes it spawns
  inherit the setting. Returns only where there is nothing to do: not glibc,
  opted out (BERTJAX_MALLOC_HUGETLB=0), or already restarted.
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
