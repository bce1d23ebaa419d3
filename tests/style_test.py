"""The code is ruff-clean and ruff-formatted (configured in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff():
  exe = shutil.which('ruff', path=os.path.dirname(sys.executable))
  exe = exe or shutil.which('ruff')
  if exe is None:
    pytest.fail('ruff is not installed: pip install -e ".[test]"')
  return exe


class StyleTest:
  def test_ruff_check(self):
    result = subprocess.run(
      [_ruff(), 'check', '.'], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

  def test_ruff_format(self):
    result = subprocess.run(
      [_ruff(), 'format', '--check', '.'],
      cwd=ROOT,
      capture_output=True,
      text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
