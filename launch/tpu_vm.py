r"""A Cloud TPU VM slice from creation to deletion.

  python -m launch.tpu_vm create --tpu=bert1 --zone=us-east5-a \
    --accelerator_type=v5p-128 [--spot] [--queued] \
    -- --config=configs/bert_large.py:phase=1
  python -m launch.tpu_vm setup --tpu=bert1 --zone=us-east5-a
  python -m launch.tpu_vm train --tpu=bert1 --zone=us-east5-a \
    --accelerator_type=v5p-128 \
    -- --config=configs/bert_large.py:phase=1 --workdir=gs://BUCKET/large1
  python -m launch.tpu_vm status|logs|stop|delete --tpu=bert1 --zone=us-east5-a

- `create` makes the slice (`--spot`: preemptible; `--queued`: a queued
  resource, granted when capacity frees up: `status --queued` shows when;
  `delete --queued` deletes it) with the runtime of its TPU generation.
- `setup` copies this checkout's committed files (`git archive HEAD`) to
  every worker and installs them with the `tpu` extra in a Python 3.12
  virtual environment (`--venv`) made with uv.
- `train` starts `python -m bertjax.train --multihost` with the flags after
  `--` on every worker, detached from SSH (it survives a dropped
  connection), its output in `--log_file` on each worker;
  `jax.distributed.initialize()` finds the workers by itself.
- `status` shows the slice's state and the training process of each worker;
  `logs` the end of worker `--worker`'s log (`--follow` keeps reading).
- `stop` sends SIGTERM to the training processes: they agree on a step,
  save it and exit, and `train` again resumes from there.
- `delete` deletes the slice (or the queued resource).

Before `create` and `train`, the recipe after `--` is compiled for
`--accelerator_type` on this machine (`python -m bertjax.aot`, which needs
libtpu: `pip install -e '.[tpu]'`); a recipe that does not fit is refused
with the compiler's figures, unless `--skip_aot_check`.

Every gcloud command runs without a shell, and every argument of a remote
command is quoted with `shlex.quote`, so nothing in a flag value is ever
interpreted twice. `--dry_run` prints each command instead of running it.
"""

import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from absl import flags, logging

from data_pipeline import cli

COMMANDS = ('create', 'setup', 'train', 'status', 'logs', 'stop', 'delete')

_TPU = flags.DEFINE_string('tpu', None, 'TPU VM (slice) name.')
_ZONE = flags.DEFINE_string('zone', None, 'GCP zone of the slice.')
_PROJECT = flags.DEFINE_string('project', None, 'GCP project (optional).')
_ACCELERATOR_TYPE = flags.DEFINE_string(
  'accelerator_type', None, 'e.g. v4-32, v5litepod-16, v5p-128 (create).'
)
_RUNTIME_VERSION = flags.DEFINE_string(
  'runtime_version', None, "TPU VM image; by default the generation's."
)
_SPOT = flags.DEFINE_bool('spot', False, 'Spot (preemptible) capacity.')
_QUEUED = flags.DEFINE_bool(
  'queued', False, 'Ask for the slice as a queued resource.'
)
_REPO_DIR = flags.DEFINE_string(
  'repo_dir', '~/bertjax', 'Where the code lives on the workers.'
)
_VENV = flags.DEFINE_string(
  'venv',
  '~/bertjax-venv',
  'The virtual environment `setup` makes on the workers.',
)
_ENV = flags.DEFINE_list(
  'env', [], 'KEY=VALUE pairs set for the training processes.'
)
_LOG_FILE = flags.DEFINE_string(
  'log_file', '~/bertjax_train.log', "Each worker's training log."
)
_WORKER = flags.DEFINE_string('worker', '0', 'Worker whose log `logs` shows.')
_LINES = flags.DEFINE_integer('lines', 100, 'Log lines `logs` shows.')
_FOLLOW = flags.DEFINE_bool('follow', False, '`logs` keeps reading.')
_SKIP_AOT_CHECK = flags.DEFINE_bool(
  'skip_aot_check', False, 'Create or train without compiling first.'
)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print, do not run.')

# The TPU VM image of each generation (Cloud TPU's documented runtimes).
_RUNTIMES = {
  'v4': 'tpu-ubuntu2204-base',
  'v5litepod': 'v2-alpha-tpuv5-lite',
  'v5p': 'v2-alpha-tpuv5',
  'v6e': 'v2-alpha-tpuv6e',
}

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LaunchError(ValueError):
  """A launcher command that cannot go on as asked."""


def remote_path(path: str) -> str:
  """`path` quoted for the remote shell, a leading `~/` left for it to
  expand."""
  if path.startswith('~/'):
    return '~/' + shlex.quote(path[2:])
  return shlex.quote(path)


def build_train_command(
  repo_dir: str,
  python: str,
  train_args: Sequence[str],
  env: Sequence[str] = (),
  log_file: str = '~/bertjax_train.log',
) -> str:
  """The shell command each worker runs: the training command, detached
  from the SSH session (setsid, nohup, no terminal), its output appended
  to `log_file`."""
  exports = []
  for pair in env:
    key, sep, value = pair.partition('=')
    if not sep or not key.isidentifier():
      raise LaunchError(f'--env: {pair!r} is not KEY=VALUE')
    exports.append(f'export {key}={shlex.quote(value)} && ')
  train = ['-m', 'bertjax.train', '--multihost', *train_args]
  # Only the training process goes to the background (the braces): were
  # the whole `&&` list sent there, a shell would wait on it holding SSH's
  # output open, and the SSH command would not return until training ends.
  return (
    f'cd {remote_path(repo_dir)} && {"".join(exports)}'
    f'{{ setsid nohup {remote_path(python)} {shlex.join(train)} '
    f'>> {remote_path(log_file)} 2>&1 < /dev/null & }}'
  )


def _gcloud(*args: str) -> list[str]:
  argv = ['gcloud', 'compute', 'tpus', *args, f'--zone={_ZONE.value}']
  if _PROJECT.value:
    argv.append(f'--project={_PROJECT.value}')
  return argv


def _ssh(command: str, worker: str = 'all') -> list[str]:
  return _gcloud(
    'tpu-vm',
    'ssh',
    _TPU.value,
    f'--worker={worker}',
    f'--command={command}',
  )


def _runtime_version(accelerator_type: str) -> str:
  generation = accelerator_type.split('-')[0]
  if generation == 'v5e':
    raise LaunchError(
      f'Cloud TPU names v5e slices v5litepod-N: --accelerator_type='
      f'{accelerator_type.replace("v5e", "v5litepod", 1)}'
    )
  if _RUNTIME_VERSION.value:
    return _RUNTIME_VERSION.value
  if generation not in _RUNTIMES:
    raise LaunchError(
      f'no default runtime for accelerator type {accelerator_type!r}: pass '
      '--runtime_version'
    )
  return _RUNTIMES[generation]


def build_commands(command: str, train_args: Sequence[str]) -> list[list[str]]:
  """The argv of each program `command` runs, in order (gcloud, and git
  for `setup`)."""
  tpu = _TPU.value
  if command == 'create':
    accelerator = _ACCELERATOR_TYPE.value
    runtime = _runtime_version(accelerator)
    if _QUEUED.value:
      argv = _gcloud(
        'queued-resources',
        'create',
        tpu,
        f'--node-id={tpu}',
        f'--accelerator-type={accelerator}',
        f'--runtime-version={runtime}',
      )
    else:
      argv = _gcloud(
        'tpu-vm',
        'create',
        tpu,
        f'--accelerator-type={accelerator}',
        f'--version={runtime}',
      )
    return [argv + (['--spot'] if _SPOT.value else [])]
  if command == 'setup':
    archive = os.path.join(tempfile.gettempdir(), f'bertjax-{tpu}.tar.gz')
    repo, venv = remote_path(_REPO_DIR.value), remote_path(_VENV.value)
    # The TPU VM images' Python (3.10 on Ubuntu 22.04) is older than
    # bertjax's: uv brings a Python 3.12 into the venv.
    install = (
      f'mkdir -p {repo} && tar -xzf ~/bertjax.tar.gz -C {repo} && '
      f'cd {repo} && (python3 -m pip install -q --user uv || python3 -m pip '
      'install -q --user --break-system-packages uv) && '
      f'~/.local/bin/uv venv -q --allow-existing --python 3.12 {venv} && '
      f"~/.local/bin/uv pip install -q --python {venv}/bin/python -e '.[tpu]'"
    )
    return [
      ['git', '-C', _ROOT, 'archive', '--format=tar.gz', '-o', archive, 'HEAD'],
      _gcloud(
        'tpu-vm', 'scp', archive, f'{tpu}:~/bertjax.tar.gz', '--worker=all'
      ),
      _ssh(install),
    ]
  if command == 'train':
    return [
      _ssh(
        build_train_command(
          _REPO_DIR.value,
          _VENV.value.rstrip('/') + '/bin/python',
          train_args,
          _ENV.value,
          _LOG_FILE.value,
        )
      )
    ]
  if command == 'status':
    kind = 'queued-resources' if _QUEUED.value else 'tpu-vm'
    return [
      _gcloud(kind, 'describe', tpu),
      _ssh(
        "pgrep -af -- '-m bertjax[.]train' || echo 'no training process on' "
        '"$(hostname)"'
      ),
    ]
  if command == 'logs':
    tail = ['tail', '-n', str(_LINES.value)] + (['-F'] if _FOLLOW.value else [])
    return [
      _ssh(f'{shlex.join(tail)} {remote_path(_LOG_FILE.value)}', _WORKER.value)
    ]
  if command == 'stop':
    return [_ssh("pkill -TERM -f -- '-m bertjax[.]train' || true")]
  if command == 'delete':
    if _QUEUED.value:
      return [_gcloud('queued-resources', 'delete', tpu, '--force', '--quiet')]
    return [_gcloud('tpu-vm', 'delete', tpu, '--quiet')]
  raise LaunchError(f'{command!r} is not one of {", ".join(COMMANDS)}')


def check_recipe_fits(accelerator_type: str, train_args: Sequence[str]) -> None:
  """Compiles the recipe in `train_args` (its `--config` flags) for the
  slice with `python -m bertjax.aot`, printing its report.

  Raises:
    LaunchError: the recipe does not compile or fit there (the compiler's
      line, and how to go on regardless).
  """
  config = [a for a in train_args if a.startswith('--config')]
  if (platform.system(), platform.machine()) != ('Linux', 'x86_64'):
    logging.warning(
      'Not compiling the recipe for %s first: libtpu, the TPU compiler, runs '
      'on x86-64 Linux only.',
      accelerator_type,
    )
    return
  if not config:
    raise LaunchError(
      'give the recipe after --, e.g. -- --config=configs/bert_base.py, to '
      'check that it fits (or --skip_aot_check)'
    )
  check = [
    sys.executable,
    '-m',
    'bertjax.aot',
    f'--topology={accelerator_type}',
    *config,
  ]
  print(
    f'Compiling the recipe for {accelerator_type} first (a minute or more): '
    f'python {shlex.join(check[1:])}',
    file=sys.stderr,
    flush=True,
  )
  result = subprocess.run(check, cwd=_ROOT, capture_output=True, text=True)
  if result.returncode:
    lines = result.stderr.strip().splitlines() or ['']
    if lines[-1].startswith('bertjax.aot: error: '):
      why = lines[-1].removeprefix('bertjax.aot: error: ')
    else:  # A crash: the command itself shows the whole story.
      why = (
        f'python {shlex.join(check[1:])} exited with {result.returncode}; '
        'run it to see why'
      )
    raise LaunchError(f'{why} (--skip_aot_check goes on regardless)')
  print(result.stdout, end='', flush=True)


def _check_flags(command: str, train_args: Sequence[str]) -> None:
  if not _TPU.value or not _ZONE.value:
    raise cli.UsageError('--tpu and --zone are required')
  if command in ('create', 'train') and not _SKIP_AOT_CHECK.value:
    if not _ACCELERATOR_TYPE.value:
      raise cli.UsageError(
        f'{command} checks the recipe for --accelerator_type: pass it (or '
        '--skip_aot_check)'
      )
  if command == 'create' and not _ACCELERATOR_TYPE.value:
    raise cli.UsageError('create needs --accelerator_type, e.g. v5p-128')
  if command == 'train' and not any(
    a.startswith('--config') for a in train_args
  ):
    raise cli.UsageError('pass the training flags after --, e.g. --config=...')
  workdirs = [a for a in train_args if a.startswith('--workdir=')]
  if command == 'train' and not all(
    w.startswith('--workdir=gs://') for w in workdirs
  ):
    raise cli.UsageError(
      f'{workdirs[-1]}: a slice trains in a gs:// workdir, which every '
      'worker sees (a local one would be a different folder on each)'
    )
  if command not in ('create', 'train') and train_args:
    raise cli.UsageError(f'{command} takes no arguments after --')


def join_flag_values(args: Sequence[str]) -> list[str]:
  """`--flag value` pairs as `--flag=value` (absl takes both), so that the
  recipe and workdir are found whichever form a user typed."""
  out: list[str] = []
  for arg in args:
    previous = out[-1] if out else ''
    if previous in ('--config', '--workdir') and not arg.startswith('--'):
      out[-1] = f'{previous}={arg}'
    else:
      out.append(arg)
  return out


def main(argv: Sequence[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    given = f' {argv[1]!r}' if len(argv) > 1 else ''
    raise cli.UsageError(
      f'the command{given} is not one of {", ".join(COMMANDS)}'
    )
  command, train_args = argv[1], join_flag_values(argv[2:])
  _check_flags(command, train_args)
  if command in ('create', 'train') and not _SKIP_AOT_CHECK.value:
    check_recipe_fits(_ACCELERATOR_TYPE.value, train_args)
  for step in build_commands(command, train_args):
    if _DRY_RUN.value:
      print(shlex.join(step))
      continue
    status = subprocess.call(step)
    if status:
      raise LaunchError(f'{shlex.join(step[:4])} ... exited with {status}')


if __name__ == '__main__':
  cli.run(main, takes_arguments=True)
