"""Tests of bertjax.hf and bertjax.google against transformers and TF."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from bertjax import google, hf, model, pretrained

VOCAB = 211
TOLERANCE = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _abstract_params(config):
  init = functools.partial(model.init_params, config)
  return nn.unbox(jax.eval_shape(init, jax.random.key(0)))


def _random_params(config, seed=0):
  """Random params of every shape `config` implies; LayerNorm scales near 1.

  Non-zero biases and non-unit scales catch mapping errors that the model's
  own init (zeros and ones) would hide.
  """
  rng = np.random.default_rng(seed)

  def draw(path, x):
    value = rng.normal(0.0, 0.05, x.shape)
    if path[-1].key == 'scale':
      value += 1.0
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, _abstract_params(config))


def _assert_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _batch(seed=0):
  """Padding, two segments and masked positions inside the real tokens."""
  rng = np.random.default_rng(seed)
  batch, seq_len = 4, 23
  lengths = np.array([23, 17, 9, 4])
  mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int64)
  ids = rng.integers(5, VOCAB, (batch, seq_len)) * mask
  split = lengths // 2
  segments = (np.arange(seq_len)[None] >= split[:, None]) * mask
  positions = np.stack(
    [rng.choice(n, 3, replace=False) for n in lengths]
  ).astype(np.int64)
  return ids, mask, segments, positions


def _max_diffs(config, params, torch_model):
  ids, mask, segments, positions = _batch()
  ours = model.BertForPreTraining(config).apply(
    {'params': params},
    jnp.asarray(ids),
    jnp.asarray(mask),
    jnp.asarray(segments),
    jnp.asarray(positions),
  )
  with torch.no_grad():
    theirs = torch_model(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      token_type_ids=torch.tensor(segments),
      output_hidden_states=True,
    )
    sequence = theirs.hidden_states[-1]
    pooled = torch_model.bert.pooler(sequence)
  real = mask.astype(bool)
  mlm = np.take_along_axis(
    theirs.prediction_logits.numpy(), positions[..., None], axis=1
  )

  def diff(a, b):
    return float(np.abs(np.asarray(a, np.float32) - b).max())

  return dict(
    sequence_output=diff(
      np.asarray(ours['sequence_output'])[real], sequence.numpy()[real]
    ),
    pooled_output=diff(ours['pooled_output'], pooled.numpy()),
    mlm_logits=diff(ours['mlm_logits'], mlm),
    nsp_logits=diff(ours['nsp_logits'], theirs.seq_relationship_logits.numpy()),
  )


@pytest.fixture(
  scope='module',
  params=[('tiny', True), ('mini', True), ('tiny', False)],
  ids=['tiny', 'mini', 'tiny_unscanned'],
)
def exported(request, tmp_path_factory):
  """Random bertjax params, saved by `hf.save` and loaded by transformers."""
  size, scan = request.param
  config = model.get_config(size, vocab_size=VOCAB, scan_layers=scan)
  params = _random_params(config)
  hf_dir = str(tmp_path_factory.mktemp(f'hf_{request.param_index}'))
  hf.save(hf_dir, config, params)
  torch_model, info = transformers.BertForPreTraining.from_pretrained(
    hf_dir, output_loading_info=True
  )
  torch_model.eval()
  return config, params, hf_dir, torch_model, info


class ParityTest:
  def test_writes_only_config_and_safetensors(self, exported):
    _, _, hf_dir, _, _ = exported
    assert sorted(os.listdir(hf_dir)) == ['config.json', 'model.safetensors']

  def test_transformers_loads_every_tensor(self, exported):
    *_, info = exported
    assert not info['missing_keys']
    assert not info['unexpected_keys']
    assert not info['mismatched_keys']
    assert not info['error_msgs']

  def test_outputs_match_transformers(self, exported):
    config, params, _, torch_model, _ = exported
    diffs = _max_diffs(config, params, torch_model)
    print(f'\nmax abs diff {config.hidden_size=} {config.scan_layers=}:')
    print(diffs)
    assert all(d < TOLERANCE for d in diffs.values()), diffs

  def test_round_trip_is_exact(self, exported):
    config, params, hf_dir, torch_model, _ = exported
    back, missing = hf.params_from_hf(hf.params_to_hf(params, config), config)
    assert not missing
    _assert_equal(back, params)
    # What transformers holds after loading is what we wrote.
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    back, missing = hf.params_from_hf(state, config)
    assert not missing
    _assert_equal(back, params)
    # And what hf reads back from the directory.
    assert hf.read_config(hf_dir) == config.replace(scan_layers=True)
    _assert_equal(hf.read_params(hf_dir, config), params)

  def test_reads_what_transformers_writes(self, exported, tmp_path):
    config, params, _, torch_model, _ = exported
    torch_model.save_pretrained(tmp_path)
    assert pretrained.detect_format(str(tmp_path)) == 'hf'
    loaded, back, tokenizer = pretrained.load(
      str(tmp_path), dict(scan_layers=config.scan_layers)
    )
    assert loaded == config
    assert tokenizer is None
    _assert_equal(back, params)


def _tiny(**overrides):
  return model.get_config('tiny', vocab_size=VOCAB, **overrides)


@pytest.fixture(scope='module')
def tiny_state():
  """A transformers-named state dict of random tiny params."""
  config = _tiny()
  params = _random_params(config, seed=1)
  return config, params, hf.params_to_hf(params, config)


@pytest.fixture(scope='module')
def initialised(tiny_state):
  """The tiny model's own init with key 7, boxed as it comes."""
  config, _, _ = tiny_state
  init_params = jax.jit(model.init_params, static_argnums=0)
  return init_params(config, jax.random.key(7))


class ConfigTest:
  def test_reads_what_transformers_writes(self):
    hf_config = transformers.BertConfig(
      vocab_size=VOCAB,
      hidden_size=64,
      num_hidden_layers=3,
      num_attention_heads=4,
      intermediate_size=100,
      hidden_act='gelu_new',
      max_position_embeddings=77,
      type_vocab_size=3,
      layer_norm_eps=1e-7,
    ).to_dict()
    config = hf.config_from_hf(hf_config)
    assert config == model.BertConfig(
      vocab_size=VOCAB,
      hidden_size=64,
      num_hidden_layers=3,
      num_attention_heads=4,
      intermediate_size=100,
      hidden_act='gelu_new',
      max_position_embeddings=77,
      type_vocab_size=3,
      layer_norm_eps=1e-7,
    )
    back = transformers.BertConfig(**hf.config_to_hf(config))
    for field in model.BertConfig.shared_fields():
      assert getattr(back, field) == getattr(config, field), field

  @pytest.mark.parametrize(
    'field,value,match',
    [
      ('model_type', 'roberta', "model_type 'roberta'"),
      ('position_embedding_type', 'relative_key', 'relative_key'),
      ('is_decoder', True, 'is_decoder'),
      ('hidden_act', 'tanh', 'hidden_act'),
      ('hidden_size', 129, 'not divisible'),
    ],
  )
  def test_rejects_what_bertjax_does_not_implement(self, field, value, match):
    hf_config = {**hf.config_to_hf(_tiny()), field: value}
    with pytest.raises(model.ConfigError, match=match):
      hf.config_from_hf(hf_config)

  def test_bad_config_file_is_named(self, tmp_path):
    path = tmp_path / 'config.json'
    path.write_text(json.dumps({**hf.config_to_hf(_tiny()), 'hidden_size': 0}))
    with pytest.raises(
      model.ConfigError, match=rf'{path}: hidden_size must be a positive'
    ):
      hf.read_config(str(tmp_path))
    path.write_text('{"vocab_size": ')
    with pytest.raises(ValueError, match=rf'{path}: not valid JSON'):
      hf.read_config(str(path))
    path.write_text('[]')
    with pytest.raises(ValueError, match=rf'{path}: expected a JSON object'):
      hf.read_config(str(path))


class StateDictTest:
  def test_bert_model_checkpoint_reports_missing_heads(
    self, tiny_state, initialised
  ):
    config, params, state = tiny_state
    # BertModel names: no `bert.` prefix, no `cls.` heads.
    bare = {
      k[len('bert.') :]: v for k, v in state.items() if k.startswith('bert.')
    }
    # And no pooler, as BertModel(add_pooling_layer=False) saves it.
    bare = {k: v for k, v in bare.items() if not k.startswith('pooler.')}
    back, missing = hf.params_from_hf(bare, config)
    assert missing == ['bert/pooler', 'mlm_head', 'nsp_head']
    assert missing == list(hf.HEADS)
    for key in ('embeddings', 'encoder'):
      _assert_equal(back['bert'][key], params['bert'][key])
    # The fresh heads follow the model's own init: truncated normal kernels
    # of initializer_range, zero biases, unit LayerNorm scales.
    fresh = {'pooler': back['bert']['pooler'], **back}
    for head in ('pooler', 'mlm_head', 'nsp_head'):
      for path, value in jax.tree_util.tree_leaves_with_path(fresh[head]):
        name = path[-1].key
        assert value.dtype == np.float32
        if name == 'kernel':
          std = config.initializer_range
          assert 0.7 * std < value.std() < 1.0 * std, (head, path)
          assert np.abs(value).max() <= 2 * std
        else:
          want = 1.0 if name == 'scale' else 0.0
          np.testing.assert_array_equal(value, want)
    # Exactly the heads of a full init with the same key.
    init = nn.unbox(initialised)
    back, _ = hf.params_from_hf(bare, config, rng=jax.random.key(7))
    _assert_equal(back['bert']['pooler'], init['bert']['pooler'])
    _assert_equal(back['mlm_head'], init['mlm_head'])
    _assert_equal(back['nsp_head'], init['nsp_head'])

  def test_fresh_heads_take_the_param_dtype(self, tiny_state):
    _, params, state = tiny_state
    config = _tiny(param_dtype='bfloat16', scan_layers=False)
    heads = ('cls.', 'bert.pooler.')
    bare = {k: v for k, v in state.items() if not k.startswith(heads)}
    back, missing = hf.params_from_hf(bare, config)
    assert missing == list(hf.HEADS)
    assert {x.dtype for x in jax.tree.leaves(back)} == {jnp.dtype('bfloat16')}
    model.check_params(back, config, 'params')
    np.testing.assert_array_equal(
      back['bert']['encoder']['layer_1']['output']['bias'],
      params['bert']['encoder']['layers']['output']['bias'][1].astype(
        jnp.bfloat16
      ),
    )

  def test_old_names_and_tied_decoder(self, tiny_state, caplog):
    config, params, state = tiny_state
    old = {}
    for name, value in state.items():
      name = name.replace('LayerNorm.weight', 'LayerNorm.gamma')
      old[name.replace('LayerNorm.bias', 'LayerNorm.beta')] = value
    old['cls.predictions.decoder.bias'] = old.pop('cls.predictions.bias')
    old['cls.predictions.decoder.weight'] = state[
      'bert.embeddings.word_embeddings.weight'
    ]
    old['bert.embeddings.position_ids'] = np.arange(512)[None]
    old['classifier.weight'] = np.zeros((3, 128), np.float32)
    back, missing = hf.params_from_hf(old, config)
    assert not missing
    _assert_equal(back, params)
    # Only the tensor bertjax has no place for is reported as ignored.
    assert 'classifier.weight' in caplog.text
    assert 'position_ids' not in caplog.text

  def test_untied_decoder_is_an_error(self, tiny_state):
    config, _, state = tiny_state
    untied = {
      **state,
      'cls.predictions.decoder.weight': np.zeros((VOCAB, 128), np.float32),
    }
    with pytest.raises(model.WeightsError, match='differs from the word emb'):
      hf.params_from_hf(untied, config)

  def test_shape_mismatch_names_the_tensor(self, tiny_state):
    config, _, state = tiny_state
    name = 'bert.encoder.layer.1.intermediate.dense.weight'
    bad = {**state, name: np.zeros((512, 127), np.float32)}
    with pytest.raises(
      model.WeightsError,
      match=rf'checkpoint: tensor {name} has shape \[512, 127\], expected '
      r'\[512, 128\] from the model config',
    ):
      hf.params_from_hf(bad, config)

  def test_missing_encoder_tensor_is_an_error(self, tiny_state):
    config, _, state = tiny_state
    name = 'bert.encoder.layer.1.output.dense.bias'
    with pytest.raises(model.WeightsError, match=rf'lacks 1 .*, e\.g\. {name}'):
      hf.params_from_hf({k: v for k, v in state.items() if k != name}, config)
    # A 3-layer config does not load a 2-layer checkpoint.
    with pytest.raises(model.WeightsError, match='layer.2.* with 3 layers'):
      hf.params_from_hf(state, _tiny(num_hidden_layers=3))

  def test_part_of_a_head_is_an_error(self, tiny_state):
    config, _, state = tiny_state
    bare = {k[len('bert.') :]: v for k, v in state.items() if 'pooler' not in k}
    bare['pooler.dense.weight'] = state['bert.pooler.dense.weight']
    # Named as the checkpoint names it.
    with pytest.raises(
      model.WeightsError, match=r'part of bert/pooler: lacks pooler\.dense\.b'
    ):
      hf.params_from_hf(bare, config)

  def test_params_that_do_not_fit_are_not_exported(self, tiny_state):
    config, params, _ = tiny_state
    with pytest.raises(
      model.WeightsError,
      match=r'layer_norm/bias has shape \[128\], expected \[64\]',
    ):
      hf.params_to_hf(params, _tiny(hidden_size=64))
    broken = {**params, 'nsp_head': {'kernel': params['nsp_head']['kernel']}}
    with pytest.raises(model.WeightsError, match='no parameter nsp_head/bias'):
      hf.params_to_hf(broken, config)

  def test_exports_boxed_params(self, tiny_state, initialised):
    config, _, _ = tiny_state
    state = hf.params_to_hf(initialised, config)
    back, _ = hf.params_from_hf(state, config)
    _assert_equal(back, nn.unbox(initialised))


class FilesTest:
  """Weight files other than one float32 model.safetensors."""

  def _write_config(self, path, config):
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(hf.config_to_hf(config), f)

  def test_bfloat16_safetensors(self, tiny_state, tmp_path):
    config, params, state = tiny_state
    self._write_config(tmp_path, config)
    bf16 = {k: v.astype(jnp.bfloat16) for k, v in state.items()}
    safetensors.numpy.save_file(bf16, tmp_path / 'model.safetensors')
    back = hf.read_params(str(tmp_path), config)
    want = jax.tree.map(
      lambda x: x.astype(jnp.bfloat16).astype(np.float32), params
    )
    _assert_equal(back, want)
    assert {x.dtype for x in jax.tree.leaves(back)} == {np.dtype('float32')}

  def test_saves_bfloat16_params(self, tiny_state, tmp_path):
    config, params, _ = tiny_state
    config = config.replace(param_dtype='bfloat16')
    # Cast to the config's param_dtype, the dtype config.json states.
    hf.save(str(tmp_path), config, params)
    assert hf.read_json(str(tmp_path / 'config.json'))['dtype'] == 'bfloat16'
    with safetensors.safe_open(tmp_path / 'model.safetensors', 'np') as f:
      assert {f.get_slice(n).get_dtype() for n in f.keys()} == {'BF16'}
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    # The stored dtype is not a model field: reading gives float32 unless
    # the caller asks otherwise.
    assert hf.read_config(str(tmp_path)) == config.replace(
      param_dtype='float32'
    )
    _, back, _ = pretrained.load(str(tmp_path), dict(param_dtype='bfloat16'))
    _assert_equal(back, params)

  def test_sharded_safetensors_and_vocab(self, tiny_state, tmp_path):
    config, params, state = tiny_state
    self._write_config(tmp_path, config)
    names = sorted(state)
    shards = {'a.safetensors': names[::2], 'b.safetensors': names[1::2]}
    weight_map = {}
    for shard, shard_names in shards.items():
      safetensors.numpy.save_file(
        {n: state[n] for n in shard_names}, tmp_path / shard
      )
      weight_map.update({n: shard for n in shard_names})
    with open(tmp_path / 'model.safetensors.index.json', 'w') as f:
      json.dump(dict(weight_map=weight_map), f)
    (tmp_path / 'vocab.txt').write_text('[PAD]\n')
    _, back, tokenizer = pretrained.load(str(tmp_path))
    assert tokenizer == str(tmp_path / 'vocab.txt')
    _assert_equal(back, params)

    os.remove(tmp_path / 'b.safetensors')
    with pytest.raises(
      model.WeightsError, match='b.safetensors: shard listed in model.safe'
    ):
      pretrained.load(str(tmp_path))

  def test_pytorch_bin(self, tiny_state, tmp_path):
    config, params, state = tiny_state
    self._write_config(tmp_path, config)
    torch.save(
      {k: torch.from_numpy(v) for k, v in state.items()},
      tmp_path / 'pytorch_model.bin',
    )
    _, back, _ = pretrained.load(str(tmp_path))
    _assert_equal(back, params)

  def test_pytorch_bin_is_read_weights_only(self, tiny_state, tmp_path):
    config, _, state = tiny_state
    self._write_config(tmp_path, config)
    # A pickle that would run code when unpickled without weights_only.
    marker = tmp_path / 'ran'
    torch.save(
      {'weights': state, 'payload': _RunsCode(str(marker))},
      tmp_path / 'pytorch_model.bin',
    )
    with pytest.raises(model.WeightsError, match='weights_only=True refuses'):
      hf.read_state_dict(str(tmp_path))
    assert not marker.exists()

  def test_damaged_weight_files(self, tiny_state, tmp_path):
    config, _, _ = tiny_state
    self._write_config(tmp_path, config)
    (tmp_path / 'pytorch_model.bin').write_bytes(b'not a zip file')
    with pytest.raises(model.WeightsError, match='pytorch_model.bin: not a'):
      pretrained.load(str(tmp_path))
    (tmp_path / 'model.safetensors').write_bytes(b'\x10' + bytes(7) + b'{')
    with pytest.raises(
      model.WeightsError, match='model.safetensors: not a readable safet'
    ):
      pretrained.load(str(tmp_path))

  def test_missing_files(self, tiny_state, tmp_path):
    config, _, _ = tiny_state
    with pytest.raises(FileNotFoundError, match='not a model directory'):
      pretrained.load(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r'config\.json: no such file'):
      hf.read_config(str(tmp_path))
    self._write_config(tmp_path, config)
    with pytest.raises(FileNotFoundError, match='no model.safetensors'):
      pretrained.load(str(tmp_path))


class _RunsCode:
  """Unpickling it creates a file (what a malicious checkpoint could do)."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


# Variable names of google-research/bert's modeling.py for our tiny config.
def _google_variables(state, num_layers):
  out = {
    'global_step': np.int64(1000),
    'cls/predictions/output_bias': state['cls.predictions.bias'],
    'cls/seq_relationship/output_weights': state['cls.seq_relationship.weight'],
    'cls/seq_relationship/output_bias': state['cls.seq_relationship.bias'],
  }
  names = {
    'bert/embeddings/word_embeddings': 'bert.embeddings.word_embeddings',
    'bert/embeddings/position_embeddings': (
      'bert.embeddings.position_embeddings'
    ),
    'bert/embeddings/token_type_embeddings': (
      'bert.embeddings.token_type_embeddings'
    ),
    'bert/pooler/dense/kernel': 'bert.pooler.dense.weight',
    'bert/pooler/dense/bias': 'bert.pooler.dense.bias',
    'cls/predictions/transform/dense/kernel': (
      'cls.predictions.transform.dense.weight'
    ),
    'cls/predictions/transform/dense/bias': (
      'cls.predictions.transform.dense.bias'
    ),
  }
  for scope in ('bert/embeddings', 'cls/predictions/transform'):
    hf_scope = scope.replace('/', '.')
    names[f'{scope}/LayerNorm/gamma'] = f'{hf_scope}.LayerNorm.weight'
    names[f'{scope}/LayerNorm/beta'] = f'{hf_scope}.LayerNorm.bias'
  for i in range(num_layers):
    tf, hf_layer = f'bert/encoder/layer_{i}', f'bert.encoder.layer.{i}'
    for part in (
      'attention/self/query',
      'attention/self/key',
      'attention/self/value',
      'attention/output/dense',
      'intermediate/dense',
      'output/dense',
    ):
      hf_part = f'{hf_layer}.{part.replace("/", ".")}'
      names[f'{tf}/{part}/kernel'] = f'{hf_part}.weight'
      names[f'{tf}/{part}/bias'] = f'{hf_part}.bias'
    for part in ('attention/output/LayerNorm', 'output/LayerNorm'):
      hf_part = f'{hf_layer}.{part.replace("/", ".")}'
      names[f'{tf}/{part}/gamma'] = f'{hf_part}.weight'
      names[f'{tf}/{part}/beta'] = f'{hf_part}.bias'
  for tf, hf_name in names.items():
    value = state[hf_name if hf_name in state else f'{hf_name}.weight']
    # TF dense kernels are [in, out].
    out[tf] = value.T if tf.endswith('kernel') else value
  # Adam slots that pretraining checkpoints carry and imports must skip.
  out['bert/pooler/dense/kernel/adam_m'] = np.ones((128, 128), np.float32)
  return out


class GoogleCheckpointTest:
  def test_reads_a_tf_v1_checkpoint(self, tiny_state, tmp_path):
    """Reads a real TF checkpoint written by TF's own v1 Saver."""
    tf = pytest.importorskip('tensorflow')
    config, params, state = tiny_state
    arrays = _google_variables(state, config.num_hidden_layers)
    prefix = str(tmp_path / 'bert_model.ckpt')
    variables = {n: tf.Variable(v) for n, v in arrays.items()}
    tf.compat.v1.train.Saver(var_list=variables).save(None, prefix)
    # Google's bert_config.json has no layer_norm_eps (BERT's is 1e-12).
    google_config = {
      k: v
      for k, v in hf.config_to_hf(config).items()
      if k in model.BertConfig.shared_fields() and k != 'layer_norm_eps'
    }
    with open(tmp_path / google.CONFIG_FILE, 'w') as f:
      json.dump(google_config, f)
    (tmp_path / 'vocab.txt').write_text('[PAD]\n')
    assert google.checkpoint_prefix(str(tmp_path)) == prefix
    assert pretrained.detect_format(str(tmp_path)) == 'google'
    assert pretrained.detect_format(prefix) == 'google'
    loaded, back, tokenizer = pretrained.load(prefix)
    assert loaded == config
    assert tokenizer == str(tmp_path / 'vocab.txt')
    _assert_equal(back, params)
    _, back, _ = pretrained.load(str(tmp_path), dict(scan_layers=False))
    assert 'layer_1' in back['bert']['encoder']

    os.remove(tmp_path / google.CONFIG_FILE)
    with pytest.raises(
      FileNotFoundError, match=r'/bert_config\.json: no such file'
    ):
      pretrained.load(prefix)

  def test_missing_checkpoint(self, tmp_path):
    assert google.checkpoint_prefix(str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match='no TF checkpoint'):
      google.read_params(str(tmp_path), _tiny())
    # The config of a directory is the one in it, checkpoint or not.
    model_dir = tmp_path / 'model'
    model_dir.mkdir()
    (tmp_path / google.CONFIG_FILE).write_text('{}')
    with open(model_dir / google.CONFIG_FILE, 'w') as f:
      json.dump(hf.config_to_hf(_tiny()), f)
    assert google.read_config(str(model_dir)) == _tiny()
    (tmp_path / 'bert_model.ckpt.index').write_bytes(b'')
    with pytest.raises(model.WeightsError, match='not a readable TF check'):
      google.read_params(str(tmp_path), _tiny())


@pytest.mark.parametrize('size', ['base', 'large'])
def test_parameter_counts_match_transformers(size):
  config = model.get_config(size)
  ours = sum(int(np.prod(s)) for s in model.param_shapes(config).values())
  with torch.device('meta'):
    theirs = transformers.BertForPreTraining(
      transformers.BertConfig(**hf.config_to_hf(config))
    )
  # parameters() counts the tied decoder weight and bias once.
  assert ours == sum(p.numel() for p in theirs.parameters())
  assert ours == {'base': 110_106_428, 'large': 336_226_108}[size]


def test_conversion_needs_neither_torch_nor_tensorflow(tiny_state, tmp_path):
  """Importing the model-loading modules pulls in neither torch nor
  TensorFlow, and converting a safetensors directory to bertjax and back
  works with both made unimportable."""
  config, params, _ = tiny_state
  hf.save(str(tmp_path / 'hf'), config, params)
  code = f"""
import sys
from bertjax import convert, embed, google, hf, pretrained
for name in ('torch', 'tensorflow'):
  assert name not in sys.modules, name + ' imported'
  sys.modules[name] = None  # Any later import of it fails.
assert convert.convert({str(tmp_path / 'hf')!r}, {str(tmp_path / 'b')!r}) \\
  == 'bertjax'
assert convert.convert({str(tmp_path / 'b')!r}, {str(tmp_path / 'h')!r}) \\
  == 'hf'
"""
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO)
  _assert_equal(hf.read_params(str(tmp_path / 'h'), config), params)
