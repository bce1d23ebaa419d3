"""Tests of bertjax.fill_mask. Its scores against transformers' fill-mask
pipeline on a trained model are in trainer_test (the learned fixture)."""

import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from bertjax import fill_mask, model, pretrained

REPO = __file__.rsplit('/tests/', 1)[0]
WORDS = ['the', 'cat', 'sat', 'on', 'mat', 'dog', 'ran', '.', '##s']


@pytest.fixture(scope='module')
def tiny_lm(tmp_path_factory):
  root = tmp_path_factory.mktemp('fill')
  vocab = root / 'vocab.txt'
  vocab.write_text(
    '\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *WORDS]) + '\n'
  )
  config = model.get_config(
    'tiny', vocab_size=14, max_position_embeddings=32, num_hidden_layers=1
  )
  params = nn.unbox(model.init_params(config, jax.random.key(3)))
  # Larger output biases make the distribution peaked, so ranks are clear.
  bias = np.linspace(-3, 3, 14).astype(np.float32)
  params['mlm_head']['output_bias'] = bias
  pretrained.save(str(root / 'model'), config, params, str(vocab))
  return str(root / 'model')


def test_scores_are_the_softmax_at_each_mask(tiny_lm):
  lm = fill_mask.load(tiny_lm)
  texts = ['the [MASK] sat on the mat.', '[MASK] dog ran on the [MASK].']
  out = fill_mask.fill_mask(lm, texts, top_k=3)
  assert [len(x) for x in out] == [1, 2]
  # The reference: every position's logits, the mask's row softmaxed.
  module = model.BertForPreTraining(lm.config)
  for text, per_mask in zip(texts, out, strict=True):
    ids = [
      lm.tokenizer.cls_id,
      *lm.tokenizer.encode(text),
      lm.tokenizer.sep_id,
    ]
    logits = module.apply({'params': lm.params}, np.array([ids]))
    probs = np.asarray(jax.nn.softmax(logits['mlm_logits'][0]))
    where = [i for i, t in enumerate(ids) if t == lm.tokenizer.mask_id]
    for position, tokens in zip(where, per_mask, strict=True):
      expected = np.argsort(-probs[position], kind='stable')[:3]
      assert [t['token'] for t in tokens] == expected.tolist()
      np.testing.assert_allclose(
        [t['score'] for t in tokens], probs[position][expected], atol=1e-6
      )
      assert [t['token_str'] for t in tokens] == lm.tokenizer.tokens(expected)
  # Batching does not change a text's predictions.
  alone = fill_mask.fill_mask(lm, texts[1], top_k=3, batch_size=1)
  np.testing.assert_allclose(
    [t['score'] for t in alone[0][1]],
    [t['score'] for t in out[1][1]],
    atol=1e-6,
  )


def test_bad_requests(tiny_lm):
  lm = fill_mask.load(tiny_lm)
  with pytest.raises(fill_mask.FillMaskError, match=r'text 2 has no \[MASK\]'):
    fill_mask.fill_mask(lm, ['the [MASK]', 'the cat'])
  with pytest.raises(fill_mask.FillMaskError, match='top_k=0 must be'):
    fill_mask.fill_mask(lm, ['the [MASK]'], top_k=0)
  with pytest.raises(fill_mask.FillMaskError, match='lies past max_seq_len'):
    fill_mask.fill_mask(lm, ['the cat sat [MASK]'], max_seq_length=4)
  # A mask inside the limit survives truncation of the rest.
  short = fill_mask.fill_mask(lm, ['the [MASK] sat on the mat'], 2, 4)
  assert len(short[0]) == 1


def _cli(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'bertjax.fill_mask', *flags],
    cwd=REPO,
    capture_output=True,
    text=True,
  )


def test_command_line(tiny_lm):
  result = _cli(f'--model={tiny_lm}', '--text=the [MASK] sat.', '--top_k=2')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert lines[0] == 'the [MASK] sat.'
  assert lines[1].startswith('  [MASK] 1: ') and lines[1].count(' | ') == 1
  missing = _cli(f'--model={tiny_lm}')
  assert missing.returncode == 2
  assert (
    missing.stderr.strip()
    .splitlines()[-1]
    .endswith('--text is required (one or more, with [MASK])')
  )


@pytest.mark.network
def test_a_model_without_a_masked_lm_head_is_refused():
  # all-MiniLM-L6-v2 is an encoder only: its head would be random.
  result = _cli('--model=all-minilm-l6-v2', '--text=a [MASK].')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-2000:]
  assert 'has no trained mlm_head' in lines[0]
  with pytest.raises(model.WeightsError, match='no trained mlm_head'):
    fill_mask.load('all-minilm-l6-v2')
