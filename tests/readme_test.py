"""Every command in the bash blocks of README.md and README.zh.md is a real
command with real flags.

Each `python -m bertjax...`/`data_pipeline...` command is parsed by its own
flag parser (config files loaded, `--config.FIELD` overrides applied) and
stopped before it does any work; the launcher runs for real with
`--dry_run`; the cheap ones run for real. What the commands then do is
tested where they are exercised end to end: the Quickstart by CI, the
demo's pretraining, fill-mask and fine-tuning by the notebook
(`notebook_test.py`), the rest by their modules' tests.
"""

import concurrent.futures
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `python -m MODULE ARGS` up to the end of flag parsing: the command's
# own `cli.run` parses (a bad flag is its one-line error and exit 2), then
# exits 0 instead of calling main.
_PARSE_ONLY = r"""
import runpy, sys
from data_pipeline import cli

argv = sys.argv[1:]

def parse_only(main, flags_parser=cli.parse_flags):
  rest = flags_parser(argv)
  if len(rest) > 1:
    cli.fail(f'unexpected arguments: {" ".join(rest[1:])}')
  sys.exit(0)

cli.run = parse_only
sys.argv = argv
runpy.run_module(argv[0], run_name='__main__', alter_sys=True)
"""


def _commands() -> list[list[str]]:
  """argv of every command in the README's ```bash blocks (continuation
  lines joined, `&&` chains split)."""
  text = ''
  for name in ('README.md', 'README.zh.md'):
    with open(os.path.join(ROOT, name), encoding='utf-8') as f:
      text += f.read()
  out = []
  for block in re.findall(r'^```bash\n(.*?)^```', text, re.S | re.M):
    for line in block.replace('\\\n', ' ').splitlines():
      for part in line.split(' && '):
        if part.strip():
          out.append(shlex.split(part))
  return out


def _env():
  env = dict(os.environ)
  env['BERTJAX_MALLOC_HUGETLB'] = '0'  # No restart: parse in this process.
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _parse(argv: list[str]) -> subprocess.CompletedProcess:
  """`argv` = [module, flags...], parsed as `python -m module flags`."""
  return subprocess.run(
    [sys.executable, '-c', _PARSE_ONLY, *argv],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
  )


def _is_ours(argv: list[str]) -> bool:
  return argv[:2] == ['python', '-m'] and argv[2].split('.')[0] in (
    'bertjax',
    'data_pipeline',
  )


def test_every_command_is_one_bertjax_has():
  commands = _commands()
  assert len(commands) >= 15
  for argv in commands:
    if argv[:2] == ['python', '-m']:
      module = argv[2]
      if module in ('pip', 'pytest'):
        continue
      path = os.path.join(ROOT, *module.split('.')) + '.py'
      assert os.path.isfile(path), f'{shlex.join(argv)}: no {module}'
    elif argv[0] == 'sbatch':
      script = next(a for a in argv if a.endswith('.sbatch'))
      assert os.path.isfile(os.path.join(ROOT, script)), script
    else:
      pytest.fail(f'README command of no known kind: {shlex.join(argv)}')


def _train_args_of_launchers() -> list[list[str]]:
  """What the launchers hand to `python -m bertjax.train --multihost`."""
  out = []
  for argv in _commands():
    if argv[0] == 'sbatch':
      script = next(i for i, a in enumerate(argv) if a.endswith('.sbatch'))
      out.append(['bertjax.train', '--multihost', *argv[script + 1 :]])
    elif argv[:4] == ['python', '-m', 'launch.tpu_vm', 'train']:
      out.append(
        ['bertjax.train', '--multihost', *argv[argv.index('--') + 1 :]]
      )
  return out


@pytest.mark.slow
def test_every_command_parses_with_its_own_flags():
  checks = [argv[2:] for argv in _commands() if _is_ours(argv)]
  checks += _train_args_of_launchers()
  assert len(checks) >= 15
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(_parse, checks))
  failed = [
    f'{shlex.join(argv)}\n  -> {r.stderr.strip().splitlines()[-1:]}'
    for argv, r in zip(checks, results, strict=True)
    if r.returncode != 0
  ]
  assert not failed, '\n'.join(failed)


def test_a_bad_flag_would_be_caught():
  # The check above is only as good as this: a misspelt field fails it.
  result = _parse(
    [
      'bertjax.train',
      '--config=configs/bert_tiny.py',
      '--workdir=/tmp/x',
      '--config.bach_size=3',
    ]
  )
  assert result.returncode == 2
  assert 'bach_size' in result.stderr
  result = _parse(['bertjax.embed', '--model=m', '--output_file=x.npy'])
  assert result.returncode == 2 and 'output_file' in result.stderr


def test_the_tpu_launcher_commands_run_dry():
  """Each step from create to delete prints its gcloud commands (the
  ahead-of-time check of create and train is launch_test's)."""
  commands = [
    a for a in _commands() if a[:3] == ['python', '-m', 'launch.tpu_vm']
  ]
  assert [a[3] for a in commands] == [
    'create',
    'setup',
    'train',
    'status',
    'logs',
    'stop',
    'delete',
  ]
  for argv in commands:
    split = argv.index('--') if '--' in argv else len(argv)
    result = subprocess.run(
      [
        sys.executable,
        *argv[1:split],
        '--dry_run',
        '--skip_aot_check',
        *argv[split:],
      ],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = [shlex.split(line) for line in result.stdout.splitlines()]
    assert printed and all(
      p[:3] == ['gcloud', 'compute', 'tpus'] or p[0] == 'git' for p in printed
    ), result.stdout


def test_the_corpus_list_command_runs():
  (argv,) = [a for a in _commands() if a[2:3] == ['data_pipeline.corpora']]
  result = subprocess.run(
    [sys.executable, *argv[1:]],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'news-en' in result.stdout
