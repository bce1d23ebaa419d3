"""The launchers, run for real against fake `gcloud`, `sbatch`, `srun` and
`python3` executables on PATH that record how they were called.

The remote command the TPU launcher hands to `gcloud ... ssh --command` is
run by a real local bash, as a worker's shell would run it, so quoting is
checked by the shell itself, not by a re-implementation of it.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from bertjax import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOSTILE = [
  '--config=configs/bert_base.py:phase=1',
  "--workdir=gs://b/run; rm -rf / #'$(id)`x`",
  '--config.data.input_files=gs://b/a b/*.tfrecord',
  '--config.seed=1 && echo pwned',
]

# Records its name and argv as one JSON line in $FAKE_LOG; as `sbatch`,
# then runs the batch script as SLURM would on the first node.
_FAKE = """#!{python}
import json, os, subprocess, sys
name = os.path.basename(sys.argv[0])
with open(os.environ['FAKE_LOG'], 'a') as f:
  f.write(json.dumps([name, *sys.argv[1:]]) + '\\n')
if name == 'sbatch':
  script = next(i for i, a in enumerate(sys.argv) if a.endswith('.sbatch'))
  sys.exit(subprocess.call(['bash', *sys.argv[script:]]))
"""


@pytest.fixture
def fakes(tmp_path):
  """PATH with fake gcloud, sbatch, srun and python3; returns (env, calls),
  `calls()` the recorded [name, *args] lists so far."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('gcloud', 'sbatch', 'srun', 'python3'):
    path = bin_dir / name
    path.write_text(_FAKE.format(python=sys.executable))
    path.chmod(0o755)
  log = tmp_path / 'calls.jsonl'
  env = dict(os.environ)
  env.update(
    PATH=f'{bin_dir}{os.pathsep}{env["PATH"]}',
    FAKE_LOG=str(log),
    HOME=str(tmp_path / 'home'),
    TMPDIR=str(tmp_path),
  )
  (tmp_path / 'home').mkdir()

  def calls():
    if not log.exists():
      return []
    return [json.loads(line) for line in log.read_text().splitlines()]

  return env, calls


def _launch(env, *args):
  return subprocess.run(
    [sys.executable, '-m', 'launch.tpu_vm', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )


SLICE = ['--tpu=bert1', '--zone=us-east5-a', '--project=proj']


def test_a_slice_from_creation_to_deletion(fakes):
  env, calls = fakes
  steps = [
    ['create', '--accelerator_type=v5p-128', '--spot', '--skip_aot_check'],
    [
      'create',
      '--accelerator_type=v5litepod-16',
      '--queued',
      '--skip_aot_check',
    ],
    ['setup'],
    ['status'],
    ['logs', '--worker=3', '--lines=20', '--follow'],
    ['stop'],
    ['delete'],
    ['delete', '--queued'],
  ]
  for step in steps:
    result = _launch(env, *step, *SLICE)
    assert result.returncode == 0, (step, result.stderr[-2000:])
  zone = ['--zone=us-east5-a', '--project=proj']
  ssh = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'bert1']
  recorded = calls()
  archive = os.path.join(env['TMPDIR'], 'bertjax-bert1.tar.gz')
  assert recorded == [
    ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'bert1']
    + ['--accelerator-type=v5p-128', '--version=v2-alpha-tpuv5', *zone]
    + ['--spot'],
    ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'bert1']
    + ['--node-id=bert1', '--accelerator-type=v5litepod-16']
    + ['--runtime-version=v2-alpha-tpuv5-lite', *zone],
    ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive]
    + ['bert1:~/bertjax.tar.gz', '--worker=all', *zone],
    ssh
    + [
      '--worker=all',
      '--command=mkdir -p ~/bertjax && tar -xzf ~/bertjax.tar.gz -C '
      '~/bertjax && cd ~/bertjax && (python3 -m pip install -q --user uv || '
      'python3 -m pip install -q --user --break-system-packages uv) && '
      '~/.local/bin/uv venv -q --allow-existing --python 3.12 '
      '~/bertjax-venv && ~/.local/bin/uv pip install -q --python '
      "~/bertjax-venv/bin/python -e '.[tpu]'",
      *zone,
    ],
    ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'bert1', *zone],
    ssh
    + [
      '--worker=all',
      "--command=pgrep -af -- '-m bertjax[.]train' || echo 'no training "
      'process '
      'on\' "$(hostname)"',
      *zone,
    ],
    ssh + ['--worker=3', '--command=tail -n 20 -F ~/bertjax_train.log', *zone],
    ssh
    + [
      '--worker=all',
      "--command=pkill -TERM -f -- '-m bertjax[.]train' || true",
    ]
    + zone,
    ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'bert1', '--quiet']
    + zone,
    ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'bert1']
    + ['--force', '--quiet', *zone],
  ]
  # What setup copied is this checkout's committed code.
  with tarfile.open(archive) as tar:
    names = tar.getnames()
  assert 'bertjax/train.py' in names and 'setup.cfg' in names


# A training process that records how it was started, then runs on.
_TRAINING = """#!{python}
import json, os, sys, time
with open(os.environ['FAKE_LOG'], 'a') as f:
  f.write(json.dumps(dict(
    argv=sys.argv[1:], xla_flags=os.environ.get('XLA_FLAGS'),
    pid=os.getpid(), sid=os.getsid(0))) + '\\n')
print('training', flush=True)
time.sleep(600)
"""


def test_training_runs_detached_with_every_argument_intact(fakes, tmp_path):
  env, calls = fakes
  result = _launch(
    env,
    'train',
    *SLICE,
    '--skip_aot_check',
    '--repo_dir=~/bert jax',
    '--venv=~/bert venv',
    '--env=XLA_FLAGS=--xla_dump_to=/tmp/a b; echo $(id)',
    '--log_file=~/logs/train log.txt',
    '--',
    *HOSTILE,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  (ssh,) = calls()
  assert ssh[:7] == ssh[:6] + ['--worker=all']
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'bert1']
  command = ssh[7].removeprefix('--command=')
  # A worker: its home holds the checkout, the venv and the log folder.
  home = tmp_path / 'home'
  (home / 'bert jax').mkdir()
  (home / 'logs').mkdir()
  python = home / 'bert venv' / 'bin' / 'python'
  python.parent.mkdir(parents=True)
  python.write_text(_TRAINING.format(python=sys.executable))
  python.chmod(0o755)
  os.remove(tmp_path / 'calls.jsonl')
  # The SSH command returns while training goes on: nothing holds its
  # output open (the timeout only turns a hang into a failure).
  shell = subprocess.run(
    ['bash', '-c', command], env=env, capture_output=True, timeout=120
  )
  assert shell.returncode == 0 and shell.stdout == b'', shell
  log = tmp_path / 'calls.jsonl'
  while not log.exists():  # Written by the detached process.
    time.sleep(0.05)
  started = json.loads(log.read_text().splitlines()[0])
  try:
    assert started['argv'] == ['-m', 'bertjax.train', '--multihost', *HOSTILE]
    assert started['xla_flags'] == '--xla_dump_to=/tmp/a b; echo $(id)'
    # A session of its own: the end of the SSH session does not reach it.
    assert started['sid'] == started['pid'] != os.getsid(0)
    log_file = home / 'logs' / 'train log.txt'
    while 'training' not in log_file.read_text():
      time.sleep(0.05)
  finally:
    os.kill(started['pid'], signal.SIGKILL)


def test_the_training_command_is_the_one_the_readme_documents(fakes):
  env, calls = fakes
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    lines = [
      shlex.split(line)
      for line in f.read().splitlines()
      if line.startswith('python -m launch.tpu_vm train ')
    ]
  (readme,) = lines
  split = readme.index('--')
  result = _launch(env, *readme[3:split], '--skip_aot_check', *readme[split:])
  assert result.returncode == 0, result.stderr[-2000:]
  (ssh,) = calls()
  words = shlex.split(ssh[7].removeprefix('--command='))
  start = words.index('~/bertjax-venv/bin/python')
  end = words.index('>>')
  assert words[start:end] == [
    '~/bertjax-venv/bin/python',
    '-m',
    'bertjax.train',
    '--multihost',
    *readme[split + 1 :],
  ]


@pytest.mark.skipif(not aot.has_tpu_compiler(), reason='needs libtpu')
def test_a_recipe_that_does_not_fit_is_refused_before_any_gcloud(fakes):
  env, calls = fakes
  oversized = [
    '--config=configs/bert_large.py:phase=2',
    '--config.batch_size=256',
    '--config.model.remat_policy=none',
    '--workdir=gs://b/large',
  ]
  for command in ('create', 'train'):
    result = _launch(
      env, command, *SLICE, '--accelerator_type=v5litepod-4', '--', *oversized
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('launch.tpu_vm: error: configs/bert_large.py')
    assert 'does not fit v5litepod-4' in last
    assert last.endswith('(--skip_aot_check goes on regardless)')
  assert calls() == []
  # A recipe that fits: its report, then the slice.
  result = _launch(
    env,
    'create',
    *SLICE,
    '--accelerator_type=v5litepod-4',
    '--',
    '--config=configs/bert_tiny.py',
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'fits: peak' in result.stdout
  assert [c[4] for c in calls()] == ['create']


def test_launcher_mistakes_are_one_line(fakes):
  env, calls = fakes
  for args, message in [
    ([], 'the command is not one of create, setup, train'),
    (['start', *SLICE], "the command 'start' is not one of"),
    (['train', '--zone=z'], '--tpu and --zone are required'),
    (['train', *SLICE, '--skip_aot_check'], 'pass the training flags'),
    (['create', *SLICE, '--skip_aot_check'], 'create needs --accelerator_type'),
    (
      ['create', *SLICE, '--', '--config=c.py'],
      'pass it (or --skip_aot_check)',
    ),
    (['stop', *SLICE, '--', '--config=c.py'], 'stop takes no arguments'),
    (
      ['train', *SLICE, '--skip_aot_check', '--', '--config=c', '--workdir=/x'],
      '--workdir=/x: a slice trains in a gs:// workdir',
    ),
    (
      ['train', *SLICE, '--skip_aot_check', '--env=1A=b', '--', '--config=c'],
      "--env: '1A=b' is not KEY=VALUE",
    ),
    (
      [
        'train',
        *SLICE,
        '--skip_aot_check',
        '--',
        '--config',
        'c',
        '--workdir',
        'x',
      ],
      '--workdir=x: a slice trains in a gs:// workdir',
    ),
    (
      ['create', *SLICE, '--accelerator_type=v5e-16', '--skip_aot_check'],
      'Cloud TPU names v5e slices v5litepod-N: --accelerator_type=v5litepod-16',
    ),
    (
      ['create', *SLICE, '--accelerator_type=v9-8', '--skip_aot_check'],
      "no default runtime for accelerator type 'v9-8'",
    ),
  ]:
    result = _launch(env, *args)
    assert result.returncode == 2, (args, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('launch.tpu_vm: error: ') and message in last, last
  assert calls() == []


def test_a_failing_gcloud_stops_the_launcher(fakes, tmp_path):
  env, calls = fakes
  (tmp_path / 'bin' / 'gcloud').write_text('#!/bin/sh\nexit 7\n')
  result = _launch(env, 'delete', *SLICE)
  assert result.returncode == 2
  assert 'exited with 7' in result.stderr.strip().splitlines()[-1]


def test_slurm_batch_script_hands_srun_the_arguments_intact(fakes):
  env, calls = fakes
  result = subprocess.run(
    ['sbatch', '--nodes=4', 'launch/slurm.sbatch', *HOSTILE],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  recorded = calls()
  assert recorded == [
    ['sbatch', '--nodes=4', 'launch/slurm.sbatch', *HOSTILE],
    ['srun', '--kill-on-bad-exit=1', 'python', '-m', 'bertjax.train']
    + ['--multihost', *HOSTILE],
  ]


def test_multinode_script_names_the_coordinator_and_process(fakes):
  env, calls = fakes
  script = os.path.join(ROOT, 'launch', 'multinode.sh')
  node = dict(env, COORDINATOR='10.0.0.1:8476', NUM_PROCESSES='2')
  missing = subprocess.run(
    [script, *HOSTILE], env=node, capture_output=True, text=True
  )
  assert missing.returncode != 0 and 'PROCESS_ID' in missing.stderr
  assert calls() == []
  result = subprocess.run(
    [script, *HOSTILE],
    env=dict(node, PROCESS_ID='1'),
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr
  ((name, *argv),) = calls()
  assert name == 'python3'
  assert argv == [
    '-m',
    'bertjax.train',
    '--coordinator_address=10.0.0.1:8476',
    '--num_processes=2',
    '--process_id=1',
    *HOSTILE,
  ]
