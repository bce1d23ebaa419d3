"""Tests of bertjax.checkpoint and the bertjax.convert command line."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from bertjax import checkpoint, cli, convert, hf_convert, model

VOCAB = 211
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_params(config, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: rng.normal(0.0, 0.05, x.shape).astype(np.float32),
    hf_convert.abstract_params(config),
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
  checkpoint.save_model(model_dir, config, params, str(vocab))
  return model_dir, config, params


def _copy(model_dir, tmp_path):
  out = str(tmp_path / 'copy')
  shutil.copytree(model_dir, out)
  return out


class SaveLoadTest:
  def test_round_trip_is_exact(self, saved):
    model_dir, config, params = saved
    loaded, back, tokenizer = checkpoint.load_model(model_dir)
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
    checkpoint.save_model(str(tmp_path), config, params)
    loaded, back, tokenizer = checkpoint.load_model(str(tmp_path))
    assert (loaded, tokenizer) == (config, None)
    _assert_equal(back, params)

  def test_overrides(self, saved):
    model_dir, config, params = saved
    loaded, back, _ = checkpoint.load_model(
      model_dir,
      dict(scan_layers=False, param_dtype='bfloat16', dtype='bfloat16'),
    )
    assert loaded == config.replace(
      scan_layers=False, param_dtype='bfloat16', dtype='bfloat16'
    )
    assert {x.dtype for x in jax.tree.leaves(back)} == {jnp.dtype('bfloat16')}
    # Same tensors, unstacked: compare in the layout-free HF naming.
    want = hf_convert.params_to_hf(params, config)
    got = hf_convert.params_to_hf(back, loaded)
    assert got.keys() == want.keys()
    for name, value in want.items():
      np.testing.assert_array_equal(
        got[name], value.astype(jnp.bfloat16), err_msg=name
      )

  def test_restores_onto_shardings(self, saved):
    model_dir, config, params = saved
    mesh = jax.make_mesh((8,), ('data',))

    def sharding(path, x):
      # Shard the hidden axis of the embedding tables, replicate the rest.
      spec = (None, 'data') if path[-1].key == 'embedding' else ()
      return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

    shardings = jax.tree_util.tree_map_with_path(sharding, params)
    _, back, _ = checkpoint.load_model(model_dir, shardings=shardings)
    _assert_equal(back, params)
    for x, s in zip(jax.tree.leaves(back), jax.tree.leaves(shardings)):
      assert x.sharding == s
    table = back['bert']['embeddings']['word_embeddings']['embedding']
    assert table.addressable_shards[0].data.shape == (VOCAB, 128 // 8)

  def test_load_pretrained_reads_every_format(self, saved, tmp_path):
    model_dir, config, params = saved
    assert checkpoint.detect_format(model_dir) == 'bertjax'
    hf_dir = str(tmp_path / 'hf')
    assert convert.convert(model_dir, hf_dir, do_lower_case=False) == 'hf'
    assert checkpoint.detect_format(hf_dir) == 'hf'
    assert sorted(os.listdir(hf_dir)) == [
      'config.json',
      'model.safetensors',
      'tokenizer_config.json',
      'vocab.txt',
    ]
    assert hf_convert.read_do_lower_case(hf_dir) is False
    loaded, back, tokenizer = checkpoint.load_pretrained(hf_dir)
    assert loaded == config
    assert tokenizer == os.path.join(hf_dir, 'vocab.txt')
    _assert_equal(back, params)

  def test_load_pretrained_params_for_training(self, saved):
    model_dir, config, params = saved
    train_config = config.replace(scan_layers=False, hidden_dropout_prob=0.0)
    back = checkpoint.load_pretrained_params(model_dir, train_config)
    assert 'layer_1' in back['bert']['encoder']
    want = hf_convert.params_to_hf(params, config)
    got = hf_convert.params_to_hf(back, train_config)
    for name, value in want.items():
      np.testing.assert_array_equal(got[name], value, err_msg=name)
    with pytest.raises(
      cli.UserError, match=r"hidden_act 'gelu' \(config: 'relu'"
    ):
      checkpoint.load_pretrained_params(
        model_dir, config.replace(hidden_act='relu')
      )


class _PositionIterator:
  """A data iterator as TrainCheckpointer wants one: save/restore(prefix)."""

  def __init__(self, position=0):
    self.position = position

  def save(self, prefix):
    with open(prefix + '.json', 'w') as f:
      json.dump(self.position, f)

  def restore(self, prefix):
    with open(prefix + '.json') as f:
      self.position = json.load(f)


def _save_training_run(workdir, config, params, steps, **kwargs):
  """Training checkpoints whose params at step s are `params + s`."""
  ckpt = checkpoint.TrainCheckpointer(workdir, keep=5, **kwargs)
  for step in steps:
    shifted = jax.tree.map(lambda x, s=step: x + s, params)
    state = {'step': step, 'params': shifted, 'opt_state': {'mu': params}}
    ckpt.save(step, state, _PositionIterator(step))
  ckpt.wait()
  ckpt.close()


class TrainingWorkdirTest:
  def test_a_workdir_is_a_model(self, saved, tmp_path):
    model_dir, config, params = saved
    vocab = os.path.join(model_dir, 'vocab.txt')
    workdir = str(tmp_path / 'run')
    _save_training_run(
      workdir,
      config,
      params,
      [1, 2],
      model_config=config,
      tokenizer_path=vocab,
    )
    step_1 = os.path.join(workdir, 'checkpoints', '1')
    for path in (workdir, os.path.join(workdir, 'checkpoints'), step_1):
      assert checkpoint.detect_format(path) == 'training'
    loaded, back, tokenizer = checkpoint.load_pretrained(workdir)
    assert loaded == config and tokenizer == vocab
    _assert_equal(back, jax.tree.map(lambda x: x + 2, params))
    _, back, _ = checkpoint.load_pretrained(step_1)
    _assert_equal(back, jax.tree.map(lambda x: x + 1, params))
    # As phase 2 takes it: another layout and dropout, params only.
    unscanned = config.replace(scan_layers=False, hidden_dropout_prob=0.0)
    back = checkpoint.load_pretrained_params(step_1, unscanned)
    assert 'layer_1' in back['bert']['encoder']
    # And exported to a model directory.
    out = str(tmp_path / 'exported')
    assert convert.convert(workdir, out) == 'bertjax'
    _, back, tokenizer = checkpoint.load_model(out)
    _assert_equal(back, jax.tree.map(lambda x: x + 2, params))
    assert os.path.basename(tokenizer) == 'vocab.txt'

  def test_unusable_workdirs(self, saved, tmp_path):
    model_dir, config, params = saved
    old = str(tmp_path / 'old')
    _save_training_run(old, config, params, [3])
    with pytest.raises(cli.UserError, match='records no model config'):
      checkpoint.load_pretrained(old)
    # What a save interrupted before its commit leaves is not a step.
    os.makedirs(os.path.join(old, 'checkpoints', '4.orbax-checkpoint-tmp-9'))
    with pytest.raises(
      cli.UserError, match=r'step 4 is not a complete checkpoint.*\[3\]'
    ):
      checkpoint.load_training_params(os.path.join(old, 'checkpoints', '4'))
    # A step directory emptied by hand.
    os.makedirs(os.path.join(old, 'checkpoints', '6'))
    with pytest.raises(
      cli.UserError, match='6: not a readable training checkpoint'
    ):
      checkpoint.load_pretrained(old)
    empty = tmp_path / 'empty'
    (empty / 'checkpoints').mkdir(parents=True)
    with pytest.raises(cli.UserError, match='no complete training checkpoint'):
      checkpoint.load_pretrained(str(empty))
    gone = str(tmp_path / 'gone')
    vocab = tmp_path / 'vocab.txt'
    vocab.write_text('[PAD]\n')
    _save_training_run(
      gone,
      config,
      params,
      [1],
      model_config=config,
      tokenizer_path=str(vocab),
    )
    vocab.unlink()
    assert checkpoint.load_pretrained(gone)[2] is None


class ErrorsTest:
  def test_missing_files(self, saved, tmp_path):
    with pytest.raises(cli.UserError, match='nowhere: not a directory'):
      checkpoint.load_model(str(tmp_path / 'nowhere'))
    model_dir = _copy(saved[0], tmp_path)
    shutil.rmtree(os.path.join(model_dir, 'params'))
    with pytest.raises(cli.UserError, match=r'no params/ directory'):
      checkpoint.load_model(model_dir)
    with pytest.raises(cli.UserError, match=r'neither params/'):
      checkpoint.detect_format(model_dir)
    os.remove(os.path.join(model_dir, 'bert_config.json'))
    with pytest.raises(cli.UserError, match='no bert_config.json'):
      checkpoint.load_model(model_dir)

  def test_damaged_params(self, saved, tmp_path):
    model_dir = _copy(saved[0], tmp_path)
    params_dir = os.path.join(model_dir, 'params')
    for name in os.listdir(params_dir):
      path = os.path.join(params_dir, name)
      if os.path.isfile(path):
        os.remove(path)
    with pytest.raises(cli.UserError, match='not a readable Orbax'):
      checkpoint.load_model(model_dir)

  def test_config_that_does_not_fit_the_params(self, saved, tmp_path):
    model_dir = _copy(saved[0], tmp_path)
    path = os.path.join(model_dir, 'bert_config.json')
    with open(path) as f:
      values = json.load(f)
    with open(path, 'w') as f:
      json.dump({**values, 'intermediate_size': 256}, f)
    with pytest.raises(
      cli.UserError,
      match=r'intermediate/bias has shape \[2, 512\], expected \[2, 256\]',
    ):
      checkpoint.load_model(model_dir)
    with open(path, 'w') as f:
      json.dump({**values, 'hiden_size': 128}, f)
    with pytest.raises(cli.UserError, match='unknown BertConfig field.* hid'):
      checkpoint.load_model(model_dir)

  def test_bad_overrides_and_overwrites(self, saved):
    model_dir, config, params = saved
    with pytest.raises(cli.UserError, match='cannot override vocab_size'):
      checkpoint.load_model(model_dir, dict(vocab_size=VOCAB + 1))
    with pytest.raises(cli.UserError, match='remat_policy'):
      checkpoint.load_model(model_dir, dict(remat_policy='often'))
    with pytest.raises(cli.UserError, match='already holds a model'):
      checkpoint.save_model(model_dir, config, params)
    broken = {**params, 'nsp_head': {'kernel': params['nsp_head']['kernel']}}
    with pytest.raises(cli.UserError, match='no parameter nsp_head/bias'):
      checkpoint.save_model(model_dir + '_new', config, broken)


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
    for k, v in hf_convert.params_to_hf(params, config).items()
    if k.startswith('bert.')
  }
  safetensors.numpy.save_file(state, hf_dir / 'model.safetensors')
  with open(hf_dir / 'config.json', 'w') as f:
    json.dump(hf_convert.config_to_hf(config), f)
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
    ]
  )
  (rc, log), *failures = results
  assert rc == 0, log
  assert 'checkpoint has no mlm_head, nsp_head: initialised freshly' in log
  loaded, back, _ = checkpoint.load_model(out)
  assert loaded == config
  _assert_equal(back['bert'], params['bert'])

  wants = [
    r'tensor encoder.layer.1.attention.self.key.bias has shape \[64\], '
    r'expected \[128\]',
    r'has bert_config.json but neither params/',
    r'unknown BertConfig field\(s\) num_hiden_layers',
  ]
  for (rc, stderr), want in zip(failures, wants, strict=True):
    assert rc == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith('bertjax.convert: error: '), stderr
    assert re.search(want, lines[0]), stderr
