"""Progress lines: a bar on a terminal, one log line per interval elsewhere."""

import io
import sys

from absl import logging

from data_pipeline import progress


def test_off_a_terminal_it_logs_amount_rate_and_time_left(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, 'info', lambda fmt, *a: lines.append(fmt % a))
  bar = progress.Progress(
    'Creating examples', total=4e6, unit='B', log_every_s=0, terminal=False
  )
  bar.update(1e6)
  bar.update(3e6)
  bar.close()
  bar.close()
  assert len(lines) == 3  # Two updates, and the end.
  assert lines[0].startswith('Creating examples: 1.0 MB of 4.0 MB (25%), ')
  assert 'B/s, ' in lines[0] and lines[0].endswith(' left')
  assert lines[2].startswith('Creating examples: 4.0 MB of 4.0 MB (100%), ')
  assert lines[2].endswith(' elapsed')


def test_it_stays_quiet_between_intervals(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, 'info', lambda fmt, *a: lines.append(fmt % a))
  bar = progress.Progress('Predicting', unit='examples', terminal=False)
  for _ in range(1000):
    bar.update(32)
  bar.close()
  assert lines == []  # The first line comes 30 s in; none at the end.
  assert bar.line().startswith('Predicting: 32,000 examples, ')
  assert bar.line().endswith(' elapsed')  # No total, no ETA.


def test_on_a_terminal_it_draws_a_bar(monkeypatch):
  err = io.StringIO()
  monkeypatch.setattr(sys, 'stderr', err)
  with progress.Progress(
    'Downloading x.whl', total=2000, unit='B', terminal=True
  ) as bar:
    bar.update(1000)
  # tqdm's own format: description, total with SI units, rate; redrawn
  # with carriage returns and cleared at the end.
  drawn = err.getvalue()
  assert drawn.startswith('\rDownloading x.whl:')
  assert '2.00k' in drawn and 'B/s' in drawn and drawn.endswith('\r')


def test_ci_and_pipes_are_not_terminals(monkeypatch):
  class Tty(io.StringIO):
    def isatty(self):
      return True

  monkeypatch.setattr(sys, 'stderr', Tty())
  for name in progress._CI_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  assert progress.on_terminal()
  monkeypatch.setenv('CI', 'true')
  assert not progress.on_terminal()
  monkeypatch.setattr(sys, 'stderr', io.StringIO())
  monkeypatch.delenv('CI')
  assert not progress.on_terminal()
