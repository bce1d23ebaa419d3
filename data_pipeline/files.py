"""Files that are whole or absent, and locks that die with their holder.

Every file bertjax writes for a user goes through `replacing` or
`write_atomic`: written beside its final name and renamed over it when
complete, so a kill mid-write leaves the old file (or none), never a torn
one. On `gs://`, where an object appears whole when uploaded, the file is
written in place.

`Lock` makes a workdir or a cache entry one writer's at a time with an
exclusive `flock`, which the kernel releases however its holder exits (the
file stays, saying who locked it last). Local filesystems only (NFS
included); on `gs://` a run relies on its launcher to start it once.

Here, not in `bertjax`, because both packages use it and `data_pipeline`
imports nothing from `bertjax`.
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from typing import IO

from absl import logging


def is_local(path: str) -> bool:
  """Whether `path` is on this machine's filesystem (not `gs://` etc.)."""
  return '://' not in str(path)


def resolve(path: str) -> str:
  """`path` made absolute, once, where a command or a library entry point
  takes it: a later `chdir` or a library that insists on absolute paths
  (Orbax) then sees the same file. URLs are returned as they are."""
  path = os.fspath(path)
  return os.path.abspath(os.path.expanduser(path)) if is_local(path) else path


def _file_mode() -> int:
  """0o666 less the umask: what `open(path, 'w')` would have given."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


@contextlib.contextmanager
def replacing(path: str, mode: str = 'w') -> Iterator[IO]:
  """Opens a file that replaces `path` (local or `gs://`; its directory is
  created) only if the block completes; an exception in the block removes the
  file and keeps `path` as it was. `mode`: 'w' (UTF-8 text) or 'wb'."""
  if mode not in ('w', 'wb'):
    raise ValueError(f'mode {mode!r} is not w or wb')
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if not is_local(path):
    # Imported here: model conversion writes local files without TF.
    import tensorflow as tf

    if directory:
      tf.io.gfile.makedirs(directory)
    with tf.io.gfile.GFile(path, mode) as f:
      yield f
    return
  with replacing_path(path) as tmp:
    with open(tmp, mode, encoding=None if 'b' in mode else 'utf-8') as f:
      yield f


@contextlib.contextmanager
def replacing_path(path: str) -> Iterator[str]:
  """`replacing` for writers that take a path (safetensors, np.save): yields
  a temporary local path beside `path` that replaces it if the block
  completes, with the mode `open` would have given."""
  directory = os.path.dirname(os.fspath(path)) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.partial'
  )
  os.close(fd)
  try:
    yield tmp
    # mkstemp's 0600 would make the file private to its writer.
    os.chmod(tmp, _file_mode())
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_atomic(path: str, data: bytes | str | IO[bytes]) -> int:
  """Writes `data` (or a binary file's rest) to `path` through `replacing`;
  returns the size written."""
  with replacing(path, 'w' if isinstance(data, str) else 'wb') as f:
    if isinstance(data, bytes | str):
      f.write(data)
    else:
      shutil.copyfileobj(data, f, 1 << 20)
    return f.tell()


class LockedError(OSError):
  """Another live process holds the lock."""


class Lock:
  """An exclusive lock on `path` (created if absent), held until `release`,
  the end of a `with` block, or the exit of this process.

  `what` names the locked thing in messages ('workdir /x'). With `wait`,
  block until the holder is done (a cache entry another process is
  building) instead of raising `LockedError` (a workdir in use). On a
  non-local path the lock is a no-op.
  """

  def __init__(self, path: str, what: str, wait: bool = False):
    self.path = os.fspath(path)
    self._what = what
    self._wait = wait
    self._fd: int | None = None

  def holder(self) -> str:
    """Who took the lock last, as the lock file says ('' if unknown)."""
    try:
      with open(self.path, encoding='utf-8') as f:
        info = json.load(f)
      since = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['since']))
      return f'pid {info["pid"]} on {info["host"]} since {since}'
    except (OSError, ValueError, KeyError, TypeError):
      return ''

  def acquire(self) -> 'Lock':
    if not is_local(self.path):
      return self
    os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = self.holder() or 'another process'
        if not self._wait:
          raise LockedError(
            f'{self._what} is in use by {holder} ({self.path}); wait for '
            'it to finish or stop it first'
          ) from None
        logging.info('Waiting for %s: in use by %s', self._what, holder)
        fcntl.flock(fd, fcntl.LOCK_EX)
      # Whoever held it before is gone: the lock is ours; say so in it.
      os.ftruncate(fd, 0)
      os.pwrite(
        fd,
        json.dumps(
          {
            'pid': os.getpid(),
            'host': socket.gethostname(),
            'since': time.time(),
          }
        ).encode(),
        0,
      )
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Closing the descriptor drops the flock.
      self._fd = None

  def __enter__(self) -> 'Lock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
