"""What a training run keeps in its workdir, and how it resumes from it.

  checkpoints/<step>/   Orbax steps: `state`, `data` (each process's input
                        position) and `meta` (run config, model config,
                        tokenizer; for fine-tuning, head and task labels)
  best/<step>/          fine-tuning only: `state` holds the best evaluation's
                        `{'params': ...}`, `meta` its metrics; the workdir's
                        model wherever bertjax takes one
  damaged/<step>/       steps that did not restore, set aside
  tokenizer/            the run's vocabulary or SentencePiece model, copied in
  metrics.jsonl         one JSON object per metric write
  .lock                 held by the run using the workdir (`claim`)
  tb/                   the same metrics as TensorBoard event files
  learning_curves.png   drawn at the end of a run

Owns the run's lock (`claim`), its checkpoints (`Checkpointer`), SIGTERM
handling (`Preemption`), reading a step as a model, and the metric files.

Orbax commits a step by renaming its temporary directory (a commit marker
on GCS), so a run falls back to the last complete step; a step damaged
after its commit is skipped, with a warning, by the run and by every model
loader. Paths go through `etils.epath`, so `gs://` workdirs work too.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from data_pipeline import files

CHECKPOINTS_DIR = 'checkpoints'
BEST_DIR = 'best'
DAMAGED_DIR = 'damaged'
TOKENIZER_DIR = 'tokenizer'
METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'learning_curves.png'
LOCK_FILE = '.lock'

_T = TypeVar('_T')


class CheckpointError(ValueError):
  """A training checkpoint that cannot be read or used as asked."""


class WorkdirError(OSError):
  """A workdir that cannot be used: not writable, or in use by another run."""


def _absolute(path: str) -> epath.Path:
  """Orbax wants absolute paths; `gs://` ones are."""
  return epath.Path(files.resolve(path))


@contextlib.contextmanager
def claim(path: str) -> Iterator[str]:
  """A run's hold on its workdir, for the length of the block.

  Creates the workdir, checks it can be written and takes its lock (process
  0), then yields its absolute path (Orbax refuses relative ones). A second
  run on the same workdir fails here with `WorkdirError`, before it reads or
  writes anything; every process learns the outcome.
  """
  path = files.resolve(path)
  directory = epath.Path(path)
  created = jax.process_index() == 0 and not directory.exists()
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f'.write_probe_{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except (OSError, ValueError) as e:
    raise WorkdirError(f'workdir {path} is not writable: {e}') from None
  lock = files.Lock(os.path.join(path, LOCK_FILE), f'workdir {path}')
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except files.LockedError as e:
      error = e
  if jax.process_count() > 1:
    locked = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if locked and error is None:
      error = WorkdirError(f'workdir {path} is in use by another run')
  if error is not None:
    raise WorkdirError(str(error)) from None
  completed = False
  try:
    yield path
    completed = True
  finally:
    lock.release()
    if created and not completed:
      _remove_if_unwritten(path)


def _remove_if_unwritten(path: str) -> None:
  """Deletes a workdir its failed run created but wrote nothing into (a bad
  config or input file found before the first write), so that a typo
  leaves no empty run behind; a workdir holding any file but the lock is
  kept."""
  if not files.is_local(path):
    return
  written = [os.path.join(r, n) for r, _, names in os.walk(path) for n in names]
  if written == [os.path.join(path, LOCK_FILE)]:
    shutil.rmtree(path, ignore_errors=True)


class _DataIteratorHandler(ocp.CheckpointHandler):
  """Saves each process's input-iterator state inside the Orbax step.

  Each process writes `process_<i>/` into the step before Orbax commits it,
  so a step's data position always matches its parameters. The iterator
  has `save(prefix)` and `restore(prefix)`. A process with no state of its
  own (saved with fewer processes) gets process 0's, which an iterator with
  global state (`host_sharding='batch'`) resumes from and others refuse.
  """

  def _prefix(self, directory, process: int) -> epath.Path:
    return epath.Path(directory) / f'process_{process}' / 'iterator'

  def save(self, directory, args: 'DataIteratorSave') -> None:
    prefix = self._prefix(directory, jax.process_index())
    prefix.parent.mkdir(parents=True, exist_ok=True)
    args.iterator.save(os.fspath(prefix))

  def restore(self, directory, args: 'DataIteratorRestore' = None):
    prefix = self._prefix(directory, jax.process_index())
    if not prefix.parent.exists():
      prefix = self._prefix(directory, 0)
    args.iterator.restore(os.fspath(prefix))
    return args.iterator

  def metadata(self, directory):
    del directory

  def finalize(self, directory) -> None:
    del directory

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(_DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(_DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: Any


# The step's directory is made before `save` returns (the writing stays
# asynchronous): made in Orbax's background thread, a failure (a read-only
# or full disk) left the run waiting 5 minutes for a signal that never came.
_ASYNC_OPTIONS = ocp.AsyncOptions(create_directories_asynchronously=False)


def _check_space(directory: epath.Path, tree: Any, step: int) -> None:
  """Fails before a save that cannot be written to a local disk (read-only,
  or too full): a save that runs out of space fails in a dozen background
  threads, each printing its traceback. (On gs:// there is nothing to ask.)
  """
  if not files.is_local(os.fspath(directory)):
    return
  if not os.access(directory, os.W_OK):
    raise CheckpointError(f'cannot save step {step}: {directory} is read-only')
  need = sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, 'nbytes'))
  need += need // 20 + (1 << 20)  # Orbax's metadata, and some room.
  free = shutil.disk_usage(directory).free
  if free < need:
    raise CheckpointError(
      f'not enough space to save step {step} in {directory}: it needs '
      f'about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free'
    )


@functools.cache  # Once per process.
def _save_replicated_arrays_whole_on_cpu() -> None:
  """On CPU devices, saves each replicated array from one replica.

  Orbax's default splits a replicated array across its replicas, each
  writing a slice, which spreads device-to-host copies on accelerators.
  On CPU devices there is no such copy, and the slicing compiles a program
  per array shape: the first save of each process blocked for seconds.
  Elsewhere Orbax's default stands. (Orbax 0.12 keeps the array metadata
  store, which its default handler is given, under `_src`.)
  """
  if jax.default_backend() != 'cpu':
    return
  from orbax.checkpoint._src.metadata import array_metadata_store

  # Orbax warns of any override; this one is deliberate.
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(logging.logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(
      jax.Array,
      ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False,
        array_metadata_store=array_metadata_store.Store(),
      ),
      override=True,
    )
  finally:
    absl_logger.setLevel(level)


class Checkpointer:
  """Orbax checkpoints of a training run: state, input position, config.

  A save that fails (here, or in the background: a full disk) raises
  `CheckpointError` at the next call; the steps saved before it are kept.
  """

  def __init__(
    self,
    workdir: str,
    keep: int,
    meta: Mapping[str, Any],
    keep_best: bool = False,
  ):
    """Opens `<workdir>/checkpoints`, keeping the newest `keep` steps, and
    with `keep_best` `<workdir>/best` (see `save_best`). `meta`, saved with
    every step to make it usable as a model, is JSON-ready: `config`,
    `model` (`BertConfig.to_dict()`), `tokenizer` and for fine-tuning
    `head` and `task`."""
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
      async_options=_ASYNC_OPTIONS,
    )
    self._workdir = _absolute(workdir)
    _save_replicated_arrays_whole_on_cpu()
    self._manager = ocp.CheckpointManager(
      self._workdir / CHECKPOINTS_DIR,
      options=options,
      item_handlers={
        'state': ocp.StandardCheckpointHandler(),
        'data': _DataIteratorHandler(),
        'meta': ocp.JsonCheckpointHandler(),
      },
    )
    self._meta = dict(meta)
    self._best = None
    if keep_best:
      self._best = ocp.CheckpointManager(
        _absolute(workdir) / BEST_DIR,
        options=ocp.CheckpointManagerOptions(
          max_to_keep=1,
          create=True,
          enable_async_checkpointing=True,
          cleanup_tmp_directories=True,
          async_options=_ASYNC_OPTIONS,
        ),
        item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler(),
        },
      )

  def save_best(
    self, step: int, params: Any, metrics: Mapping[str, float]
  ) -> None:
    """Replaces `best/` with these params and the metrics that made them
    the best (Orbax commits the new step before it deletes the old)."""
    # The two managers' saves must not overlap: with several processes
    # their asynchronous saves meet at barriers of the same name.
    with self._saving(step, self._best):
      self._manager.wait_until_finished()
      _check_space(self._best.directory, params, step)
      self._best.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave({'params': params}),
          meta=ocp.args.JsonSave(
            {'step': int(step), **self._meta, 'metrics': dict(metrics)}
          ),
        ),
      )

  @contextlib.contextmanager
  def _saving(self, step: int | None, manager: ocp.CheckpointManager):
    """Turns a failed save (this one, or an earlier one that failed in the
    background) into one `CheckpointError` line."""
    try:
      yield
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001 - whatever the filesystem raises.
      what = f'step {step}' if step is not None else 'a checkpoint'
      raise CheckpointError(
        f'could not save {what} in {manager.directory}: {_first_line(e)} '
        '(the steps saved before it are kept)'
      ) from e

  def best_metrics(self) -> dict[str, float] | None:
    """The metrics of the step in `best/`, None when there is none."""
    step = self._best.latest_step() if self._best else None
    if step is None:
      return None
    restored = self._best.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )
    return dict(restored.meta.get('metrics', {}))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any) -> None:
    """Saves (asynchronously) the state and this process's input position."""
    with self._saving(step, self._manager):
      if self._best is not None:
        self._best.wait_until_finished()  # See save_best.
      _check_space(self._manager.directory, state, step)
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=DataIteratorSave(data_iterator),
          meta=ocp.args.JsonSave({'step': int(step), **self._meta}),
        ),
      )

  def restore_latest(
    self,
    state: Any,
    data_iterator: Any,
    mismatch: tuple[type[Exception], ...] = (),
  ) -> tuple[Any, int]:
    """Restores the newest step that restores onto a fresh `state`'s
    shapes, dtypes and shardings, and `data_iterator` in place: (state,
    step), or (the given state, 0) when there is no checkpoint.

    A damaged step (a torn or missing file, an empty directory) is skipped
    with a warning and moved to `<workdir>/damaged/`, never deleted, so the
    run can save its steps again. Errors of the `mismatch` types (the data
    is not the run's) are raised at once; when no step restores, a
    `CheckpointError` names each one's reason.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      state,
    )
    damaged = []
    for step in steps:
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=DataIteratorRestore(data_iterator),
          ),
        )
        reason = ''
      except mismatch:
        raise
      except Exception as e:  # noqa: BLE001 - whatever a damaged file raises.
        reason = _first_line(e)
      # Every process must pick the same step.
      if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(np.int32(bool(reason)))
        if failed.any() and not reason:
          reason = 'another process could not restore it'
      if not reason:
        self._set_aside(damaged)
        return restored.state, int(step)
      logging.warning(
        'Checkpoint step %d in %s does not restore (%s); trying the one '
        'before it',
        step,
        self._manager.directory,
        reason,
      )
      damaged.append((step, reason))
    if damaged:
      raise CheckpointError(
        f'no checkpoint in {self._manager.directory} restores: '
        + '; '.join(f'step {step}: {reason}' for step, reason in damaged)
      )
    return state, 0

  def _set_aside(self, damaged: Sequence[tuple[int, str]]) -> None:
    """Moves damaged steps out of `checkpoints/` (Orbax saves no step at or
    below its newest one) into `<workdir>/damaged/`."""
    if not damaged:
      return
    if jax.process_index() == 0:
      aside = self._workdir / DAMAGED_DIR
      aside.mkdir(parents=True, exist_ok=True)
      for step, _ in damaged:
        source = epath.Path(self._manager.directory) / str(step)
        name = str(step)
        while (aside / name).exists():
          name += '+'
        source.rename(aside / name)
        logging.warning(
          'Moved damaged checkpoint %s to %s', source, aside / name
        )
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('bertjax:damaged_steps_moved')
    self._manager.reload()

  def close(self) -> None:
    """Waits for pending saves to be committed; closes the managers."""
    for manager in (self._manager, self._best):
      if manager is not None:
        with self._saving(None, manager):
          manager.wait_until_finished()
          manager.close()


class Preemption:
  """Turns SIGTERM (from Cloud TPU, SLURM or `launch.tpu_vm stop`, before
  they take a machine back) into a save and stop after the current step.

  With several processes the signal may reach one, or each at another step,
  and a process that stopped alone would leave the others waiting in
  collectives for ever: JAX's preemption service (started by
  `jax.distributed.initialize`, which then holds SIGTERM) picks one step
  for all to stop after.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._shared = jax.process_count() > 1

  def __enter__(self) -> 'Preemption':
    if self._shared:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread (e.g. inside a test runner).
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: finishing this step, saving, exiting.')
    self.requested = True

  def stop_after(self, step: int) -> bool:
    """Whether to save and stop after `step`; every process asks at every
    step, and with several they all get the same answer."""
    if self._shared:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def keep_tokenizer(workdir: str, path: str) -> str:
  """Copies a run's tokenizer file into `<workdir>/tokenizer/` (process 0,
  once), so that a moved workdir still has it, and returns the
  workdir-relative name that checkpoints record."""
  source = epath.Path(path)
  if source.is_dir():  # A model directory: its WordPiece vocabulary.
    source = source / 'vocab.txt'
  name = f'{TOKENIZER_DIR}/{source.name}'
  target = epath.Path(workdir) / name
  if jax.process_index() == 0 and not (
    target.exists() and target.read_bytes() == source.read_bytes()
  ):
    if files.is_local(os.fspath(target)):
      with files.replacing_path(os.fspath(target)) as tmp:
        shutil.copyfile(os.fspath(source), tmp)
    else:
      target.parent.mkdir(parents=True, exist_ok=True)
      source.copy(target, overwrite=True)
  return name


def tokenizer_of(step: 'Step') -> str | None:
  """The tokenizer file a step records, inside its workdir (None when it
  records none, or the file is gone); `CheckpointError` for a name that
  leads out of the workdir."""
  recorded = step.meta.get('tokenizer')
  if not recorded:
    return None
  if os.path.isabs(recorded) or not files.is_local(recorded):
    path = recorded  # Recorded by bertjax before it kept a copy.
  else:
    run = os.path.dirname(os.path.abspath(step.directory))
    path = os.path.join(run, recorded)
    if os.path.commonpath([os.path.realpath(run), os.path.realpath(path)]) != (
      os.path.realpath(run)
    ):
      raise CheckpointError(
        f'{step.path}: its tokenizer {recorded!r} is outside the workdir'
      )
  if files.is_local(path) and not os.path.isfile(path):
    logging.warning('%s: its tokenizer %s is gone', step.path, path)
    return None
  return path


@dataclasses.dataclass(frozen=True)
class Step:
  """One complete checkpoint step of a run, and what it recorded."""

  directory: str  # the run's checkpoints/ directory
  step: int
  meta: dict[str, Any]

  @property
  def path(self) -> str:
    return os.path.join(self.directory, str(self.step))


def checkpoints_of(path: str) -> tuple[str, int | None] | None:
  """(checkpoints directory, step or None for the newest) when `path` is a
  training workdir (its `best/` when it has one, else `checkpoints/`), one
  of those directories or one step in them; None otherwise."""
  path = _absolute(path)
  for name in (BEST_DIR, CHECKPOINTS_DIR):
    if (path / name).is_dir() and any((path / name).iterdir()):
      return os.fspath(path / name), None
  if (path / CHECKPOINTS_DIR).is_dir():
    return os.fspath(path / CHECKPOINTS_DIR), None
  if path.name in (BEST_DIR, CHECKPOINTS_DIR) and path.is_dir():
    return os.fspath(path), None
  # A step that is not there (yet) still names its run: the error can say
  # which steps are.
  if path.name.isdigit() and path.parent.name in (BEST_DIR, CHECKPOINTS_DIR):
    if path.parent.is_dir():
      return os.fspath(path.parent), int(path.name)
  return None


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(read_only=True, create=False),
    item_handlers={
      'state': ocp.PyTreeCheckpointHandler(),
      'meta': ocp.JsonCheckpointHandler(),
    },
  )


def find_step(path: str) -> Step:
  """The complete step `path` names (for a workdir, its newest step whose
  record of the run reads; see `use_newest`)."""
  return use_newest(path, lambda step: step)


def use_newest(path: str, use: Callable[[Step], _T]) -> _T:
  """`use(step)` on the step `path` names, or for a workdir (or its
  `checkpoints/`, `best/`) on its newest step that works: a step whose
  files are damaged (`use` or reading its record raises `CheckpointError`)
  is skipped with a warning; if none works, `CheckpointError` gives every
  step's reason."""
  found = checkpoints_of(path)
  if found is None:
    raise CheckpointError(f'{path}: not a training workdir or checkpoint step')
  directory, step = found
  with _read_only_manager(directory) as manager:
    steps = manager.all_steps()
  if step is None:
    if not steps:
      raise CheckpointError(f'{path}: no complete training checkpoint')
    candidates = sorted(steps, reverse=True)
  elif step in steps:
    candidates = [step]
  else:
    raise CheckpointError(
      f'{path}: step {step} is not a complete checkpoint (complete: '
      f'{sorted(steps) or "none"})'
    )
  reasons = []
  for candidate in candidates:
    try:
      return use(_read_step(directory, candidate))
    except CheckpointError as e:
      if step is not None:
        raise
      logging.warning('%s; trying the step before it', e)
      reasons.append(str(e))
  raise CheckpointError(f'{path}: no step restores: {"; ".join(reasons)}')


def _read_step(directory: str, step: int) -> Step:
  with _read_only_manager(directory) as manager:
    try:
      meta = manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
      ).meta
    except Exception as e:  # noqa: BLE001 - Orbax raises bare Exceptions.
      raise CheckpointError(
        f'{os.path.join(directory, str(step))}: not a readable training '
        f'checkpoint ({_first_line(e)})'
      ) from e
  return Step(directory, step, meta if isinstance(meta, dict) else {})


def restore_params(step: Step, target: Any) -> Any:
  """Reads only the params of a step (Orbax partial restore, no optimizer
  state) onto `target`, a tree of `jax.ShapeDtypeStruct`s with shardings;
  `CheckpointError` when they do not restore as `target`."""
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with _read_only_manager(step.directory) as manager:
    try:
      restored = manager.restore(
        step.step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
            item={'params': target},
            restore_args={'params': restore_args},
            partial_restore=True,
          )
        ),
      )
    except Exception as e:  # noqa: BLE001 - Orbax raises bare Exceptions.
      raise CheckpointError(
        f'{step.path}: its params do not restore as the recorded model '
        f'({_first_line(e)})'
      ) from e
  return restored.state['params']


@functools.cache
def _drop_orbax_read_echoes() -> None:
  """Keeps a failed restore's error from being printed again, many times.

  Orbax's per-array read coroutine turns any exception (`GeneratorExit`
  included) into a new one, so the reads still pending when one failed
  each raise again when the garbage collector closes them, and Python
  prints every one as "Exception ignored in <coroutine ...>", long after
  the damaged step was reported and skipped. Those, and only those, are
  dropped. Installed when this module is imported, so that every Orbax
  restore in bertjax (here and in `pretrained`, which imports this) is
  covered without a call at each place that catches a failed one.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    name = getattr(unraisable.object, '__qualname__', '')
    if name != '_read_array_index_and_device_put':
      previous(unraisable)

  sys.unraisablehook = hook


_drop_orbax_read_echoes()


def _first_line(error: Exception) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


class _JsonlWriter:
  """Appends each `write_scalars` to `metrics.jsonl` as one JSON object: a
  clu `MetricWriter` by its methods only, as clu loads TensorFlow, which
  model conversion does not need."""

  def __init__(self, path: epath.Path):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step)}
    for name, value in scalars.items():
      value = float(value)
      # JSON has no NaN/Inf; null keeps the line parseable.
      record[name] = value if math.isfinite(value) else None
    with self._path.open('a') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')

  # What else clu writes has no place in a file of scalars.
  def _ignore(self, *args, **kwargs) -> None:
    del args, kwargs

  write_summaries = write_images = write_videos = write_audios = _ignore
  write_texts = write_histograms = write_hparams = flush = close = _ignore


def create_metric_writer(workdir: str, is_writer: bool) -> Any:
  """A clu `MetricWriter` to the log, TensorBoard (`tb/`) and
  `metrics.jsonl`; on processes other than the writer (process 0), to the
  log only."""
  from clu import metric_writers

  if not is_writer:
    return metric_writers.create_default_writer(
      just_logging=True, asynchronous=False
    )
  tensorboard = metric_writers.create_default_writer(
    os.path.join(workdir, 'tb'), asynchronous=False
  )
  jsonl = _JsonlWriter(epath.Path(workdir) / METRICS_FILE)
  return metric_writers.MultiWriter([tensorboard, jsonl])


def _parse_metrics(path: epath.Path) -> tuple[list[dict], int]:
  """(the whole records of a metrics file, the number of lines skipped)."""
  if not path.exists():
    return [], 0
  records, skipped = [], 0
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      int(record['step'])
    except (ValueError, TypeError, KeyError):
      # A kill in the middle of a write leaves a torn last line.
      logging.warning('%s:%d is not a whole record; skipped', path, number)
      skipped += 1
      continue
    records.append(record)
  return records, skipped


def read_metrics(workdir: str) -> list[dict]:
  """The records of `metrics.jsonl`, oldest first (torn lines skipped)."""
  return _parse_metrics(epath.Path(workdir) / METRICS_FILE)[0]


def rewind_metrics(workdir: str, step: int) -> None:
  """Makes `metrics.jsonl` end at `step`, the step a run resumes from, so
  that steps past it are not recorded twice; torn lines go too (the file
  is replaced whole)."""
  path = epath.Path(workdir) / METRICS_FILE
  records, skipped = _parse_metrics(path)
  kept = [r for r in records if r['step'] <= step]
  if len(kept) == len(records) and not skipped:
    return
  logging.info(
    'Resuming from step %d: dropped %d records past it from %s',
    step,
    len(records) - len(kept),
    path,
  )
  files.write_atomic(
    os.fspath(path), ''.join(json.dumps(r, sort_keys=True) + '\n' for r in kept)
  )


# Pretraining's curves: panel title -> metric names.
PRETRAINING_CURVES = {
  'loss': ('train/mlm_loss', 'train/nsp_loss', 'eval/mlm_loss'),
  'accuracy': ('train/mlm_accuracy', 'train/nsp_accuracy', 'eval/mlm_accuracy'),
}


def plot_learning_curves(
  workdir: str,
  baselines: Mapping[str, float] | None = None,
  curves: Mapping[str, Sequence[str]] = PRETRAINING_CURVES,
) -> str | None:
  """Draws the metrics `curves` names (two panels, by title) from
  `metrics.jsonl` into a PNG and returns its path (None when there is
  nothing to draw). `baselines` are horizontal reference lines on the
  second panel, e.g. the most-frequent-token MLM accuracy."""
  records = read_metrics(workdir)
  if not records:
    return None
  # Imported here: only the end of a run draws. A bare Figure, not pyplot:
  # it needs no backend, so a notebook's inline plots are left alone.
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 4))
  axes = fig.subplots(1, len(curves))
  for i, (ax, title) in enumerate(zip(axes, curves, strict=True)):
    for key in curves[title]:
      points = [(r['step'], r[key]) for r in records if r.get(key) is not None]
      if points:
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=key, marker='.' if 'eval' in key else '')
    if i == len(curves) - 1:
      for name, value in (baselines or {}).items():
        ax.axhline(value, linestyle='--', color='gray', label=name)
    ax.set_xlabel('step')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(workdir, CURVES_FILE)
  with files.replacing(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=100)
  logging.info('Learning curves: %s', path)
  return path
