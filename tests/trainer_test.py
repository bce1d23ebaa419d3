"""End-to-end tests of the pretraining loop on real English news.

The demo data (English news corpus, a WordPiece vocabulary trained on it,
NSP pair records) is prepared once into the shared cache by the first test
that needs it; later runs reuse it.
"""

import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bertjax import model, pretrained, sharding, train_step, trainer, workdir
from configs import bert_tiny
from data_pipeline import examples, pipeline, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A smaller vocabulary than the demo's 30k keeps the MLM head cheap here.
VOCAB = 8192


def _config(**changes):
  config = bert_tiny.get_config()
  with config.unlocked():
    config.data.demo_vocab_size = VOCAB
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.eval_steps = 4
    config.checkpoint_every_steps = 0
    config.batch_size = 16
    config.max_seq_length = 64
    config.data.max_predictions_per_seq = 10
    config.data.shuffle_buffer = 256
    for key, value in changes.items():
      node = config
      *parents, leaf = key.split('.')
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  return config


def _losses(path):
  return {
    r['step']: r['train/loss']
    for r in workdir.read_metrics(path)
    if 'train/loss' in r
  }


def _train_cmd(path, *flags):
  return [
    sys.executable,
    '-m',
    'bertjax.train',
    f'--config={ROOT}/configs/bert_tiny.py',
    f'--workdir={path}',
    f'--config.data.demo_vocab_size={VOCAB}',
    '--config.batch_size=16',
    '--config.max_seq_length=64',
    '--config.data.max_predictions_per_seq=10',
    '--config.data.shuffle_buffer=256',
    '--config.eval_every_steps=0',
    '--config.eval_steps=2',
    *flags,
  ]


def _env(devices=1):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
  config = _config()
  return records.prepare_data(
    config.data, config.max_seq_length, str(tmp_path_factory.mktemp('data'))
  )


@pytest.fixture(scope='module')
def learned(demo_notebook):
  """The tiny recipe after 300 steps on the demo corpus, as the demo
  notebook trains it (conftest.py): (its workdir, its last train and eval
  metrics, the most-frequent-token MLM accuracy)."""
  path = os.path.join(demo_notebook.workdir, 'pretrain')
  last = {}
  for record in workdir.read_metrics(path):
    last.update(record)
  return path, last, demo_notebook.summary['mlm_baseline']


@pytest.mark.network
class TrainingTest:
  @pytest.mark.slow
  def test_tiny_bert_learns_above_the_majority_baseline(
    self, learned, tmp_path
  ):
    path, result, baseline = learned
    assert 0.02 < baseline < 0.2
    # "Clearly above": 30% over always predicting the most frequent token
    # (measured: about 1.6x on train and eval at step 300).
    assert result['train/mlm_accuracy'] > 1.3 * baseline, result
    assert result['eval/mlm_accuracy'] > 1.3 * baseline, result
    metrics = workdir.read_metrics(path)
    first = next(r for r in metrics if 'train/mlm_loss' in r)
    # The first window (steps 1-50) averages near ln(vocab); 300 steps in
    # the loss is well below it.
    assert result['train/mlm_loss'] < first['train/mlm_loss'] - 1.0
    for key in (
      'train/loss',
      'train/nsp_accuracy',
      'train/learning_rate',
      'train/grad_norm',
      'train/param_norm',
      'perf/step_time_s',
      'perf/examples_per_s',
      'perf/tokens_per_s',
      'perf/tflops_per_device',
      'perf/data_wait_s',
    ):
      assert key in result, key
    assert os.path.exists(os.path.join(path, 'learning_curves.png'))
    assert any(
      name.startswith('events') for name in os.listdir(os.path.join(path, 'tb'))
    )

    # The workdir is a model: its params alone (no optimizer state) start
    # another run, as phase 2 starts from phase 1.
    config, params, tokenizer = pretrained.load(path)
    # Its tokenizer is the run's, kept inside the workdir.
    assert os.path.dirname(tokenizer) == os.path.join(path, 'tokenizer')
    with open(tokenizer, encoding='utf-8') as f:
      assert len(f.read().splitlines()) == config.vocab_size
    with ocp.StandardCheckpointer() as reader:
      saved = reader.restore(os.path.join(path, 'checkpoints', '300', 'state'))
    jax.tree.map(np.testing.assert_array_equal, params, saved['params'])
    phase_2 = tmp_path / 'phase_2'
    trainer.train_and_evaluate(
      _config(
        num_train_steps=1,
        # The notebook's data (the demo's vocabulary and length): cached.
        max_seq_length=128,
        **{
          'data.demo_vocab_size': config.vocab_size,
          'data.max_predictions_per_seq': 20,
          'model.init_from': path,
        },
      ),
      str(phase_2),
    )
    # Where the first run started near ln(vocab), this one starts trained.
    started = next(
      r for r in workdir.read_metrics(phase_2) if 'train/mlm_loss' in r
    )
    assert started['train/mlm_loss'] < first['train/mlm_loss'] - 1.0
    assert started['step'] == 1

  @pytest.mark.slow
  def test_the_learned_model_fills_masks_as_transformers_does(
    self, learned, tmp_path
  ):
    import transformers

    from bertjax import convert, fill_mask

    texts = [
      'The government said on [MASK] that it would cut taxes.',
      'Shares of the [MASK] rose 5 percent in [MASK] trading.',
      'He was born in [MASK].',
    ]
    lm = fill_mask.load(learned[0])
    ours = fill_mask.fill_mask(lm, texts, top_k=5)
    assert [len(x) for x in ours] == [1, 2, 1]
    convert.convert(learned[0], str(tmp_path / 'hf'), 'hf')
    pipe = transformers.pipeline('fill-mask', model=str(tmp_path / 'hf'))
    for text, per_mask in zip(texts, ours, strict=True):
      theirs = pipe(text, top_k=5)
      if len(per_mask) == 1:
        theirs = [theirs]
      for mine, ref in zip(per_mask, theirs, strict=True):
        assert [t['token'] for t in mine] == [t['token'] for t in ref]
        assert [t['token_str'] for t in mine] == [
          pipe.tokenizer.convert_ids_to_tokens(t['token']) for t in ref
        ]
        np.testing.assert_allclose(
          [t['score'] for t in mine], [t['score'] for t in ref], atol=1e-5
        )
    # 300 steps learn the frequent words: the likeliest fill is a real
    # word, not a special or noise, and well above uniform.
    assert ours[2][0][0]['score'] > 50 / lm.config.vocab_size
    assert ours[2][0][0]['token_str'] not in ('[UNK]', '[MASK]', '[PAD]')

  @pytest.mark.slow
  def test_resume_repeats_the_uninterrupted_losses(self, demo_data, tmp_path):
    del demo_data
    changes = {'num_train_steps': 6, 'optim.decay_steps': 6}
    straight = tmp_path / 'straight'
    trainer.train_and_evaluate(_config(**changes), str(straight))
    resumed = tmp_path / 'resumed'
    trainer.train_and_evaluate(
      _config(**{**changes, 'num_train_steps': 3}), str(resumed)
    )
    assert sorted(os.listdir(resumed / 'checkpoints')) == ['3']
    moved = tmp_path / 'moved'
    shutil.copytree(resumed, moved)
    trainer.train_and_evaluate(_config(**changes), str(resumed))
    expected = _losses(straight)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert _losses(resumed) == expected
    # Resumed onto another mesh (8 x 1 x 1 before): the first step after the
    # restore sees the same params and batch, so its loss agrees up to the
    # reduction order of the sharded matmuls; Adam's early steps amplify
    # such differences (measured: 5e-5 relative two steps later).
    trainer.train_and_evaluate(
      _config(**changes, **{'mesh.shape': (2, 2, 2)}), str(moved)
    )
    losses = _losses(moved)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(
      [losses[s] for s in range(1, 5)],
      [expected[s] for s in range(1, 5)],
      rtol=1e-6,
    )
    np.testing.assert_allclose(losses[6], expected[6], rtol=1e-3)

  def test_a_workdir_of_other_data_is_not_resumed(self, demo_data, tmp_path):
    del demo_data
    trainer.train_and_evaluate(_config(num_train_steps=1), str(tmp_path))
    other = _config(num_train_steps=2, **{'data.shuffle_buffer': 128})
    with pytest.raises(trainer.TrainingError, match='start afresh in another'):
      trainer.train_and_evaluate(other, str(tmp_path))
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']

  def test_packed_rows_train_and_resume_exactly(self, demo_data, tmp_path):
    del demo_data
    changes = {
      'num_train_steps': 4,
      'optim.decay_steps': 4,
      'data.packing': True,
      'data.max_examples_per_row': 4,
    }
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    result = trainer.train_and_evaluate(_config(**changes), str(straight))
    assert np.isfinite(result['train/loss'])
    trainer.train_and_evaluate(
      _config(**{**changes, 'num_train_steps': 2}), str(resumed)
    )
    trainer.train_and_evaluate(_config(**changes), str(resumed))
    expected = _losses(straight)
    assert sorted(expected) == [1, 2, 3, 4]
    assert _losses(resumed) == expected

  def test_gradient_accumulation_equals_the_big_batch(self, demo_data):
    del demo_data
    big, accumulated = (
      _run_one_step(_config(micro_batches=m), (-1, 1, 1)) for m in (1, 4)
    )
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, atol=2e-6, rtol=1e-5),
      big,
      accumulated,
    )

  def test_sharded_step_equals_single_device_step(self, demo_data):
    del demo_data
    config = _config()
    single = _run_one_step(config, (1, 1, 1), devices=jax.devices()[:1])
    sharded = _run_one_step(config, (2, 2, 2))
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, atol=2e-6, rtol=1e-5),
      single,
      sharded,
    )

  def test_step_compiles_from_abstract_shapes(self, demo_data):
    del demo_data
    config = _config()
    mesh = sharding.create_mesh((2, 2, 2))
    rules = sharding.default_logical_axis_rules()
    module = model.BertForPreTraining(trainer.get_model_config(config, VOCAB))
    tx, schedule = train_step.create_optimizer(config)
    state = train_step.abstract_train_state(module, tx, mesh, rules)
    batch = train_step.get_batch_shapes(64, 128, 20)
    batch_sharding = sharding.batch_sharding(mesh)
    batch = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
      for k, v in batch.items()
    }
    step = train_step.jit_train_step(
      train_step.Pretraining(module), schedule, micro_batches=2
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      compiled = step.lower(state, batch, jax.random.key(0)).compile()
    assert compiled.memory_analysis() is not None

  # Saving every step checks every step before its save; every 3 steps, the
  # loop checks a step while the next one runs.
  @pytest.mark.parametrize('every', [1, 3])
  def test_non_finite_step_stops_and_every_checkpoint_is_finite(
    self, demo_data, tmp_path, every
  ):
    del demo_data
    # Step 1 has a learning rate of 0 (warmup), step 2 one of 1e36: its
    # loss is finite (it is computed before the update) but the params it
    # leaves are not: the guard has to look at the update, not the loss.
    config = _config(
      num_train_steps=8,
      checkpoint_every_steps=every,
      keep_checkpoints=10,
      log_every_steps=0,  # only at the end: progress reports then too
      **{'optim.learning_rate': 1e38, 'optim.warmup_steps': 100},
    )
    with pytest.raises(trainer.TrainingError, match='non-finite step') as e:
      trainer.train_and_evaluate(config, str(tmp_path))
    failed = int(str(e.value).split('non-finite step ')[1].split(' ')[0])
    assert 1 < failed <= 8
    checkpoints = tmp_path / 'checkpoints'
    saved = (
      sorted(int(s) for s in os.listdir(checkpoints))
      if checkpoints.exists()
      else []
    )
    assert saved == list(range(every, failed, every))
    if saved:
      assert f'the last good checkpoint is step {saved[-1]}' in str(e.value)
    else:
      assert 'no checkpoint was saved before it' in str(e.value)
    for step in saved:
      state = ocp.PyTreeCheckpointer().restore(
        tmp_path / 'checkpoints' / str(step) / 'state'
      )
      for x in jax.tree.leaves(state['params']):
        assert np.isfinite(np.square(x.astype(np.float32)).sum()), step

  def test_skip_policy_goes_on(self, demo_data, tmp_path):
    del demo_data
    config = _config(
      num_train_steps=4,
      nan_policy='skip',
      **{'optim.learning_rate': 1e38, 'optim.warmup_steps': 0},
    )
    trainer.train_and_evaluate(config, str(tmp_path))
    records = [
      r for r in workdir.read_metrics(str(tmp_path)) if 'train/loss' in r
    ]
    assert [r['step'] for r in records] == [1, 2, 3, 4]
    # Every update would have blown the params up: all were dropped, so
    # the loss stays finite.
    assert [r['train/skipped_steps'] for r in records] == [1, 1, 1, 1]
    assert all(np.isfinite(r['train/loss']) for r in records)


def _first_batch(config):
  data = records.prepare_data(config.data, config.max_seq_length, '')
  it = pipeline.create_train_iterator(
    pipeline.PipelineConfig(
      train_file_patterns=data.train_patterns,
      tokenizer_path=data.tokenizer_path,
      per_host_batch_size=config.batch_size,
      max_seq_length=config.max_seq_length,
      mlm=examples.MaskingConfig(
        max_predictions_per_seq=config.data.max_predictions_per_seq
      ),
      seed=0,
    )
  )
  return next(it), data.vocab_size


def _run_one_step(config, mesh_shape, devices=None):
  """Params after two deterministic (dropout-free) steps on a real batch."""
  with config.unlocked():
    config.model.hidden_dropout_prob = 0.0
    config.model.attention_probs_dropout_prob = 0.0
    # Adam's update is about lr * sign(g) where |g| << eps: a gradient of
    # 1e-9 that float summation order flips in sign would move a parameter
    # by 2 * lr. With eps = 1 the update is about lr * g, so the comparison
    # measures the step's numerics, not the sign of noise.
    config.optim.eps = 1.0
  batch, vocab_size = _first_batch(config)
  mesh = sharding.create_mesh(mesh_shape, devices)
  rules = sharding.default_logical_axis_rules()
  module = model.BertForPreTraining(
    trainer.get_model_config(config, vocab_size)
  )
  tx, schedule = train_step.create_optimizer(config)
  state, shardings = train_step.create_train_state(
    module, tx, mesh, rules, jax.random.key(0)
  )
  step = train_step.jit_train_step(
    train_step.Pretraining(module), schedule, micro_batches=config.micro_batches
  )
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    global_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    # Warm up Adam's moments with two steps so the update is not just the
    # sign of the gradient.
    state, _ = step(state, global_batch, jax.random.key(1))
    state, metrics = step(state, global_batch, jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))
  return jax.device_get(state.params)


class ProcessTest:
  """The CLI as a user runs it: subprocesses, signals, several processes."""

  @pytest.mark.network
  @pytest.mark.slow
  def test_sigterm_saves_and_a_kill_9_run_restarts_to_the_end(
    self, demo_data, tmp_path
  ):
    del demo_data
    run = tmp_path / 'run'
    compiled = tmp_path / 'compiled'
    flags = [
      '--config.num_train_steps=400',
      '--config.log_every_steps=1',
      f'--compilation_cache_dir={compiled}',
    ]
    proc = subprocess.Popen(
      _train_cmd(run, *flags, '--config.checkpoint_every_steps=0'),
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
    )
    _wait_for(lambda: len(_losses(str(run))) >= 3, proc)
    if platform.libc_ver()[0] == 'glibc':
      # The command restarted itself (same pid) with huge pages for malloc.
      with open(f'/proc/{proc.pid}/environ', 'rb') as f:
        assert b'GLIBC_TUNABLES=glibc.malloc.hugetlb=1' in f.read().split(b'\0')
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    # Saved and stopped early: not 0 (done), not 2 (a user error).
    assert proc.returncode == 75, stderr.decode()[-2000:]
    saved = sorted(int(s) for s in os.listdir(run / 'checkpoints'))
    assert len(saved) == 1 and 3 <= saved[0] < 400
    assert stderr.decode().strip().splitlines()[-1] == (
      f'bertjax.train: preempted at step {saved[0]} of 400 (SIGTERM); step '
      f'{saved[0]} is saved in {run}: the same command resumes'
    )
    first_stop = saved[0]
    # The compiled train step was kept where the flag said, for the resume.
    assert any(compiled.iterdir())

    # Resume, then kill -9 once a new checkpoint is complete.
    proc = subprocess.Popen(
      _train_cmd(run, *flags, '--config.checkpoint_every_steps=5'),
      env=_env(),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    _wait_for(
      lambda: any(
        s.isdigit() and int(s) > first_stop
        for s in os.listdir(run / 'checkpoints')
      ),
      proc,
    )
    proc.kill()
    proc.wait()

    result = subprocess.run(
      _train_cmd(
        run,
        '--config.num_train_steps=40',
        '--config.checkpoint_every_steps=5',
        '--config.log_every_steps=1',
      )
      if first_stop < 40
      else _train_cmd(run, *flags, '--config.num_train_steps=400'),
      env=_env(),
      capture_output=True,
      text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'Resumed from step' in result.stderr
    losses = _losses(str(run))
    final = max(int(s) for s in os.listdir(run / 'checkpoints'))
    assert final == max(losses)

  @pytest.mark.network
  @pytest.mark.slow
  def test_two_processes_resume_a_one_process_run(self, demo_data, tmp_path):
    """A run saved by one process goes on in two (jax.distributed on
    127.0.0.1) exactly as it goes on in one: the same losses and params.

    With host_sharding=batch every process sees the global batches of a
    lone process, masks included, and the process with no input state of
    its own resumes from process 0's, at the saved position.
    """
    del demo_data
    flags = [
      '--config.log_every_steps=1',
      '--config.model.hidden_dropout_prob=0',
      '--config.model.attention_probs_dropout_prob=0',
      '--config.data.host_sharding=batch',
    ]
    one, two = tmp_path / 'one', tmp_path / 'two'
    half = subprocess.run(
      _train_cmd(one, *flags, '--config.num_train_steps=2'),
      env=_env(devices=4),
      capture_output=True,
      text=True,
    )
    assert half.returncode == 0, half.stderr[-2000:]
    shutil.copytree(one, two)
    flags.append('--config.num_train_steps=4')
    single = subprocess.Popen(
      _train_cmd(one, *flags),
      env=_env(devices=4),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    procs = _start_two_processes(two, 20000 + os.getpid() % 20000, *flags)
    outputs = [p.communicate(timeout=900)[1] for p in [single, *procs]]
    for p, err in zip([single, *procs], outputs, strict=True):
      assert p.returncode == 0, err[-3000:]
      assert 'Resumed from step 2' in err, err[-3000:]
    checksums = [_checksum(err) for err in outputs]
    np.testing.assert_array_equal(checksums[1], checksums[2])
    np.testing.assert_allclose(checksums[1], checksums[0], rtol=1e-5)
    losses_one, losses_two = _losses(str(one)), _losses(str(two))
    assert sorted(losses_one) == sorted(losses_two) == [1, 2, 3, 4]
    np.testing.assert_allclose(
      [losses_two[s] for s in (3, 4)],
      [losses_one[s] for s in (3, 4)],
      rtol=1e-5,
    )

  @pytest.mark.network
  @pytest.mark.slow
  def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(
    self, demo_data, tmp_path
  ):
    """A SIGTERM reaches one worker of a slice (or each at another step):
    the processes agree on a step, save it together and exit, instead of
    one saving alone while the other waits in the next step for ever."""
    del demo_data
    run = tmp_path / 'run'
    procs = _start_two_processes(
      run,
      20000 + (os.getpid() + 7919) % 20000,
      '--config.num_train_steps=400',
      '--config.log_every_steps=1',
      '--config.checkpoint_every_steps=0',
    )
    _wait_for(lambda: len(_losses(str(run))) >= 3, procs[0])
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=600)[1] for p in procs]
    saved = sorted(int(s) for s in os.listdir(run / 'checkpoints'))
    assert len(saved) == 1 and 3 <= saved[0] < 400, saved
    for p, err in zip(procs, outputs, strict=True):
      assert p.returncode == 75, err[-3000:]
      assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
          f'bertjax.train: preempted at step {saved[0]} of 400 (SIGTERM)'
        )
      ), err[-3000:]

  def test_bad_flag_is_one_line(self, tmp_path):
    result = subprocess.run(
      _train_cmd(
        tmp_path, '--config.batch_size=30', '--config.mesh.shape=(4,1,1)'
      ),
      env=_env(devices=4),
      capture_output=True,
      text=True,
    )
    assert result.returncode == 2
    # TensorFlow's start-up lines come first; ours is one line, the last.
    lines = [line for line in result.stderr.splitlines() if ': error: ' in line]
    assert len(lines) == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == lines[0]
    assert 'Traceback' not in result.stderr
    assert 'batch_size 30 is not divisible' in lines[0]

  def test_missing_config_file_is_one_line(self, tmp_path):
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'bertjax.train',
        '--config',
        'configs/nope.py:steps=3',
        f'--workdir={tmp_path}',
      ],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
      'bertjax.train: error: --config: configs/nope.py: no such file'
    )

  def test_an_unusable_compilation_cache_is_one_line(self, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    result = subprocess.run(
      _train_cmd(tmp_path / 'run', f'--compilation_cache_dir={blocker}/jax'),
      env=_env(),
      capture_output=True,
      text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
      f'bertjax.train: error: --compilation_cache_dir={blocker}/jax: Not a '
      'directory'
    )
    assert not (tmp_path / 'run').exists()


_RESTART_PROBE = """
import json, os, sys
from data_pipeline import cli
os.execve = lambda exe, argv, env: print(
  json.dumps([exe == sys.executable, argv == sys.orig_argv,
              env.get('GLIBC_TUNABLES')]))
cli.restart_with_malloc_huge_pages()
"""


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='a glibc tunable')
@pytest.mark.parametrize(
  'env, restart',
  [
    ({}, 'glibc.malloc.hugetlb=1'),
    (
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'},
      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1',
    ),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, None),
    ({'BERTJAX_MALLOC_HUGETLB': '0'}, None),
  ],
)
def test_the_command_restarts_once_with_huge_pages(env, restart):
  base = {
    k: v
    for k, v in os.environ.items()
    if k not in ('GLIBC_TUNABLES', 'BERTJAX_MALLOC_HUGETLB')
  }
  result = subprocess.run(
    [sys.executable, '-c', _RESTART_PROBE],
    env={**base, **env},
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  )
  lines = result.stdout.splitlines()
  if restart is None:
    assert not lines
  else:
    assert [json.loads(line) for line in lines] == [[True, True, restart]]


def _checksum(stderr):
  line = [line for line in stderr.splitlines() if 'params checksum' in line]
  assert line, stderr[-2000:]
  parts = dict(p.split('=') for p in line[-1].split('checksum ')[1].split())
  return np.array([float(parts['sum']), float(parts['sumsq'])])


def _start_two_processes(path, port, *flags):
  """Two processes of one run (jax.distributed on 127.0.0.1:`port`), two
  CPU devices each; stderr piped as text."""
  return [
    subprocess.Popen(
      _train_cmd(
        path,
        *flags,
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ),
      env=_env(devices=2),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _wait_for(condition, proc, timeout_s=600):
  start = time.monotonic()
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f'process ended early: {proc.returncode}')
    if time.monotonic() - start > timeout_s:
      proc.kill()
      raise AssertionError('condition not reached')
    time.sleep(0.5)


class ConfigErrorTest:
  @pytest.mark.parametrize(
    'changes,message',
    [
      ({'batch_size': 30}, 'not divisible by data-parallel size'),
      ({'batch_size': 16, 'micro_batches': 3}, 'micro_batches 3'),
      ({'mesh.shape': (3, 1, 1)}, 'needs 3 devices'),
      ({'max_seq_length': 1024}, 'max_position_embeddings'),
      ({'data.input_files': '/nonexistent/*.txt'}, 'no file matches'),
      ({'nan_policy': 'ignore'}, 'nan_policy'),
      ({'optim.name': 'sgd'}, 'optim.name'),
      ({'data.mask_token_prob': 0.5}, 'must sum to 1'),
      ({'data.host_sharding': 'rows'}, 'host_sharding'),
      ({'log_every_steps': -1}, 'log_every_steps must be >= 0'),
      ({'batch_size': -8}, 'batch_size must be >= 1, got -8'),
      ({'model.size': 'huge'}, 'huge'),
    ],
  )
  def test_bad_config_is_named(self, changes, message, tmp_path):
    with pytest.raises((ValueError, OSError), match=message):
      trainer.train_and_evaluate(_config(**changes), str(tmp_path / 'run'))
    # The run wrote nothing, so the workdir it created is gone.
    assert os.listdir(tmp_path) == []

  def test_a_failed_run_keeps_a_workdir_it_did_not_create(self, tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(ValueError, match='batch_size must be >= 1'):
      trainer.train_and_evaluate(_config(batch_size=-8), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [workdir.LOCK_FILE, 'notes.txt']

  def test_unwritable_workdir(self, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(workdir.WorkdirError, match='not writable'):
      trainer.train_and_evaluate(_config(), str(blocker / 'run'))
