"""Tests of bertjax.pretrained (with bertjax.workdir's training checkpoints
as models) and the bertjax.convert command line."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from bertjax import convert, hf, model, pretrained, workdir

VOCAB = 211
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  init = functools.partial(model.init_params, config)
  return jax.tree.map(
    lambda x: rng.normal(0.0, 0.05, x.shape).astype(np.float32),
    nn.unbox(jax.eval_shape(init, jax.random.key(0))),
  )


def _assert_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _config(**overrides):
  return model.get_config('tiny', vocab_size=VOCAB, **overrides)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A tiny bertjax model directory with a vocabulary."""
  root = tmp_path_factory.mktemp('saved')
  config = _config()
  params = _random_params(config)
  vocab = root / 'my_vocab.txt'
  vocab.write_text('[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n')
  model_dir = str(root / 'model')
  pretrained.save(model_dir, config, params, str(vocab))
  return model_dir, config, params


def _copy(model_dir, tmp_path):
  out = str(tmp_path / 'copy')
  shutil.copytree(model_dir, out)
  return out


class SaveLoadTest:
  def test_round_trip_is_exact(self, saved):
    model_dir, config, params = saved
    assert pretrained.detect_format(model_dir) == 'bertjax'
    loaded, back, tokenizer = pretrained.load(model_dir)
    assert loaded == config
    _assert_equal(back, params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(back))
    assert tokenizer == os.path.join(model_dir, 'vocab.txt')
    with open(tokenizer) as f:
      assert f.read().split() == ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'hello']
    with open(os.path.join(model_dir, 'bert_config.json')) as f:
      assert json.load(f) == config.to_dict()

  def test_unscanned_round_trip(self, tmp_path):
    config = _config(scan_layers=False, num_hidden_layers=3)
    params = _random_params(config, seed=3)
    pretrained.save(str(tmp_path), config, params)
    loaded, back, tokenizer = pretrained.load(str(tmp_path))
    assert (loaded, tokenizer) == (config, None)
    _assert_equal(back, params)

  def test_overrides(self, saved):
    model_dir, config, params = saved
    loaded, back, _ = pretrained.load(
      model_dir,
      dict(scan_layers=False, param_dtype='bfloat16', dtype='bfloat16'),
    )
    assert loaded == config.replace(
      scan_layers=False, param_dtype='bfloat16', dtype='bfloat16'
    )
    assert {x.dtype for x in jax.tree.leaves(back)} == {jnp.dtype('bfloat16')}
    # Same tensors, unstacked: compare in the layout-free HF naming.
    want = hf.params_to_hf(params, config)
    got = hf.params_to_hf(back, loaded)
    assert got.keys() == want.keys()
    for name, value in want.items():
      np.testing.assert_array_equal(
        got[name], value.astype(jnp.bfloat16), err_msg=name
      )

  def test_overrides_cannot_change_shapes(self):
    with pytest.raises(model.ConfigError, match='cannot override vocab_size'):
      pretrained.apply_overrides(_config(), dict(vocab_size=5), 'x')
    assert pretrained.apply_overrides(
      _config(), dict(dtype='bfloat16', vocab_size=VOCAB), 'x'
    ) == _config(dtype='bfloat16')

  def test_restores_onto_shardings(self, saved):
    model_dir, config, params = saved
    mesh = jax.make_mesh((8,), ('data',))

    def sharding(path, x):
      # Shard the hidden axis of the embedding tables, replicate the rest.
      spec = (None, 'data') if path[-1].key == 'embedding' else ()
      return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

    shardings = jax.tree_util.tree_map_with_path(sharding, params)
    _, back, _ = pretrained.load(model_dir, shardings=shardings)
    _assert_equal(back, params)
    for x, s in zip(jax.tree.leaves(back), jax.tree.leaves(shardings)):
      assert x.sharding == s
    table = back['bert']['embeddings']['word_embeddings']['embedding']
    assert table.addressable_shards[0].data.shape == (VOCAB, 128 // 8)
    # Onto another layout: restored, unstacked, then placed.
    unscanned = dict(scan_layers=False)
    _, want, _ = pretrained.load(model_dir, unscanned)
    shardings = jax.tree_util.tree_map_with_path(sharding, want)
    _, back, _ = pretrained.load(model_dir, unscanned, shardings)
    _assert_equal(back, want)
    for x, s in zip(jax.tree.leaves(back), jax.tree.leaves(shardings)):
      assert x.sharding == s

  def test_reads_every_format(self, saved, tmp_path):
    model_dir, config, params = saved
    hf_dir = str(tmp_path / 'hf')
    assert convert.convert(model_dir, hf_dir, do_lower_case=False) == 'hf'
    assert pretrained.detect_format(hf_dir) == 'hf'
    assert sorted(os.listdir(hf_dir)) == [
      'config.json',
      'model.safetensors',
      'tokenizer_config.json',
      'vocab.txt',
    ]
    assert hf.read_do_lower_case(hf_dir) is False
    loaded, back, tokenizer = pretrained.load(hf_dir)
    assert loaded == config
    assert tokenizer == os.path.join(hf_dir, 'vocab.txt')
    _assert_equal(back, params)
    # Back to bertjax (the default for a foreign source), and the
    # tokenizer's casing travels from tokenizer_config.json to hf again.
    again = str(tmp_path / 'again')
    assert convert.convert(hf_dir, again) == 'bertjax'
    assert convert.convert(again, str(tmp_path / 'hf2')) == 'hf'
    assert hf.read_do_lower_case(str(tmp_path / 'hf2')) is None
    assert convert.convert(hf_dir, str(tmp_path / 'hf3'), 'hf') == 'hf'
    assert hf.read_do_lower_case(str(tmp_path / 'hf3')) is False
    _assert_equal(pretrained.load(str(tmp_path / 'hf3'))[1], params)

  def test_saves_hf_format(self, saved, tmp_path):
    _, config, params = saved
    out = str(tmp_path / 'hf')
    pretrained.save(out, config, params, format='hf', do_lower_case=True)
    assert sorted(os.listdir(out)) == [
      'config.json',
      'model.safetensors',
      'tokenizer_config.json',
    ]
    assert hf.read_do_lower_case(out) is True
    with pytest.raises(FileExistsError, match='already holds a model'):
      pretrained.save(out, config, params)
    with pytest.raises(ValueError, match="format 'onnx'"):
      pretrained.save(str(tmp_path / 'x'), config, params, format='onnx')

  def test_load_params_for_training(self, saved):
    model_dir, config, params = saved
    train_config = config.replace(scan_layers=False, hidden_dropout_prob=0.0)
    back = pretrained.load_params_for(model_dir, train_config)
    assert 'layer_1' in back['bert']['encoder']
    want = hf.params_to_hf(params, config)
    got = hf.params_to_hf(back, train_config)
    for name, value in want.items():
      np.testing.assert_array_equal(got[name], value, err_msg=name)
    with pytest.raises(
      model.ConfigError, match=r"hidden_act 'gelu' \(config: 'relu'"
    ):
      pretrained.load_params_for(model_dir, config.replace(hidden_act='relu'))


class ResolveTest:
  def test_paths_are_themselves(self, saved, tmp_path):
    model_dir = saved[0]
    assert pretrained.resolve(model_dir) == model_dir
    # A TF checkpoint prefix is not a file itself.
    (tmp_path / 'bert_model.ckpt.index').write_bytes(b'')
    prefix = str(tmp_path / 'bert_model.ckpt')
    assert pretrained.resolve(prefix) == prefix

  def test_unknown_model_name(self):
    assert 'all-minilm-l6-v2' in pretrained.PRESETS
    with pytest.raises(
      FileNotFoundError,
      match='all-minilm-l6-v3: no such directory.* not a '
      r'pretrained model name \(all-minilm-l6-v2\)',
    ):
      pretrained.resolve('all-minilm-l6-v3')


class _PositionIterator:
  """A data iterator as workdir.Checkpointer wants one: save/restore."""

  def __init__(self, position=0):
    self.position = position

  def save(self, prefix):
    with open(prefix + '.json', 'w') as f:
      json.dump(self.position, f)

  def restore(self, prefix):
    with open(prefix + '.json') as f:
      self.position = json.load(f)


def _save_training_run(run_dir, params, steps, meta):
  """Training checkpoints whose params at step s are `params + s`."""
  checkpointer = workdir.Checkpointer(run_dir, keep=5, meta=meta)
  for step in steps:
    shifted = jax.tree.map(lambda x, s=step: x + s, params)
    state = {'step': step, 'params': shifted, 'opt_state': {'mu': params}}
    checkpointer.save(step, state, _PositionIterator(step))
  checkpointer.close()


class TrainingWorkdirTest:
  def test_a_workdir_is_a_model(self, saved, tmp_path):
    model_dir, config, params = saved
    vocab = os.path.join(model_dir, 'vocab.txt')
    run_dir = str(tmp_path / 'run')
    meta = {'model': config.to_dict(), 'tokenizer': vocab}
    _save_training_run(run_dir, params, [1, 2], meta)
    checkpoints = os.path.join(run_dir, 'checkpoints')
    step_1 = os.path.join(checkpoints, '1')
    for path in (run_dir, checkpoints, step_1):
      assert pretrained.detect_format(path) == 'training'
    assert workdir.checkpoints_of(run_dir) == (checkpoints, None)
    assert workdir.checkpoints_of(step_1) == (checkpoints, 1)
    assert workdir.find_step(run_dir).step == 2
    loaded, back, tokenizer = pretrained.load(run_dir)
    assert loaded == config and tokenizer == vocab
    _assert_equal(back, jax.tree.map(lambda x: x + 2, params))
    _, back, _ = pretrained.load(step_1)
    _assert_equal(back, jax.tree.map(lambda x: x + 1, params))
    # As phase 2 takes it: another layout and dropout, params only.
    unscanned = config.replace(scan_layers=False, hidden_dropout_prob=0.0)
    back = pretrained.load_params_for(step_1, unscanned)
    assert 'layer_1' in back['bert']['encoder']
    np.testing.assert_array_equal(
      back['bert']['encoder']['layer_1']['output']['bias'],
      params['bert']['encoder']['layers']['output']['bias'][1] + 1,
    )
    # And exported to a model directory.
    out = str(tmp_path / 'exported')
    assert convert.convert(run_dir, out) == 'bertjax'
    _, back, tokenizer = pretrained.load(out)
    _assert_equal(back, jax.tree.map(lambda x: x + 2, params))
    assert os.path.basename(tokenizer) == 'vocab.txt'

  def test_unusable_workdirs(self, saved, tmp_path):
    model_dir, config, params = saved
    old = str(tmp_path / 'old')
    # An older run: no model config recorded.
    _save_training_run(old, params, [3], {'tokenizer': None})
    with pytest.raises(workdir.CheckpointError, match='records no model conf'):
      pretrained.load(old)
    # What a save interrupted before its commit leaves is not a step.
    os.makedirs(os.path.join(old, 'checkpoints', '4.orbax-checkpoint-tmp-9'))
    with pytest.raises(
      workdir.CheckpointError,
      match=r'step 4 is not a complete checkpoint \(complete: \[3\]\)',
    ):
      pretrained.load(os.path.join(old, 'checkpoints', '4'))
    # A step directory emptied by hand.
    os.makedirs(os.path.join(old, 'checkpoints', '6'))
    with pytest.raises(
      workdir.CheckpointError, match='6: not a readable training checkpoint'
    ):
      pretrained.load(old)
    empty = tmp_path / 'empty'
    (empty / 'checkpoints').mkdir(parents=True)
    with pytest.raises(
      workdir.CheckpointError, match='no complete training checkpoint'
    ):
      pretrained.load(str(empty))

  def test_tokenizer_gone(self, saved, tmp_path):
    _, config, params = saved
    gone = str(tmp_path / 'gone')
    vocab = tmp_path / 'vocab.txt'
    vocab.write_text('[PAD]\n')
    meta = {'model': config.to_dict(), 'tokenizer': str(vocab)}
    _save_training_run(gone, params, [1], meta)
    vocab.unlink()
    loaded, back, tokenizer = pretrained.load(gone)
    assert tokenizer is None
    assert loaded == config
    _assert_equal(back, jax.tree.map(lambda x: x + 1, params))


class ErrorsTest:
  def test_missing_files(self, saved, tmp_path):
    with pytest.raises(
      FileNotFoundError, match='nowhere: no such model directory'
    ):
      pretrained.load(str(tmp_path / 'nowhere'))
    (tmp_path / 'weights.bin').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match='weights.bin: not a model'):
      pretrained.load(str(tmp_path / 'weights.bin'))
    model_dir = _copy(saved[0], tmp_path)
    # A save interrupted before its config was written.
    os.rename(
      os.path.join(model_dir, 'bert_config.json'), str(tmp_path / 'config')
    )
    with pytest.raises(
      FileNotFoundError, match=r'copy/bert_config\.json: no such file'
    ):
      pretrained.load(model_dir)
    os.rename(
      str(tmp_path / 'config'), os.path.join(model_dir, 'bert_config.json')
    )
    shutil.rmtree(os.path.join(model_dir, 'params'))
    with pytest.raises(FileNotFoundError, match=r'neither params/'):
      pretrained.detect_format(model_dir)
    with pytest.raises(FileNotFoundError, match=r'neither params/'):
      pretrained.load(model_dir)
    os.remove(os.path.join(model_dir, 'bert_config.json'))
    with pytest.raises(
      FileNotFoundError, match=r'not a model directory \(no bert_config.json'
    ):
      pretrained.load(model_dir)

  def test_damaged_params(self, saved, tmp_path):
    model_dir = _copy(saved[0], tmp_path)
    params_dir = os.path.join(model_dir, 'params')
    for name in os.listdir(params_dir):
      path = os.path.join(params_dir, name)
      if os.path.isfile(path):
        os.remove(path)
    with pytest.raises(model.WeightsError, match='not a readable Orbax'):
      pretrained.load(model_dir)

  def test_config_that_does_not_fit_the_params(self, saved, tmp_path):
    model_dir = _copy(saved[0], tmp_path)
    path = os.path.join(model_dir, 'bert_config.json')
    with open(path) as f:
      values = json.load(f)
    with open(path, 'w') as f:
      json.dump({**values, 'intermediate_size': 256}, f)
    with pytest.raises(
      model.WeightsError,
      match=r'params: parameter bert/encoder/layers/intermediate/bias has '
      r'shape \[2, 512\], expected \[2, 256\]',
    ):
      pretrained.load(model_dir)
    with open(path, 'w') as f:
      json.dump({**values, 'hiden_size': 128}, f)
    with pytest.raises(
      model.ConfigError,
      match=r'bert_config.json: unknown BertConfig field\(s\) hiden_size',
    ):
      pretrained.load(model_dir)

  def test_bad_overrides_and_overwrites(self, saved):
    model_dir, config, params = saved
    with pytest.raises(model.ConfigError, match='cannot override vocab_size'):
      pretrained.load(model_dir, dict(vocab_size=VOCAB + 1))
    with pytest.raises(model.ConfigError, match='remat_policy'):
      pretrained.load(model_dir, dict(remat_policy='often'))
    with pytest.raises(FileExistsError, match='already holds a model'):
      pretrained.save(model_dir, config, params)
    broken = {**params, 'nsp_head': {'kernel': params['nsp_head']['kernel']}}
    with pytest.raises(model.WeightsError, match='no parameter nsp_head/bias'):
      pretrained.save(model_dir + '_new', config, broken)
    with pytest.raises(ValueError, match='not a tokenizer file'):
      pretrained.save(model_dir + '_new', config, params, model_dir)


def _run_all(commands):
  """Runs command lines concurrently (each pays seconds of imports)."""
  procs = [
    subprocess.Popen(
      [sys.executable, '-m', *cmd],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for cmd in commands
  ]
  return [(p.wait(), p.stderr.read()) for p in procs]


def test_convert_command_line(saved, tmp_path):
  model_dir, config, params = saved
  # A BertModel-only HF checkpoint: no `bert.` prefix, no pretraining heads.
  hf_dir = tmp_path / 'hf'
  hf_dir.mkdir()
  state = {
    k[len('bert.') :]: v
    for k, v in hf.params_to_hf(params, config).items()
    if k.startswith('bert.')
  }
  safetensors.numpy.save_file(state, hf_dir / 'model.safetensors')
  with open(hf_dir / 'config.json', 'w') as f:
    json.dump(hf.config_to_hf(config), f)
  # The same with one tensor of the wrong shape.
  bad_dir = tmp_path / 'bad'
  shutil.copytree(hf_dir, bad_dir)
  state['encoder.layer.1.attention.self.key.bias'] = np.zeros(64, np.float32)
  safetensors.numpy.save_file(state, bad_dir / 'model.safetensors')
  # A bertjax directory whose params are gone.
  no_params = _copy(model_dir, tmp_path)
  shutil.rmtree(os.path.join(no_params, 'params'))
  # A bertjax directory whose config has a misspelt field.
  misspelt = str(tmp_path / 'misspelt')
  shutil.copytree(model_dir, misspelt)
  with open(os.path.join(misspelt, 'bert_config.json'), 'w') as f:
    json.dump({**config.to_dict(), 'num_hiden_layers': 2}, f)

  out = str(tmp_path / 'out')
  results = _run_all(
    [
      ['bertjax.convert', f'--from={hf_dir}', f'--to={out}'],
      ['bertjax.convert', f'--from={bad_dir}', f'--to={tmp_path / "o1"}'],
      ['bertjax.convert', f'--from={no_params}', f'--to={tmp_path / "o2"}'],
      ['bertjax.convert', f'--from={misspelt}', f'--to={tmp_path / "o3"}'],
      ['bertjax.convert', f'--from={model_dir}', f'--to={hf_dir}'],
    ]
  )
  (rc, log), *failures = results
  assert rc == 0, log
  assert 'checkpoint has no mlm_head, nsp_head: initialised freshly' in log
  loaded, back, _ = pretrained.load(out)
  assert loaded == config
  _assert_equal(back['bert'], params['bert'])

  wants = [
    r'checkpoint: tensor encoder.layer.1.attention.self.key.bias has shape '
    r'\[64\], expected \[128\] from the model config',
    r'has bert_config.json but neither params/',
    r'bert_config.json: unknown BertConfig field\(s\) num_hiden_layers',
    r'hf: exists and is not an empty directory',
  ]
  for (rc, stderr), want in zip(failures, wants, strict=True):
    assert rc == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith('bertjax.convert: error: '), stderr
    assert re.search(want, lines[0]), stderr
