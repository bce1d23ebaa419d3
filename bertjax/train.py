r"""Pretrain BERT: the command line.

  python -m bertjax.train --config=configs/bert_tiny.py --workdir=/tmp/tiny \
    [--config.num_train_steps=1000 ...]

Multi-host: on Cloud TPU VMs and SLURM clusters `jax.distributed` detects
the processes by itself (`--multihost`); elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on every
process. Flags only: the loop lives in `bertjax.trainer`; `bertjax.finetune`
takes the same flags through `launch`.
"""

import os
from collections.abc import Callable
from typing import Any

from absl import flags, logging
from ml_collections import config_flags

from data_pipeline import cli, corpora, files

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'A recipe file in configs/, e.g. configs/bert_tiny.py.',
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Run directory: checkpoints, metrics, curves (gs:// ok).'
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'HOST:PORT of process 0 (multi-process).'
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'Processes in the job (multi-process).'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, 'This process, 0..num_processes-1 (multi-process).'
)
_MULTIHOST = flags.DEFINE_bool(
  'multihost',
  False,
  'Call jax.distributed.initialize() with auto-detection (Cloud TPU VM, '
  'SLURM, ...).',
)
_COMPILATION_CACHE = flags.DEFINE_string(
  'compilation_cache_dir',
  None,
  'Where JAX keeps compiled steps, so that a rerun or a resume of the same '
  'recipe loads them instead of compiling again; "" turns it off. Default: '
  '$JAX_COMPILATION_CACHE_DIR, else jax/ in the bertjax cache '
  '($BERTJAX_CACHE_DIR, else ~/.cache/bertjax).',
)
flags.mark_flags_as_required(['config', 'workdir'])


def _initialize_distributed() -> None:
  import jax

  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise cli.UsageError(
        '--coordinator_address, --num_processes and --process_id go together'
      )
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  elif _MULTIHOST.value:
    jax.distributed.initialize()


def _use_compilation_cache() -> None:
  import jax

  path = _COMPILATION_CACHE.value
  if path is None:
    if jax.config.jax_compilation_cache_dir:  # From the environment.
      return
    path = os.fspath(corpora.get_cache_dir() / 'jax')
  if not path:
    return
  if files.is_local(path):
    # JAX would warn at every compile instead, and run without it.
    try:
      os.makedirs(path, exist_ok=True)
      if not os.access(path, os.W_OK):
        raise PermissionError('not writable')
    except OSError as e:
      if _COMPILATION_CACHE.value is not None:
        raise cli.UsageError(
          f'--compilation_cache_dir={path}: {e.strerror or e}'
        ) from None
      logging.warning('No compilation cache: %s is unusable (%s)', path, e)
      return
  jax.config.update('jax_compilation_cache_dir', path)


def _main(run: Callable[[Any, str], Any]) -> Callable[[list[str]], None]:
  def main(argv):
    del argv
    # TensorFlow serves tf.data only: keep it off accelerators and quiet.
    # Level 3 also hides TF's 'failed call to cuInit' on machines without
    # CUDA (tf.data errors still raise as Python exceptions).
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    import tensorflow as tf

    tf.config.set_visible_devices([], 'GPU')
    _initialize_distributed()
    _use_compilation_cache()
    run(_CONFIG.value, _WORKDIR.value)

  return main


def _pretrain(config, workdir: str) -> None:
  from bertjax import trainer

  trainer.train_and_evaluate(config, workdir)


def launch(run: Callable[[Any, str], Any]) -> None:
  """Runs `run(config, workdir)` as a command with this module's flags:
  `--config` (with overrides), `--workdir` and the multi-process ones. The
  modules `run` needs are imported inside it, after TensorFlow is set up."""
  cli.restart_with_malloc_huge_pages()
  # The run's progress lines are INFO: show them by default.
  flags.FLAGS.set_default('verbosity', logging.INFO)
  cli.run(_main(run), flags_parser=cli.parse_config_flags)


if __name__ == '__main__':
  launch(_pretrain)
