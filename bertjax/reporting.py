"""What the user sees of a training run: metric files, console, curves.

Owns the writers (TensorBoard event files through clu `metric_writers`, and
`metrics.jsonl` with one JSON object per write), the live console line, and
the PNG of the learning curves drawn at the end. Only process 0 writes;
every other process gets a writer that does nothing, so callers need not
check.
"""

import json
import math
import os
import time
from collections.abc import Mapping

from absl import logging
from clu import metric_writers
from etils import epath

METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'learning_curves.png'


class MetricsWriter:
  """Writes scalars to TensorBoard and `metrics.jsonl` (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool):
    self._enabled = enabled
    if not enabled:
      return
    self._tb = metric_writers.SummaryWriter(os.path.join(workdir, 'tb'))
    self._jsonl = epath.Path(workdir) / METRICS_FILE

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Appends one record: `{"step": step, name: value, ...}`."""
    if not self._enabled:
      return
    self._tb.write_scalars(step, dict(scalars))
    record = {'step': int(step)}
    record.update({k: _json_number(v) for k, v in scalars.items()})
    with self._jsonl.open('a') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')

  def write_hparams(self, hparams: Mapping[str, object]) -> None:
    if self._enabled:
      self._tb.write_hparams(dict(hparams))

  def flush(self) -> None:
    if self._enabled:
      self._tb.flush()

  def close(self) -> None:
    if self._enabled:
      self._tb.close()


def _json_number(value) -> float | None:
  value = float(value)
  # JSON has no NaN/Inf; null keeps the line parseable.
  return value if math.isfinite(value) else None


def format_console_line(
  step: int, total_steps: int, scalars: Mapping[str, float], eta_s: float
) -> str:
  """One line: step, losses, accuracies, throughput, MFU and ETA."""
  parts = [f'step {step}/{total_steps}']
  for key, label, fmt in (
    ('train/loss', 'loss', '.4f'),
    ('train/mlm_accuracy', 'mlm_acc', '.4f'),
    ('train/nsp_accuracy', 'nsp_acc', '.3f'),
    ('train/learning_rate', 'lr', '.2e'),
    ('perf/examples_per_s', 'ex/s', '.1f'),
    ('perf/mfu', 'mfu', '.1%'),
  ):
    if key in scalars:
      parts.append(f'{label} {format(scalars[key], fmt)}')
  if math.isfinite(eta_s):
    parts.append(f'eta {time.strftime("%H:%M:%S", time.gmtime(eta_s))}')
  return ' | '.join(parts)


def read_metrics(workdir: str) -> list[dict]:
  """The records of `metrics.jsonl`, oldest first."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot_learning_curves(
  workdir: str, baselines: Mapping[str, float] | None = None
) -> str | None:
  """Draws loss and accuracy curves from `metrics.jsonl` into a PNG.

  Args:
    workdir: the run's directory.
    baselines: horizontal reference lines, e.g. the most-frequent-token MLM
      accuracy.

  Returns:
    The PNG's path, or None when there is nothing to draw.
  """
  records = read_metrics(workdir)
  if not records:
    return None
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  panels = (
    (axes[0], ('train/mlm_loss', 'train/nsp_loss', 'eval/mlm_loss'), 'loss'),
    (
      axes[1],
      ('train/mlm_accuracy', 'train/nsp_accuracy', 'eval/mlm_accuracy'),
      'accuracy',
    ),
  )
  for ax, keys, title in panels:
    for key in keys:
      points = [(r['step'], r[key]) for r in records if r.get(key) is not None]
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, label=key, marker='.' if 'eval' in key else '')
    if title == 'accuracy':
      for name, value in (baselines or {}).items():
        ax.axhline(value, linestyle='--', color='gray', label=name)
    ax.set_xlabel('step')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(workdir, CURVES_FILE)
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)
  logging.info('Learning curves: %s', path)
  return path
