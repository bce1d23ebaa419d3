r"""Run bertjax training on every worker of a Cloud TPU VM slice.

  python -m launch.tpu_vm --tpu=my-v5e-256 --zone=us-west4-a \
    --repo_dir='~/bertjax' -- \
    --config=configs/bert_base.py:phase=1 --workdir=gs://BUCKET/run1

Everything after `--` is passed to `python -m bertjax.train` (with
`--multihost` added: `jax.distributed.initialize()` finds the slice's
workers by itself). The remote command is built with `shlex.quote` on every
argument, and gcloud is run without a shell, so nothing in a flag value is
ever interpreted twice. `--dry_run` prints the gcloud command instead.
"""

import shlex
import subprocess
import sys
from collections.abc import Sequence

from absl import app, flags

_TPU = flags.DEFINE_string('tpu', None, 'TPU VM name.')
_ZONE = flags.DEFINE_string('zone', None, 'GCP zone of the TPU VM.')
_PROJECT = flags.DEFINE_string('project', None, 'GCP project (optional).')
_REPO_DIR = flags.DEFINE_string(
  'repo_dir', '~/bertjax', 'Checkout of bertjax on the workers.'
)
_PYTHON = flags.DEFINE_string('python', 'python3', 'Python on the workers.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print, do not run.')


def build_remote_command(
  repo_dir: str, python: str, train_args: Sequence[str]
) -> str:
  """The shell command each worker runs; every argument quoted.

  `~` at the start of repo_dir is left for the remote shell to expand.
  """
  if repo_dir.startswith('~/'):
    cd = '~/' + shlex.quote(repo_dir[2:])
  else:
    cd = shlex.quote(repo_dir)
  train = [python, '-m', 'bertjax.train', '--multihost', *train_args]
  return f'cd {cd} && ' + ' '.join(shlex.quote(a) for a in train)


def build_gcloud_command(
  tpu: str,
  zone: str,
  project: str | None,
  remote_command: str,
) -> list[str]:
  """argv of `gcloud compute tpus tpu-vm ssh` on all workers (no shell)."""
  argv = [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'ssh',
    tpu,
    f'--zone={zone}',
    '--worker=all',
    f'--command={remote_command}',
  ]
  if project:
    argv.insert(6, f'--project={project}')
  return argv


def main(argv: Sequence[str]) -> None:
  train_args = list(argv[1:])
  if not _TPU.value or not _ZONE.value:
    raise app.UsageError('--tpu and --zone are required')
  if not any(a.startswith('--config') for a in train_args):
    raise app.UsageError('pass the training flags after --, e.g. --config=...')
  command = build_gcloud_command(
    _TPU.value,
    _ZONE.value,
    _PROJECT.value,
    build_remote_command(_REPO_DIR.value, _PYTHON.value, train_args),
  )
  if _DRY_RUN.value:
    print(shlex.join(command))
    return
  sys.exit(subprocess.call(command))


if __name__ == '__main__':
  app.run(main)
