"""Fault injection: what real clusters and real users do to a run.

Each test provokes one fault and checks what a user would: the exit code,
a one-line message that names the file, and that nothing already written
was lost or silently changed.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from bertjax import pretrained, trainer, workdir
from configs import bert_tiny
from data_pipeline import corpora, documents, files, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 2000


def _env():
  env = dict(os.environ)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '3'
  return env


def _train_cmd(workdir, *flags):
  return [
    sys.executable,
    '-m',
    'bertjax.train',
    f'--config={ROOT}/configs/bert_tiny.py',
    f'--workdir={workdir}',
    f'--config.data.demo_vocab_size={VOCAB}',
    '--config.batch_size=8',
    '--config.max_seq_length=64',
    '--config.data.max_predictions_per_seq=10',
    '--config.data.shuffle_buffer=64',
    '--config.eval_every_steps=0',
    '--config.eval_steps=1',
    *flags,
  ]


def _config(**changes):
  """The tiny recipe on the demo corpus, small enough for seconds a step."""
  config = bert_tiny.get_config()
  with config.unlocked():
    config.data.demo_vocab_size = VOCAB
    config.batch_size = 8
    config.max_seq_length = 64
    config.data.max_predictions_per_seq = 10
    config.data.shuffle_buffer = 64
    config.eval_every_steps = 0
    config.eval_steps = 1
    config.update(changes)
  return config


def _last_line(result) -> str:
  return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------
# Locks.

_HOLD = textwrap.dedent("""
  import sys, time
  from data_pipeline import files
  lock = files.Lock(sys.argv[1], 'the thing').acquire()
  print('held', flush=True)
  time.sleep(600)
""")


def _hold(path):
  """A process that takes the lock on `path` and keeps it."""
  holder = subprocess.Popen(
    [sys.executable, '-c', _HOLD, str(path)],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == 'held'
  return holder


def test_lock_refuses_a_second_holder_and_frees_with_a_killed_one(tmp_path):
  path = tmp_path / 'x.lock'
  holder = _hold(path)
  try:
    with pytest.raises(files.LockedError) as e:
      files.Lock(str(path), 'the thing').acquire()
    assert f'the thing is in use by pid {holder.pid} on ' in str(e.value)
  finally:
    holder.kill()
    holder.wait()
  # kill -9 leaves the file behind, and the lock free.
  with files.Lock(str(path), 'the thing'):
    assert json.loads(path.read_text())['pid'] == os.getpid()


def test_a_waiting_lock_gets_it_when_the_holder_dies(tmp_path):
  path = tmp_path / 'entry.lock'
  holder = _hold(path)
  try:
    subprocess.Popen(
      ['sh', '-c', f'sleep 2; kill -9 {holder.pid}'],
    )
    start = time.monotonic()
    with files.Lock(str(path), 'an entry', wait=True):
      waited = time.monotonic() - start
  finally:
    holder.kill()
    holder.wait()
  assert waited > 1


def test_replacing_keeps_the_old_file_when_the_writer_fails(tmp_path):
  path = tmp_path / 'out.txt'
  files.write_atomic(str(path), 'old\n')
  with pytest.raises(RuntimeError):
    with files.replacing(str(path)) as f:
      f.write('half of the new')
      raise RuntimeError('killed')
  assert path.read_text() == 'old\n'
  assert os.listdir(tmp_path) == ['out.txt']
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------
# Workdirs.


@pytest.mark.network
def test_relative_workdir_one_run_at_a_time_and_a_killed_runs_lock(
  tmp_path,
):
  """A run in a relative workdir holds it; a second run on it (by its
  absolute path) is refused in one line naming the holder; once the first
  is killed (-9), a third takes the workdir over, trains and saves."""
  first = subprocess.Popen(
    _train_cmd('rel_wd', '--config.num_train_steps=100000'),
    cwd=tmp_path,
    env=_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  lock = tmp_path / 'rel_wd' / '.lock'
  try:
    for _ in range(600):
      if lock.exists() and files.Lock(str(lock), '').holder():
        break
      assert first.poll() is None, 'the first run ended early'
      time.sleep(0.5)
    second = subprocess.run(
      _train_cmd(tmp_path / 'rel_wd', '--config.num_train_steps=2'),
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
    )
    assert second.returncode == 2, second.stderr[-3000:]
    assert _last_line(second).startswith(
      f'bertjax.train: error: workdir {tmp_path / "rel_wd"} is in use by '
      f'pid {first.pid} on '
    ), second.stderr[-3000:]
    assert first.poll() is None
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  third = subprocess.run(
    _train_cmd('rel_wd', '--config.num_train_steps=2'),
    cwd=tmp_path,
    env=_env(),
    capture_output=True,
    text=True,
  )
  assert third.returncode == 0, third.stderr[-3000:]
  assert os.listdir(tmp_path / 'rel_wd' / 'checkpoints') == ['2']
  steps = [
    json.loads(line)['step']
    for line in (tmp_path / 'rel_wd' / 'metrics.jsonl').read_text().splitlines()
  ]
  assert steps == sorted(steps) and steps[-1] == 2


_PREPARE = textwrap.dedent("""
  import json, sys
  from configs import bert_tiny
  from data_pipeline import records
  data = bert_tiny.get_config().data
  with data.unlocked():
    data.input_files = sys.argv[1]
    data.demo_vocab_size = 2000
    data.eval_fraction = 0.1
  prepared = records.prepare_data(data, 64, sys.argv[2])
  print(json.dumps([prepared.tokenizer_path, list(prepared.train_patterns)]))
""")


@pytest.mark.network
def test_two_first_preparations_of_one_cache_agree(tmp_path):
  """Two runs started at once on the same text and cache: the second waits
  for the first's vocabulary and records instead of racing it."""
  text = tmp_path / 'news.txt'
  text.write_text(
    '\n\n'.join(corpora.news_documents()[:200]) + '\n', encoding='utf-8'
  )
  cache = tmp_path / 'cache'
  runs = [
    subprocess.Popen(
      [sys.executable, '-c', _PREPARE, str(text), str(cache)],
      cwd=ROOT,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(2)
  ]
  outputs = [run.communicate() for run in runs]
  for run, (_, err) in zip(runs, outputs, strict=True):
    assert run.returncode == 0, err[-3000:]
  first, second = (json.loads(out.splitlines()[-1]) for out, _ in outputs)
  assert first == second
  stats = os.path.join(os.path.dirname(first[1][0]), 'stats.json')
  with open(stats, encoding='utf-8') as f:
    assert json.load(f)['examples'] > 0


@pytest.mark.network
def test_metrics_survive_a_torn_line_and_a_resume_from_an_older_step(
  four_steps, tmp_path
):
  """A run wrote step 4's metrics, then died mid-way through another write
  before step 4's checkpoint was committed. The resumed run skips the torn
  line, drops the records past the step it restores (2) and writes 3 and 4
  once, as they were."""
  config, source = four_steps
  run = tmp_path / 'run'
  shutil.copytree(source, run)
  before = workdir.read_metrics(str(run))
  shutil.rmtree(run / 'checkpoints' / '4')
  with open(run / workdir.METRICS_FILE, 'a', encoding='utf-8') as f:
    f.write('{"step": 5, "train/lo')
  (run / workdir.CURVES_FILE).unlink()
  trainer.train_and_evaluate(config, str(run))
  after = workdir.read_metrics(str(run))
  lines = (run / workdir.METRICS_FILE).read_text().splitlines()
  assert len(lines) == len(after) == len(before)
  assert [s for s, _ in _train_losses(run).items()] == [1, 2, 3, 4]
  assert _train_losses(run) == _train_losses(source)
  assert (run / workdir.CURVES_FILE).stat().st_size > 0


# ---------------------------------------------------------------------------
# Damaged checkpoints.


def _largest_file(directory):
  found = [p for p in directory.rglob('*') if p.is_file()]
  return max(found, key=lambda p: p.stat().st_size)


def _truncate_largest(step_dir):
  path = _largest_file(step_dir / 'state')
  with open(path, 'r+b') as f:
    f.truncate(path.stat().st_size // 2)


def _empty_newer_step(checkpoints):
  (checkpoints / '6').mkdir()
  return 6


def _damage_step_4(damage):
  def apply(checkpoints):
    damage(checkpoints / '4')
    return 4

  return apply


DAMAGE = {
  'truncated_state_file': _damage_step_4(_truncate_largest),
  'no_state_metadata': _damage_step_4(
    lambda step: (step / 'state' / '_METADATA').unlink()
  ),
  'no_iterator_index': _damage_step_4(
    lambda step: (step / 'data' / 'process_0' / 'iterator.index').unlink()
  ),
  'empty_step_directory': _empty_newer_step,
}


def _tree_checksums(directory):
  """{relative path: sha256} of every file under `directory`."""
  return {
    os.fspath(p.relative_to(directory)): hashlib.sha256(
      p.read_bytes()
    ).hexdigest()
    for p in sorted(directory.rglob('*'))
    if p.is_file()
  }


@pytest.fixture(scope='module')
def four_steps(tmp_path_factory):
  """A run of 4 steps with checkpoints at 2 and 4, and its config."""
  path = tmp_path_factory.mktemp('four')
  config = _config(
    num_train_steps=4,
    checkpoint_every_steps=2,
    keep_checkpoints=5,
    log_every_steps=1,
  )
  trainer.train_and_evaluate(config, str(path))
  return config, path


def _train_losses(path):
  return {
    r['step']: r['train/loss']
    for r in workdir.read_metrics(str(path))
    if 'train/loss' in r
  }


@pytest.mark.network
@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_a_damaged_newest_step_falls_back_to_the_one_before(
  four_steps, damage, tmp_path
):
  """A model loader and the restarted run both skip the damaged step; the
  run repeats the steps after the one it restores exactly, saves them
  anew, and keeps the damaged step, untouched, in damaged/."""
  config, source = four_steps
  run = tmp_path / 'run'
  shutil.copytree(source, run)
  step = DAMAGE[damage](run / 'checkpoints')
  damaged = _tree_checksums(run / 'checkpoints' / str(step))
  fallback = str(step - 2 if step == 4 else 4)
  kept = _tree_checksums(run / 'checkpoints' / fallback)
  # A loader reads only the params: it takes the newest step whose params
  # restore (step 4's may still, when the damage hit only the optimizer
  # state or the input position), and never a damaged read.
  params = pretrained.load(str(run))[1]
  assert any(
    jax.tree.all(jax.tree.map(np.array_equal, params, intact))
    for intact in (
      pretrained.load(str(source / 'checkpoints' / name))[1]
      for name in ('4', '2')
    )
  )
  trainer.train_and_evaluate(config, str(run))
  assert _train_losses(run) == _train_losses(source)
  assert sorted(os.listdir(run / 'checkpoints')) == ['2', '4']
  assert os.listdir(run / 'damaged') == [str(step)]
  assert _tree_checksums(run / 'damaged' / str(step)) == damaged
  assert _tree_checksums(run / 'checkpoints' / fallback) == kept


def test_the_echoes_of_a_failed_orbax_read_are_not_printed():
  """Orbax's read coroutine re-raises the `GeneratorExit` that closing it
  throws in, so each read pending at a failure is printed again ("Exception
  ignored in ...") when collected; after a failed restore only those are
  dropped."""
  script = textwrap.dedent(
    """
    import types
    from bertjax import workdir

    @types.coroutine
    def pending():
      yield

    async def _read_array_index_and_device_put():
      try:
        await pending()
      except BaseException as e:
        raise Exception('read failed') from e

    async def other():
      try:
        await pending()
      except BaseException as e:
        raise Exception('other failed') from e

    workdir._drop_orbax_read_echoes()
    for make in (_read_array_index_and_device_put, other):
      coroutine = make()
      coroutine.send(None)
      del coroutine  # Closed here, as the collector would.
    """
  )
  result = subprocess.run(
    [sys.executable, '-c', script], capture_output=True, text=True, env=_env()
  )
  assert result.returncode == 0, result.stderr
  assert result.stderr.count('Exception ignored') == 1
  assert 'other failed' in result.stderr
  assert 'read failed' not in result.stderr


# ---------------------------------------------------------------------------
# Disks that refuse writes.


def _can_mount() -> str:
  """'' where this process may mount a tmpfs in a private mount namespace
  (`unshare`), else why not."""
  try:
    result = subprocess.run(
      ['unshare', '-rm', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /mnt'],
      capture_output=True,
      text=True,
    )
  except FileNotFoundError:
    return 'no unshare command'
  return result.stderr.strip() if result.returncode else ''


_DISKS = textwrap.dedent("""
  set -u
  # $1: workdir; the rest: the training command before --workdir.
  wd=$1; shift
  sums() { find "$wd/checkpoints" -type f | sort | xargs sha256sum; }
  mkdir -p "$wd/checkpoints"
  # A disk with room for one checkpoint of the run (about 10 MiB).
  mount -t tmpfs -o size=16m tmpfs "$wd/checkpoints"
  "$@" --workdir="$wd" --config.num_train_steps=2 2>/dev/null
  echo "first=$?"
  sums > "$wd/before.txt"
  "$@" --workdir="$wd" --config.num_train_steps=4 2> "$wd/full.txt"
  echo "full=$?"
  sums > "$wd/after_full.txt"
  mount -o remount,ro "$wd/checkpoints"
  "$@" --workdir="$wd" --config.num_train_steps=6 2> "$wd/ro.txt"
  echo "read_only=$?"
  sums > "$wd/after_ro.txt"
""")


@pytest.mark.network
def test_a_full_or_read_only_disk_stops_the_run_in_one_line(tmp_path):
  """Each refused save ends the run at once with exit 2 and one line that
  names the directory; the step already saved is kept, byte for byte."""
  reason = _can_mount()
  if reason:
    pytest.skip(f'cannot mount a tmpfs here: {reason}')
  wd = tmp_path / 'wd'
  command = _train_cmd('unused')
  command.remove('--workdir=unused')
  result = subprocess.run(
    ['unshare', '-rm', 'sh', '-c', _DISKS, 'sh', str(wd), *command],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
  )
  status = dict(line.split('=') for line in result.stdout.split())
  assert status == {'first': '0', 'full': '2', 'read_only': '2'}, result
  full = (wd / 'full.txt').read_text().strip().splitlines()
  assert full[-1].startswith(
    f'bertjax.train: error: not enough space to save step 4 in '
    f'{wd / "checkpoints"}: it needs about '
  ), full[-5:]
  read_only = (wd / 'ro.txt').read_text().strip().splitlines()
  assert read_only[-1] == (
    f'bertjax.train: error: cannot save step 6: {wd / "checkpoints"} is '
    'read-only'
  ), read_only[-5:]
  before = (wd / 'before.txt').read_text()
  assert '/checkpoints/2/' in before
  assert (wd / 'after_full.txt').read_text() == before
  assert (wd / 'after_ro.txt').read_text() == before
  assert not any(
    'Traceback' in (wd / n).read_text() for n in ('full.txt', 'ro.txt')
  )


# ---------------------------------------------------------------------------
# Inputs of the wrong kind.


@pytest.fixture(scope='module')
def news_records(tmp_path_factory):
  """Real text, and the TFRecords a run made of it (names: train-*)."""
  root = tmp_path_factory.mktemp('news')
  text = root / 'news.txt'
  text.write_text(
    '\n\n'.join(corpora.news_documents()[:200]) + '\n', encoding='utf-8'
  )
  data = bert_tiny.get_config().data
  with data.unlocked():
    data.input_files = str(text)
    data.demo_vocab_size = VOCAB
  prepared = records.prepare_data(data, 64, str(root / 'cache'))
  return text, prepared


def _data(**changes):
  data = bert_tiny.get_config().data
  with data.unlocked():
    data.update(changes)
  return data


@pytest.mark.network
def test_records_are_told_from_text_by_what_they_hold(news_records, tmp_path):
  text, prepared = news_records
  (shards,) = prepared.train_patterns
  # `train-*` says nothing about the kind; the bytes do.
  again = records.prepare_data(
    _data(input_files=shards, tokenizer=prepared.tokenizer_path),
    64,
    str(tmp_path),
  )
  assert again.train_patterns == (shards,)
  assert not os.listdir(tmp_path)  # Nothing was made of them as text.
  with pytest.raises(documents.InputError, match='mixes TFRecords') as e:
    records.prepare_data(
      _data(input_files=f'{shards},{text}', tokenizer=prepared.tokenizer_path),
      64,
      str(tmp_path),
    )
  assert str(text) in str(e.value)
  library = tmp_path / 'lib.so'
  shutil.copy(_a_shared_library(), library)
  with pytest.raises(documents.InputError, match='neither text nor TFRecords'):
    records.prepare_data(_data(input_files=str(library)), 64, str(tmp_path))


def _a_shared_library() -> str:
  import _ctypes

  return _ctypes.__file__


@pytest.mark.network
def test_a_killed_writers_unfinished_shard_is_not_an_input(
  news_records, tmp_path
):
  _, prepared = news_records
  shards = documents.expand_patterns(prepared.train_patterns)
  for shard in shards[:2]:
    shutil.copy(shard, tmp_path / os.path.basename(shard))
  torn = tmp_path / (os.path.basename(shards[2]) + '.incomplete')
  torn.write_bytes(open(shards[2], 'rb').read()[:1000])
  found = documents.expand_patterns(str(tmp_path / '*.tfrecord*'))
  assert [os.path.basename(p) for p in found] == [
    os.path.basename(s) for s in shards[:2]
  ]


def _create_cmd(inputs, out, vocab):
  return [
    sys.executable,
    '-m',
    'data_pipeline.create_pretraining_data',
    f'--input_files={inputs}',
    f'--output_dir={out}',
    f'--tokenizer={vocab}',
    '--max_seq_length=64',
  ]


def _empty_file(directory, shard):
  del shard
  (directory / 'empty.txt').touch()
  return directory / 'empty.txt'


@pytest.mark.network
@pytest.mark.parametrize(
  'make, message',
  [
    (lambda d, shard: _a_shared_library(), 'binary data, not UTF-8 text'),
    (lambda d, shard: shard, 'not text but TFRecords'),
    (_empty_file, 'no documents in'),
  ],
  ids=['shared_library', 'records', 'empty_file'],
)
def test_create_pretraining_data_refuses_what_is_not_text(
  news_records, tmp_path, make, message
):
  _, prepared = news_records
  shard = documents.expand_patterns(prepared.train_patterns)[0]
  source = make(tmp_path, shard)
  result = subprocess.run(
    _create_cmd(source, tmp_path / 'out', prepared.tokenizer_path),
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  last = _last_line(result)
  assert last.startswith('data_pipeline.create_pretraining_data: error: ')
  assert message in last and str(source) in last, last


# ---------------------------------------------------------------------------
# Exports.


def test_an_interrupted_hf_export_leaves_no_model_and_a_whole_one_is_readable(
  tmp_path, monkeypatch
):
  """The weights are written (whole) before `config.json`, so a directory
  with a config is a complete model; files get the mode `open` gives."""
  import flax.linen as nn
  import safetensors.numpy

  from bertjax import model

  config = model.get_config('tiny', vocab_size=128, max_position_embeddings=32)
  params = nn.unbox(model.init_params(config, jax.random.key(0)))

  def killed(tensors, path, metadata=None):
    with open(path, 'wb') as f:
      f.write(b'half of the weights')
    raise KeyboardInterrupt  # What a kill mid-write leaves undone.

  target = tmp_path / 'hf'
  monkeypatch.setattr(safetensors.numpy, 'save_file', killed)
  with pytest.raises(KeyboardInterrupt):
    pretrained.save(str(target), config, params, format='hf')
  assert os.listdir(target) == []
  monkeypatch.undo()
  pretrained.save(str(target), config, params, format='hf')
  assert sorted(os.listdir(target)) == ['config.json', 'model.safetensors']
  umask = os.umask(0)
  os.umask(umask)
  for name in os.listdir(target):
    assert (target / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
  loaded = pretrained.load(str(target))[1]
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded, params))


def test_a_sharded_index_cannot_point_outside_its_model(tmp_path):
  from bertjax import model

  outside = tmp_path / 'secret.safetensors'
  outside.write_bytes(b'not for a model to read')
  target = tmp_path / 'hf'
  target.mkdir()
  (target / 'config.json').write_text(
    json.dumps({'model_type': 'bert', 'vocab_size': 128}), encoding='utf-8'
  )
  (target / 'model.safetensors.index.json').write_text(
    json.dumps(
      {'weight_map': {'bert.pooler.dense.bias': '../secret.safetensors'}}
    ),
    encoding='utf-8',
  )
  with pytest.raises(model.WeightsError, match='lists a shard outside it'):
    pretrained.load(str(target))


# ---------------------------------------------------------------------------
# Which errors are the user's.


def test_user_errors_are_the_librarys_own_and_the_file_systems():
  import tensorflow as tf

  from bertjax import model, sharding
  from data_pipeline import cli, examples

  ours = [
    model.ConfigError('x'),
    workdir.CheckpointError('x'),
    sharding.MeshError('x'),
    examples.MaskingError('x'),
    cli.UsageError('x'),
    documents.InputError('x'),
    files.LockedError('x'),
  ]
  file_system = [
    FileNotFoundError(2, 'No such file', 'x'),
    PermissionError('x'),
    tf.errors.NotFoundError(None, None, 'x'),
    tf.errors.FailedPreconditionError(None, None, 'x is not a directory'),
  ]
  bugs = [
    ValueError('Dimension -8 must be >= 0'),  # What JAX said of batch -8.
    KeyError('params'),
    TypeError('x'),
    tf.errors.InvalidArgumentError(None, None, 'x'),
    Exception('x'),
  ]
  assert all(cli.is_user_error(e) for e in ours + file_system)
  assert not any(cli.is_user_error(e) for e in bugs)


# ---------------------------------------------------------------------------
# kill -9 at random points.


def _kill_after(command, delay_s, ready=None, env=None):
  """Starts `command`, waits until `ready()` (if given) then `delay_s`
  more, and kills it with SIGKILL (if it has not finished by then)."""
  proc = subprocess.Popen(
    command,
    cwd=ROOT,
    env=env or _env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    while ready is not None and not ready():
      assert proc.poll() is None, 'ended before it was ready'
      time.sleep(0.05)
    time.sleep(delay_s)
  finally:
    proc.kill()
    proc.wait()


@pytest.mark.network
def test_kill_9_mid_save_resumes_to_the_same_losses(four_steps, tmp_path):
  """Killed at a random moment while it saves every step, a run restarted
  with the same command ends with the losses of a run never killed (the
  fixture's, made in this process on the same 8 devices)."""
  _, reference = four_steps
  env = {**_env(), 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  run = tmp_path / 'run'
  checkpoints = run / 'checkpoints'
  command = _train_cmd(
    run,
    '--config.num_train_steps=4',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=1',
  )
  _kill_after(
    command,
    random.Random(0).uniform(0.0, 0.8),
    ready=lambda: checkpoints.is_dir() and '1' in os.listdir(checkpoints),
    env=env,
  )
  result = subprocess.run(
    command, cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert _train_losses(run) == _train_losses(reference)


@pytest.mark.network
def test_kill_9_during_create_pretraining_data_leaves_no_torn_shard(
  news_records, tmp_path
):
  """Killed at random moments, the tool leaves no shard that looks whole
  and is not; run again, it writes what an uninterrupted run writes."""
  text, prepared = news_records

  def create(out):
    return [
      *_create_cmd(text, out, prepared.tokenizer_path),
      '--num_shards=3',
      '--dupe_factor=2',
    ]

  reference = tmp_path / 'reference'
  assert subprocess.run(create(reference), cwd=ROOT, env=_env()).returncode == 0
  expected = _tree_checksums(reference)
  del expected['stats.json']  # It records the speed.
  out = tmp_path / 'out'
  for delay in random.Random(1).sample([x / 10 for x in range(5, 60)], 2):
    _kill_after(create(out), delay)
    if out.is_dir():
      for name, digest in _tree_checksums(out).items():
        if not name.endswith('.incomplete') and name != 'stats.json':
          assert digest == expected[name], (delay, name)
  assert subprocess.run(create(out), cwd=ROOT, env=_env()).returncode == 0
  written = _tree_checksums(out)
  del written['stats.json']
  assert written == expected


@pytest.mark.network
def test_kill_9_during_an_hf_export_leaves_a_whole_model_or_none(
  four_steps, tmp_path
):
  """A directory with config.json is the whole model; weights only ever
  appear whole."""
  _, source = four_steps

  def convert(target):
    return [
      sys.executable,
      '-m',
      'bertjax.convert',
      f'--from={source}',
      f'--to={target}',
      '--to_format=hf',
    ]

  complete = tmp_path / 'complete'
  assert subprocess.run(convert(complete), cwd=ROOT, env=_env()).returncode == 0
  weights = (complete / 'model.safetensors').read_bytes()
  expected = pretrained.load(str(complete))[1]
  for i, delay in enumerate(random.Random(2).sample([0.5, 1, 2, 3, 4, 6], 2)):
    target = tmp_path / f'killed{i}'
    _kill_after(convert(target), delay)
    if (target / 'model.safetensors').exists():
      assert (target / 'model.safetensors').read_bytes() == weights, delay
    if (target / 'config.json').exists():
      loaded = pretrained.load(str(target))[1]
      assert jax.tree.all(jax.tree.map(np.array_equal, loaded, expected))


def test_a_workdir_keeps_its_tokenizer_inside_it(four_steps, tmp_path):
  """Moved elsewhere, a workdir still has its tokenizer; a recorded name
  that leads out of it is refused."""
  _, source = four_steps
  moved = tmp_path / 'moved'
  shutil.copytree(source, moved)
  tokenizer = pretrained.load(str(moved))[2]
  assert os.path.dirname(tokenizer) == str(moved / 'tokenizer')
  for meta in (moved / 'checkpoints').glob('*/meta/metadata'):
    record = json.loads(meta.read_text())
    record['tokenizer'] = '../../../../etc/passwd'
    meta.write_text(json.dumps(record))
  with pytest.raises(workdir.CheckpointError, match='outside the workdir'):
    pretrained.load(str(moved))
