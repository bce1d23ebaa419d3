"""Launchers quote every argument they hand to a shell or to gcloud."""

import shlex
import subprocess
import sys

from launch import tpu_vm


class TpuVmTest:
  def test_hostile_arguments_survive_one_shell_parse(self):
    args = [
      '--config=configs/bert_base.py:phase=1',
      "--workdir=gs://b/run; rm -rf / #'$(id)`x`",
      '--config.data.input_files=gs://b/a b/*.tfrecord',
    ]
    remote = tpu_vm.build_remote_command('/opt/bert jax', 'python3', args)
    # What the remote shell will see as argv after one round of parsing.
    words = shlex.split(remote)
    assert words[:3] == ['cd', '/opt/bert jax', '&&']
    assert words[3:] == ['python3', '-m', 'bertjax.train', '--multihost', *args]

  def test_home_directory_is_expanded_remotely(self):
    remote = tpu_vm.build_remote_command('~/bert jax', 'python3', ['--x=1'])
    assert remote.startswith("cd ~/'bert jax' && ")

  def test_gcloud_argv_and_dry_run(self):
    argv = tpu_vm.build_gcloud_command('v5e', 'us-west4-a', 'proj', 'cmd x')
    assert argv[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'v5e']
    assert '--worker=all' in argv and '--command=cmd x' in argv
    assert '--project=proj' in argv
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'launch.tpu_vm',
        '--tpu=v5e',
        '--zone=z',
        '--dry_run',
        '--',
        '--config=configs/bert_tiny.py',
        '--workdir=/tmp/a b',
      ],
      capture_output=True,
      text=True,
    )
    assert result.returncode == 0, result.stderr
    printed = shlex.split(result.stdout)
    command = [a for a in printed if a.startswith('--command=')][0]
    assert shlex.split(command.split('=', 1)[1])[-1] == '--workdir=/tmp/a b'
