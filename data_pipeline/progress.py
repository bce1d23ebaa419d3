"""Progress of a long step (a download, example creation), for a person.

On a terminal: tqdm's bar, redrawn in place. Elsewhere (a log file, CI, a
notebook) each redraw would be a new line, so there: an INFO line every
`log_every_s` seconds, and one at the end if any came before (a shorter
step says nothing).

  with progress.Progress('Creating examples', total=size, unit='B') as bar:
    for chunk in ...:
      bar.update(len(chunk))
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from absl import logging

# CI services set CI=true; their logs are files even where a pseudo-terminal
# makes stderr look like one.
_CI_VARIABLES = ('CI', 'GITHUB_ACTIONS', 'BUILDKITE', 'GITLAB_CI')


def on_terminal() -> bool:
  """Whether a person is watching stderr on a terminal (not under CI)."""
  try:
    interactive = sys.stderr.isatty()
  except (AttributeError, ValueError):  # Replaced or closed stderr.
    return False
  return interactive and not any(os.environ.get(v) for v in _CI_VARIABLES)


def _amount(value: float, unit: str) -> str:
  """12345678 'B' -> '12.3 MB'; 1234 'examples' -> '1,234 examples'."""
  if unit == 'B':
    for factor, prefix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
      if value >= factor:
        return f'{value / factor:.1f} {prefix}B'
    return f'{value:.0f} B'
  return f'{value:,.0f} {unit}'.rstrip()


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds} s'
  if seconds < 3600:
    return f'{seconds // 60} min {seconds % 60:02d} s'
  return f'{seconds // 3600} h {seconds // 60 % 60:02d} min'


class Progress:
  """Counts work done towards `total` (None: unknown) in `unit`s ('B' for
  bytes, shown as kB/MB/GB) and shows it as the module says."""

  def __init__(
    self,
    description: str,
    total: float | None = None,
    unit: str = '',
    log_every_s: float = 30.0,
    terminal: bool | None = None,
  ):
    self.description = description
    self.total = total
    self.unit = unit
    self.done = 0.0
    self._log_every_s = log_every_s
    self._started = self._logged = time.monotonic()
    self._lines = 0
    self._bar: Any = None
    if on_terminal() if terminal is None else terminal:
      import tqdm  # A dependency of tensorflow-datasets.

      self._bar = tqdm.tqdm(
        desc=description,
        total=total,
        unit=unit or 'it',
        unit_scale=unit == 'B',
        unit_divisor=1000,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
      )

  def update(self, amount: float) -> None:
    """Adds `amount` of work done."""
    self.done += amount
    if self._bar is not None:
      self._bar.update(amount)
    elif time.monotonic() - self._logged >= self._log_every_s:
      self._log()

  def _log(self) -> None:
    self._logged = time.monotonic()
    self._lines += 1
    logging.info('%s', self.line())

  def line(self) -> str:
    """'Creating examples: 12.3 MB of 50.0 MB (24%), 2.1 MB/s, 18 s left'."""
    elapsed = max(time.monotonic() - self._started, 1e-9)
    rate = self.done / elapsed
    parts = [_amount(self.done, self.unit)]
    if self.total:
      parts[0] += f' of {_amount(self.total, self.unit)}'
      parts[0] += f' ({min(self.done / self.total, 1.0):.0%})'
    parts.append(f'{_amount(rate, self.unit)}/s')
    if self.total and rate > 0 and self.done < self.total:
      parts.append(f'{_duration((self.total - self.done) / rate)} left')
    else:
      parts.append(f'{_duration(elapsed)} elapsed')
    return f'{self.description}: {", ".join(parts)}'

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    elif self._lines:
      self._log()
      self._lines = 0  # Once.

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
