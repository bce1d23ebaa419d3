r"""Command line: score one model on a suite of fine-tuning tasks.

  python -m bertjax.evaluate --model=PATH --suite=demo|FILE.py \
    --workdir=DIR [--seeds=3] [--tasks=a,b]

Fine-tunes `--model` (as `--config.init` of `bertjax.finetune`) on every
task of the suite with seeds 0 .. N-1, each run in `DIR/<task>/seed_<i>` (a
rerun resumes or reuses them), and writes `DIR/results.md` and
`DIR/results.json`: per task the mean, standard deviation, best and values
of its metric over the seeds, and the suite's published reference. A suite
is `configs/suites/<name>.py` or a file of that form; like `--config` files,
it is Python the user runs.
"""

import importlib
import importlib.util
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags, logging

from data_pipeline import cli


def _define_flags() -> None:
  # Defined only when this module is the command: other commands that tests
  # import with it (bertjax.embed) define flags of the same names.
  flags.DEFINE_string('model', None, 'The model to fine-tune.')
  flags.DEFINE_string(
    'suite', None, 'A suite name (configs/suites/<name>.py) or a .py file.'
  )
  flags.DEFINE_string('workdir', None, 'Runs and results.')
  flags.DEFINE_integer('seeds', 3, 'Seeds per task: 0 .. N-1.')
  flags.DEFINE_list('tasks', None, 'Only these tasks of the suite.')


class SuiteError(ValueError):
  """A suite file, or flags choosing from it, that cannot be run."""


RECIPES = ('classification', 'regression', 'ner', 'qa')
RESULTS_MD = 'results.md'
RESULTS_JSON = 'results.json'


def load_suite(name_or_path: str) -> list[dict[str, Any]]:
  """The checked task list of a suite name or file (else `SuiteError`)."""
  if name_or_path.endswith('.py'):
    if not os.path.isfile(name_or_path):
      raise SuiteError(f'--suite: {name_or_path}: no such file')
    spec = importlib.util.spec_from_file_location('suite', name_or_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(f'configs.suites.{name_or_path}')
    except ModuleNotFoundError:
      raise SuiteError(
        f'--suite: no suite {name_or_path!r} (configs/suites/) and not a '
        '.py file'
      ) from None
  if not hasattr(module, 'get_suite'):
    raise SuiteError(f'--suite: {name_or_path} defines no get_suite()')
  tasks = list(module.get_suite())
  names = set()
  for i, task in enumerate(tasks):
    where = f'{name_or_path}: task {i + 1}'
    for field in ('name', 'recipe', 'metric'):
      if not isinstance(task.get(field), str) or not task[field]:
        raise SuiteError(f'{where}: no {field!r}')
    if task['recipe'] not in RECIPES:
      raise SuiteError(
        f'{where}: recipe {task["recipe"]!r} is not one of {", ".join(RECIPES)}'
      )
    if task['name'] in names or '/' in task['name']:
      raise SuiteError(f'{where}: name {task["name"]!r} repeats or has a /')
    names.add(task['name'])
    unknown = set(task) - {'name', 'recipe', 'metric', 'config', 'reference'}
    if unknown:
      raise SuiteError(
        f'{where}: unknown field(s) {", ".join(sorted(unknown))}'
      )
  return tasks


def task_config(task: Mapping[str, Any], model: str, seed: int):
  """The fine-tuning config of one run of a suite task."""
  recipe = importlib.import_module(f'configs.finetune.{task["recipe"]}')
  config = recipe.get_config()
  for key, value in {
    **task.get('config', {}),
    'init': model,
    'seed': seed,
  }.items():
    *parents, leaf = key.split('.')
    holder = config
    try:
      for part in parents:
        holder = holder[part]
      holder[leaf] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise SuiteError(
        f'task {task["name"]}: bad config override {key}={value!r} ({e})'
      ) from None
  return config


def summarize(values: Sequence[float]) -> dict[str, float]:
  mean = sum(values) / len(values)
  std = (
    math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    if len(values) > 1
    else 0.0
  )
  return dict(mean=mean, std=std, best=max(values), seeds=list(values))


def write_results(workdir: str, model: str, rows: list[dict]) -> None:
  """results.json and a Markdown table of the same."""
  with open(os.path.join(workdir, RESULTS_JSON), 'w', encoding='utf-8') as f:
    json.dump(dict(model=model, tasks=rows), f, indent=2)
    f.write('\n')
  lines = [
    f'Model: `{model}`',
    '',
    '| task | metric | mean | std | best | seeds | reference |',
    '|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    reference = r.get('reference')
    shown = f'{reference[0]} ({reference[1]})' if reference else ''
    lines.append(
      f'| {r["task"]} | {r["metric"]} | {r["mean"]:.4f} | {r["std"]:.4f} | '
      f'{r["best"]:.4f} | {len(r["seeds"])} | {shown} |'
    )
  with open(os.path.join(workdir, RESULTS_MD), 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')


def evaluate(
  model: str,
  suite: str,
  workdir: str,
  seeds: int,
  only: Sequence[str] | None = None,
) -> list[dict]:
  """Runs the suite (see the module docstring); returns the table rows."""
  if seeds < 1:
    raise SuiteError(f'--seeds={seeds} must be >= 1')
  tasks_ = load_suite(suite)
  if only:
    unknown = sorted(set(only) - {t['name'] for t in tasks_})
    if unknown:
      raise SuiteError(f'--tasks: no task {", ".join(unknown)} in {suite}')
    tasks_ = [t for t in tasks_ if t['name'] in only]
  configs = {
    (t['name'], s): task_config(t, model, s)
    for t in tasks_
    for s in range(seeds)
  }
  # TensorFlow (under the data pipeline) loads here, after the checks; it
  # serves tf.data only, so it stays off accelerators.
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')
  from bertjax import tasks

  os.makedirs(workdir, exist_ok=True)
  rows = []
  for task in tasks_:
    key = f'best/eval/{task["metric"]}'
    values = []
    for seed in range(seeds):
      run_dir = os.path.join(workdir, task['name'], f'seed_{seed}')
      result = tasks.finetune(configs[task['name'], seed], run_dir)
      if key not in result:
        raise SuiteError(
          f'task {task["name"]}: no {key} (is there an eval file, and is '
          f'{task["metric"]!r} one of its metrics?)'
        )
      values.append(result[key])
      logging.info('%s seed %d: %s %.4f', task['name'], seed, key, result[key])
    rows.append(
      dict(
        task=task['name'],
        metric=task['metric'],
        reference=task.get('reference'),
        **summarize(values),
      )
    )
    write_results(workdir, model, rows)
  return rows


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  for name in ('model', 'suite', 'workdir'):
    if not f[name].value:
      raise SuiteError(f'--{name} is required')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  evaluate(f.model, f.suite, f.workdir, f.seeds, f.tasks)
  logging.info('Results: %s', os.path.join(f.workdir, RESULTS_MD))


if __name__ == '__main__':
  _define_flags()
  flags.FLAGS.set_default('verbosity', logging.INFO)
  cli.run(main)
