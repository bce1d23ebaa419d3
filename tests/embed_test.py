"""Tests of bertjax.embed: the real all-MiniLM-L6-v2 against transformers."""

import functools
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from bertjax import embed, model, pretrained
from data_pipeline import corpora

import corpus_readers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4
# Shorter than the model's 512 positions so that the news texts below are
# truncated (and the test stays fast).
MAX_SEQ_LENGTH = 128


@pytest.fixture(scope='module')
def minilm_dir():
  return corpus_readers.minilm_dir()


@pytest.fixture(scope='module')
def texts():
  """Real sentences of mixed lengths: reviews, long news, blank, non-ASCII."""
  reviews = [t.text for t in corpus_readers.english_sentiment()[:24]]
  news = [d[:3000] for d in corpora.news_documents()[:2]]
  lines = [*reviews, *news, '', 'Ünïcödé café: “quotes”, 東京 and naïve ﬁ.']
  # One text per line in the command's input file.
  return [' '.join(t.split('\n')) for t in lines]


def _abstract_params(config):
  init = functools.partial(model.init_params, config)
  return nn.unbox(jax.eval_shape(init, jax.random.key(0)))


def _write(path, data):
  with open(path, 'wb') as f:
    f.write(data)
  return str(path)


@pytest.fixture(scope='module')
def tiny_dirs(tmp_path_factory):
  """Small bertjax models: one with a good vocab, one with a broken one."""
  root = tmp_path_factory.mktemp('tiny')
  words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'cat']
  vocab = _write(root / 'vocab.txt', '\n'.join(words).encode())
  config = model.get_config(
    'tiny', vocab_size=16, max_position_embeddings=64, num_hidden_layers=1
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda x: rng.normal(0, 0.05, x.shape).astype(np.float32),
    _abstract_params(config),
  )
  good = str(root / 'good')
  pretrained.save(good, config, params, vocab)
  broken = str(root / 'broken')
  pretrained.save(broken, config, params, vocab)
  _write(os.path.join(broken, 'vocab.txt'), b'\xff\xfe[PAD]\n')
  return good, broken


def _start(*flags):
  return subprocess.Popen(
    [sys.executable, '-m', 'bertjax.embed', *flags],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _stop(runs):
  for proc in runs.values():
    if proc.poll() is None:
      proc.kill()
      proc.wait()


@pytest.fixture(scope='module', autouse=True)
def failing_runs(tiny_dirs, tmp_path_factory):
  """Starts the command lines that must fail, at once, in the background.

  Each pays seconds of imports; they overlap with the in-process tests.
  """
  root = tmp_path_factory.mktemp('failing')
  input_file = _write(root / 'in.txt', b'the cat\n\ncat\n')
  good, broken = tiny_dirs
  out = f'--output={root / "x.npy"}'
  runs = dict(
    too_long=_start(
      f'--model={good}', f'--input={input_file}', out, '--max_seq_length=65'
    ),
    broken_vocab=_start(f'--model={broken}', f'--input={input_file}', out),
    unknown_model=_start(
      '--model=all-minilm-l6-v3', f'--input={input_file}', out
    ),
  )
  yield runs
  _stop(runs)


@pytest.fixture(scope='module')
def minilm_run(texts, tmp_path_factory):
  """The command line on the real MiniLM, in the background."""
  root = tmp_path_factory.mktemp('minilm_run')
  input_file = _write(root / 'in.txt', '\n'.join(texts).encode() + b'\n')
  out = str(root / 'out.npy')
  runs = dict(
    minilm=_start(
      '--model=all-minilm-l6-v2',
      f'--input={input_file}',
      f'--output={out}',
      '--normalize',
      f'--max_seq_length={MAX_SEQ_LENGTH}',
    )
  )
  yield runs['minilm'], out
  _stop(runs)


def _finish(proc):
  _, stderr = proc.communicate(timeout=300)
  return proc.returncode, stderr


@pytest.fixture(scope='module')
def encoder(minilm_dir, tmp_path_factory):
  """MiniLM imported from HF, saved as a bertjax model, loaded for embed."""
  config, params, vocab = pretrained.load(minilm_dir)
  bertjax_dir = str(tmp_path_factory.mktemp('minilm') / 'model')
  pretrained.save(bertjax_dir, config, params, vocab)
  return embed.load_encoder(bertjax_dir)


@pytest.fixture(scope='module')
def reference(minilm_dir, texts):
  """transformers' hidden states and attention mask for `texts`."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
  bert = transformers.AutoModel.from_pretrained(minilm_dir).eval()
  batch = tokenizer(
    texts,
    padding=True,
    truncation=True,
    max_length=MAX_SEQ_LENGTH,
    return_tensors='pt',
  )
  with torch.no_grad():
    hidden = bert(**batch).last_hidden_state.numpy()
  return hidden, batch['input_ids'].numpy(), batch['attention_mask'].numpy()


def _mean_pool(hidden, mask):
  mask = mask[..., None].astype(np.float32)
  return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.network
# The command line runs in the background while the tests below compute.
@pytest.mark.usefixtures('minilm_run')
class MiniLmTest:
  def test_tokens_match_transformers(self, encoder, texts, reference):
    _, _, tokenizer = encoder
    _, ids, mask = reference
    assert tokenizer.do_lower_case
    ours = tokenizer.encode_batch(texts)
    for i, x in enumerate(ours):
      want = ids[i][mask[i] == 1].tolist()
      got = [tokenizer.cls_id, *x[: MAX_SEQ_LENGTH - 2], tokenizer.sep_id]
      assert got == want, texts[i]
    # The news texts are truncated; the blank line is [CLS] [SEP].
    assert max(len(x) for x in ours) > MAX_SEQ_LENGTH
    assert mask[texts.index('')].sum() == 2

  def test_mean_pooling_matches_transformers(self, encoder, texts, reference):
    config, params, tokenizer = encoder
    hidden, _, mask = reference
    ours = embed.embed_texts(
      config,
      params,
      tokenizer,
      texts,
      pooling='mean',
      max_seq_length=MAX_SEQ_LENGTH,
      # Two batches: the short texts and the long ones pad to different
      # buckets.
      batch_size=16,
    )
    assert ours.dtype == np.float32
    assert ours.shape == (len(texts), 384)
    diff = np.abs(ours - _mean_pool(hidden, mask)).max()
    print(f'\nMiniLM mean pooling, max abs diff: {diff:.3g}')
    assert diff < TOLERANCE

  def test_cls_pooling_matches_transformers(self, encoder, texts, reference):
    config, params, tokenizer = encoder
    hidden, _, _ = reference
    # The shortest texts: one bucket, one compile.
    ours = embed.embed_texts(
      config, params, tokenizer, texts[:8], pooling='cls', batch_size=8
    )
    np.testing.assert_allclose(ours, hidden[:8, 0], atol=TOLERANCE, rtol=0)

  def test_command_line(self, minilm_run, texts, reference):
    proc, out = minilm_run
    rc, stderr = _finish(proc)
    assert rc == 0, stderr
    # The preset MiniLM is a BertModel: the import names the heads.
    assert 'checkpoint has no mlm_head, nsp_head: initialised freshly' in stderr
    assert '1 blank line(s) embedded as [CLS] [SEP]' in stderr
    assert f'embedded {len(texts)} lines in ' in stderr
    hidden, _, mask = reference
    want = _mean_pool(hidden, mask)
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    got = np.load(out)
    assert got.dtype == np.float32
    assert got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


class InputTest:
  def test_lines(self, tmp_path):
    path = _write(tmp_path / 'in.txt', b'\xef\xbb\xbfa\r\n\nb c\n  \nd')
    assert embed.read_lines(path) == ['a', '', 'b c', '  ', 'd']
    path = _write(tmp_path / 'in.txt', b'one\n')
    assert embed.read_lines(path) == ['one']

  def test_bad_input(self, tmp_path):
    with pytest.raises(embed.EmbedError, match='no such input file'):
      embed.read_lines(str(tmp_path / 'missing.txt'))
    with pytest.raises(embed.EmbedError, match='empty input'):
      embed.read_lines(_write(tmp_path / 'empty.txt', b''))
    with pytest.raises(embed.EmbedError, match='not UTF-8 text'):
      embed.read_lines(_write(tmp_path / 'latin1.txt', 'café'.encode('cp1252')))

  def test_max_seq_length(self):
    config = model.get_config('tiny', max_position_embeddings=64)
    assert embed.get_max_seq_length(config, None) == 64
    assert embed.get_max_seq_length(model.get_config('tiny'), None) == 512
    with pytest.raises(embed.EmbedError, match='max_position_embeddings'):
      embed.get_max_seq_length(config, 65)

  def test_bad_settings(self):
    config = model.get_config('tiny')
    with pytest.raises(embed.EmbedError, match="pooling 'max'"):
      embed.create_embed_fn(config, 'max', False)
    with pytest.raises(embed.EmbedError, match='no texts'):
      embed.embed_texts(config, {}, None, [])
    with pytest.raises(embed.EmbedError, match='batch_size=0 must be pos'):
      embed.embed_texts(config, {}, None, ['a'], batch_size=0)

  def test_vocab_larger_than_the_model(self, tiny_dirs, tmp_path):
    config = model.get_config('tiny', vocab_size=5, num_hidden_layers=1)
    params = jax.tree.map(
      lambda x: np.zeros(x.shape, np.float32), _abstract_params(config)
    )
    vocab = os.path.join(tiny_dirs[0], 'vocab.txt')
    pretrained.save(str(tmp_path / 'small'), config, params, vocab)
    with pytest.raises(model.WeightsError, match='7 tokens, but the model has'):
      embed.load_encoder(str(tmp_path / 'small'))
    # And a model without any tokenizer.
    pretrained.save(str(tmp_path / 'none'), config, params)
    with pytest.raises(FileNotFoundError, match='no vocab.txt or SentencePi'):
      embed.load_encoder(str(tmp_path / 'none'))

  def test_unknown_model_name(self):
    with pytest.raises(FileNotFoundError, match='not a pretrained model name'):
      embed.load_encoder('all-minilm-l6-v3')


@pytest.mark.parametrize(
  'run,message',
  [
    ('too_long', r'--max_seq_length=65 must be between 2 .* \(64\)'),
    ('broken_vocab', r'broken/vocab.txt: not a UTF-8 text vocab'),
    ('unknown_model', r'all-minilm-l6-v3: no such directory .* not a pre'),
  ],
)
def test_command_line_errors(failing_runs, run, message):
  rc, stderr = _finish(failing_runs[run])
  assert rc == 2, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr
  assert lines[0].startswith('bertjax.embed: error: ')
  assert re.search(message, lines[0]), lines[0]
