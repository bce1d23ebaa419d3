"""The fine-tuning heads against transformers' classes of the same names.

Random bertjax params are exported by `hf.save` to the matching class
(`BertForSequenceClassification`, `BertForTokenClassification`,
`BertForQuestionAnswering`), loaded by transformers, and both compute logits
on one padded two-segment batch: they agree within 1e-4 (float32).
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bertjax import hf, model

VOCAB = 211
TOLERANCE = 1e-4


def _random_params(config, head, seed=0):
  """Random params (non-zero biases, scales near 1) of every shape."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(
    lambda key: nn.unbox(model.init_params(config, key, head)),
    jax.random.key(0),
  )

  def draw(path, x):
    value = rng.normal(0.0, 0.05, x.shape)
    if path[-1].key == 'scale':
      value += 1.0
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _batch():
  rng = np.random.default_rng(1)
  lengths = np.array([19, 12, 5])
  seq_len = 19
  mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int64)
  ids = rng.integers(5, VOCAB, (3, seq_len)) * mask
  segments = (np.arange(seq_len)[None] >= (lengths // 2)[:, None]) * mask
  return ids, mask, segments


HEADS = {
  'classification': model.Head('sequence_classification', 3),
  'regression': model.Head('sequence_classification', 1),
  'tokens': model.Head('token_classification', 5),
  'qa': model.Head('question_answering'),
}


@pytest.mark.parametrize('scan', [True, False], ids=['scanned', 'unscanned'])
@pytest.mark.parametrize('name', list(HEADS))
def test_head_logits_equal_transformers(name, scan, tmp_path):
  head = HEADS[name]
  config = model.get_config('tiny', vocab_size=VOCAB, scan_layers=scan)
  params = _random_params(config, head)
  labels = [f'label_{i}' for i in range(head.num_labels)]
  hf.save(str(tmp_path), config, params, head, labels)
  with open(tmp_path / hf.CONFIG_FILE) as f:
    saved = json.load(f)
  cls = getattr(transformers, hf.ARCHITECTURES[head.kind])
  assert saved['architectures'] == [cls.__name__]
  theirs_model = cls.from_pretrained(str(tmp_path)).eval()
  ids, mask, segments = _batch()
  ours = model.create_model(config, head).apply(
    {'params': params},
    jnp.asarray(ids),
    jnp.asarray(mask),
    jnp.asarray(segments),
  )
  with torch.no_grad():
    theirs = theirs_model(
      input_ids=torch.tensor(ids),
      attention_mask=torch.tensor(mask),
      token_type_ids=torch.tensor(segments),
    )
  real = mask.astype(bool)
  if head.kind == 'question_answering':
    pairs = [
      (ours['start_logits'], theirs.start_logits),
      (ours['end_logits'], theirs.end_logits),
    ]
  else:
    pairs = [(ours['logits'], theirs.logits)]
  for a, b in pairs:
    a, b = np.asarray(a), b.numpy()
    if a.ndim > 1 and head.kind != 'sequence_classification':
      a, b = a[real], b[real]  # Padding positions are not outputs.
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=TOLERANCE, rtol=0)
  if head.kind == 'sequence_classification':
    assert theirs_model.config.num_labels == head.num_labels
    assert theirs_model.config.id2label[0] == 'label_0'
    expected = (
      'regression' if head.num_labels == 1 else 'single_label_classification'
    )
    assert theirs_model.config.problem_type == expected


def test_heads_without_pooler_have_no_pooler_params():
  config = model.get_config('tiny', vocab_size=VOCAB)
  for head in HEADS.values():
    names = model.param_shapes(config, head)
    has_pooler = any(n.startswith('bert/pooler') for n in names)
    assert has_pooler == (head.kind == 'sequence_classification'), head


def test_bad_head_is_one_line():
  with pytest.raises(model.ConfigError, match='head .* is not one of'):
    model.Head('ranking')
  with pytest.raises(model.ConfigError, match='num_labels must be >= 1'):
    model.Head('token_classification', 0)


def test_dropout_applies_only_when_training():
  config = model.get_config('tiny', vocab_size=VOCAB, hidden_dropout_prob=0.5)
  head = HEADS['classification']
  params = _random_params(config, head)
  module = model.create_model(config, head)
  ids, mask, segments = (jnp.asarray(x) for x in _batch())
  a = module.apply({'params': params}, ids, mask, segments)['logits']
  b = module.apply({'params': params}, ids, mask, segments)['logits']
  np.testing.assert_array_equal(a, b)
  c = module.apply(
    {'params': params},
    ids,
    mask,
    segments,
    deterministic=False,
    rngs={'dropout': jax.random.key(0)},
  )['logits']
  assert not np.allclose(a, c)
