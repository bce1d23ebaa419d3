"""Chinese as a first-class language: word segmentation for whole-word
masking (data_pipeline.segmentation) checked against People's Daily's gold
words, in offline creation and in the dynamic pipeline's records."""

import glob
import os
import random

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import (
  corpora,
  documents,
  examples,
  pipeline,
  records,
  segmentation,
  tokenizers,
)

import corpus_readers

pytestmark = pytest.mark.network

SEQ = 128
PREDICTIONS = 20


@pytest.fixture(scope='module')
def gold():
  """People's Daily paragraphs with their gold words apart by spaces."""
  return corpora.peoples_daily_documents(segmented=True)


@pytest.fixture(scope='module')
def wordpiece(gold, tmp_path_factory):
  """A WordPiece vocabulary trained on the plain paragraphs."""
  root = tmp_path_factory.mktemp('zh_vocab')
  plain = [p.replace(' ', '') for p in gold]
  path = tokenizers.train_wordpiece(
    plain, str(root / 'zh'), vocab_size=8000, limit_alphabet=6000
  )
  return tokenizers.create_tokenizer(path)


@pytest.fixture(scope='module')
def sentencepiece(gold, tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp('zh_sp') / 'zh')
  tokenizers.train_sentencepiece(
    [p.replace(' ', '') for p in gold[:4000]],
    prefix,
    vocab_size=4000,
    character_coverage=0.9995,
  )
  return tokenizers.create_tokenizer(prefix + '.model')


def _boundaries(words) -> set[int]:
  """Character offsets where words after the first begin."""
  return set(np.cumsum([len(w) for w in words])[:-1].tolist())


def test_jieba_agrees_with_the_gold_words(gold):
  tp = fp = fn = 0
  for paragraph in gold:
    words = paragraph.split(' ')
    text = ''.join(words)
    spans = segmentation.word_spans(text, 'jieba')
    # The segmenter's words cover the text, in order.
    assert ''.join(text[a:b] for a, b in spans) == text
    ours = {a for a, _ in spans} - {0}
    theirs = _boundaries(words)
    tp += len(ours & theirs)
    fp += len(ours - theirs)
    fn += len(theirs - ours)
  precision, recall = tp / (tp + fp), tp / (tp + fn)
  f1 = 2 * precision * recall / (precision + recall)
  print(
    f'jieba vs gold word boundaries: P {precision:.4f} R {recall:.4f} '
    f'F1 {f1:.4f}'
  )
  # BENCHMARKS.md has the figures: F1 about 0.91 (jieba's dictionary is
  # not People's Daily's segmentation standard).
  assert f1 > 0.88 and precision > 0.9


def _gold_word_starts(tokenizer, words):
  """Per token, whether it begins a gold word (CJK tokens) or the table
  says so (other tokens), from tokenizing word by word."""
  table = tokenizer.word_start_table()
  out = []
  for word in words:
    ids = tokenizer.encode(word)
    for k, token_id in enumerate(ids):
      piece = tokenizer.id_to_token(token_id)
      if segmentation.has_cjk(piece[:1]):
        out.append(k == 0)
      else:
        out.append(bool(table[token_id]))
  return np.array(out, bool)


def test_word_starts_are_the_gold_words(gold, wordpiece):
  table = wordpiece.word_start_table()
  paragraphs = gold[::20]
  encoded = wordpiece.encode_with_offsets(paragraphs)
  plain = wordpiece.encode_batch([p.replace(' ', '') for p in paragraphs])
  chinese_tokens = 0
  for paragraph, (ids, offsets), plain_ids in zip(
    paragraphs, encoded, plain, strict=True
  ):
    # Spaces between Chinese words do not change their WordPiece ids, so
    # gold segmented text trains the same model as the plain text (between
    # two numbers they do: '１ ８' is not '１８').
    assert _chinese(wordpiece, ids) == _chinese(wordpiece, plain_ids)
    starts = segmentation.word_starts(
      paragraph, ids, offsets, table, 'whitespace'
    )
    expected = _gold_word_starts(wordpiece, paragraph.split(' '))
    np.testing.assert_array_equal(starts, expected, err_msg=paragraph)
    chinese_tokens += sum(
      segmentation.has_cjk(wordpiece.id_to_token(i)) for i in ids
    )
    # Without segmentation every Chinese character is a word.
    none = segmentation.word_starts(paragraph, ids, offsets, table, 'none')
    np.testing.assert_array_equal(none, table[ids])
  assert chinese_tokens > 50_000


def _chinese(tokenizer, ids) -> list[int]:
  return [i for i in ids if segmentation.has_cjk(tokenizer.id_to_token(i))]


def test_mixed_text_keeps_wordpiece_words(sentencepiece):
  # bert-base-uncased's vocabulary (MiniLM's) holds English pieces and
  # several thousand Chinese characters.
  wordpiece = tokenizers.create_tokenizer(corpus_readers.minilm_vocab())
  text = '我们用tensorflow训练BERT模型，unbelievably快。'
  for tokenizer in (wordpiece, sentencepiece):
    [(ids, offsets)] = tokenizer.encode_with_offsets([text])
    table = tokenizer.word_start_table()
    starts = segmentation.word_starts(text, ids, offsets, table, 'jieba')
    pieces = tokenizer.tokens(ids)
    for piece, start, (a, _), table_start in zip(
      pieces, starts, offsets, table[ids], strict=True
    ):
      first = text[a:].lstrip()[:1]
      if tokenizer is wordpiece and not segmentation.has_cjk(first):
        # Non-Chinese WordPiece tokens keep the vocabulary's rule.
        assert start == table_start, (piece, pieces)
    words = _words(text, offsets, starts)
    print(tokenizer.__class__.__name__, words)
    # jieba's words stay whole, and so do the English words (but for
    # letters the Chinese SentencePiece model lacks: an unknown piece is a
    # word of its own, as a special).
    for word in ('我们', '训练', '模型', '快', 'tensorflow', 'BERT'):
      assert word in words, words
    if tokenizer is wordpiece:
      assert 'unbelievably' in words, words


def _words(text, offsets, starts) -> list[str]:
  """The words of a text's tokens: each run from a word start, as text."""
  words = []
  for (a, b), start in zip(offsets, starts, strict=True):
    if start or not words:
      words.append([a, b])
    else:
      words[-1][1] = b
  return [text[a:b].strip() for a, b in words]


def test_sentencepiece_words_follow_jieba(gold, sentencepiece):
  table = sentencepiece.word_start_table()
  texts = [p.replace(' ', '') for p in gold[::50]]
  agree = total = 0
  for text, (ids, offsets) in zip(
    texts, sentencepiece.encode_with_offsets(texts), strict=True
  ):
    starts = segmentation.word_starts(text, ids, offsets, table, 'jieba')
    jieba_starts = {a for a, _ in segmentation.word_spans(text, 'jieba')}
    for (a, b), start in zip(offsets, starts, strict=True):
      while a < b - 1 and text[a].isspace():
        a += 1
      if segmentation.has_cjk(text[a]):
        # A piece starts a word exactly where jieba starts one.
        assert start == (a in jieba_starts), (text, a)
        total += 1
        agree += start
  # Without segmentation SentencePiece's table would make almost none of
  # these word starts (pieces inside Chinese text carry no '▁').
  assert agree / total > 0.5, (agree, total)
  table_starts = sum(
    table[i] for ids, _ in sentencepiece.encode_with_offsets(texts) for i in ids
  )
  assert table_starts < 0.2 * total


def _write_text(path, paragraphs):
  """BERT-format text: a paragraph per document, split into sentences."""
  with open(path, 'w', encoding='utf-8') as f:
    for paragraph in paragraphs:
      sentences = documents.split_sentences(paragraph)
      if sentences:
        f.write('\n'.join(sentences) + '\n\n')


def _read_records(output_dir, with_masks):
  spec = {
    name: tf.io.FixedLenFeature([SEQ], tf.int64)
    for name in ('input_ids', 'input_mask', 'segment_ids')
  }
  if with_masks:
    spec['masked_lm_positions'] = tf.io.FixedLenFeature([PREDICTIONS], tf.int64)
    spec['masked_lm_ids'] = tf.io.FixedLenFeature([PREDICTIONS], tf.int64)
    spec['masked_lm_weights'] = tf.io.FixedLenFeature([PREDICTIONS], tf.float32)
  else:
    spec['word_starts'] = tf.io.FixedLenFeature([SEQ], tf.int64)
  paths = sorted(glob.glob(os.path.join(output_dir, 'train-*')))
  dataset = tf.data.TFRecordDataset(paths).batch(100_000)
  batch = next(iter(dataset.map(lambda x: tf.io.parse_example(x, spec))))
  return {k: v.numpy() for k, v in batch.items()}


def _create(text_path, output_dir, tokenizer, **overrides):
  config = records.CreationConfig(
    max_seq_length=SEQ,
    masking=examples.MaskingConfig(
      max_predictions_per_seq=PREDICTIONS, whole_word_mask=True
    ),
    dupe_factor=1,
    unit_chars=1 << 17,
    **overrides,
  )
  stats = documents.Stats()
  docs = documents.read_documents(
    [str(text_path)], documents.ReadOptions(input_format='bert'), stats
  )
  return records.create_pretraining_data(
    docs,
    stats,
    tokenizer.path,
    config,
    records.OutputOptions(output_dir=str(output_dir), num_shards=1),
  )


def _check_whole_words(features, starts, tokenizer):
  """Every masked token's word (a run from a word start) is masked whole;
  returns the masked positions as a bool [n, SEQ]."""
  n = len(features['input_mask'])
  masked = np.zeros((n, SEQ), bool)
  rows = np.repeat(np.arange(n), PREDICTIONS)
  weights = features['masked_lm_weights'].reshape(-1) > 0
  positions = features['masked_lm_positions'].reshape(-1)
  masked[rows[weights], positions[weights]] = True
  special = np.isin(features['original'], tokenizer.special_ids)
  candidates = (features['input_mask'] > 0) & ~special
  previous = np.pad(candidates[:, :-1], [(0, 0), (1, 0)])
  begins = candidates & ((starts > 0) | ~previous)
  word_ids = np.cumsum(begins, axis=1)
  for row in range(n):
    for word in np.unique(word_ids[row][masked[row]]):
      in_word = candidates[row] & (word_ids[row] == word)
      assert masked[row][in_word].all(), row
  return masked


def test_offline_and_dynamic_whole_words_on_gold_segmentation(
  gold, wordpiece, tmp_path
):
  """Records of gold-segmented People's Daily: the word starts they carry
  are the gold words', and masks (offline, and the pipeline's dynamic
  masking of the unmasked records) take whole gold words, at BERT's rate
  and 80/10/10 split counted in tokens."""
  text = tmp_path / 'zh.txt'
  _write_text(text, gold[:3000])
  # Unmasked, for the pipeline: the records carry the word starts.
  _create(
    text, tmp_path / 'pairs', wordpiece, mask=False, word_segmenter='whitespace'
  )
  pairs = _read_records(tmp_path / 'pairs', with_masks=False)
  table = wordpiece.word_start_table()
  ids, starts = pairs['input_ids'], pairs['word_starts']
  real = pairs['input_mask'] > 0
  cjk = np.vectorize(lambda i: segmentation.has_cjk(wordpiece.id_to_token(i)))(
    ids
  )
  # Off Chinese tokens the starts are the vocabulary's.
  np.testing.assert_array_equal(starts[real & ~cjk], table[ids[real & ~cjk]])
  # On Chinese tokens they are the gold words': each run of them spells a
  # gold word (words cut by truncation at a segment's edge aside).
  gold_words = {w for p in gold[:3000] for w in p.split(' ')}
  runs = found = 0
  for row in range(len(ids)):
    word = ''
    for k in range(1, SEQ):
      if word and (starts[row, k] or not cjk[row, k]):
        runs += 1
        found += word in gold_words
        word = ''
      if cjk[row, k] and real[row, k]:
        word += wordpiece.id_to_token(ids[row, k])
  assert found / runs > 0.99, (found, runs)
  multi = np.mean([len(w) > 1 for w in gold_words])
  assert multi > 0.8  # most gold words have several characters

  # The pipeline's masking of these records follows them.
  masking = examples.MaskingConfig(
    max_predictions_per_seq=PREDICTIONS, whole_word_mask=True
  )
  seeds = np.stack([np.zeros(len(ids)), np.arange(len(ids))], 1)
  out = examples.mask_batch(
    ids,
    pairs['input_mask'],
    seeds.astype(np.int64),
    config=masking,
    word_starts=starts,
    **examples.vocab_kwargs(wordpiece, True),
  )
  features = {k: v.numpy() for k, v in out.items()}
  features['original'] = ids
  features['input_mask'] = pairs['input_mask']
  masked = _check_whole_words(features, starts, wordpiece)
  # Masked runs of several Chinese characters: whole words, not characters.
  several = 0
  for row in range(len(ids)):
    positions = np.flatnonzero(masked[row] & cjk[row])
    several += np.any(
      (np.diff(positions) == 1) & ~starts[row, positions[1:]].astype(bool)
    )
  assert several > 0.5 * len(ids)
  # BERT's budget, counted in tokens: 15% of the real tokens, at most 20.
  predicted = features['masked_lm_weights'].sum(1)
  budget = np.minimum(np.round(real.sum(1) * 0.15), PREDICTIONS)
  assert (predicted <= budget).all()
  assert predicted.sum() > 0.95 * budget.sum()
  chosen = features['masked_lm_weights'] > 0
  became = np.take_along_axis(
    features['input_ids'], features['masked_lm_positions'], 1
  )[chosen]
  was = features['masked_lm_ids'][chosen]
  share_mask = np.mean(became == wordpiece.mask_id)
  share_same = np.mean(became == was)
  assert abs(share_mask - 0.8) < 0.02 and abs(share_same - 0.1) < 0.02, (
    share_mask,
    share_same,
  )

  # The training pipeline reads the word starts off these records.
  config = pipeline.PipelineConfig(
    train_file_patterns=(str(tmp_path / 'pairs' / 'train-*'),),
    tokenizer_path=wordpiece.path,
    per_host_batch_size=256,
    max_seq_length=SEQ,
    mlm=masking,
    shuffle_window=1,
  )
  batch = next(pipeline.create_train_iterator(config, 0, 1))
  assert 'word_starts' not in batch
  batch['original'] = ids[:256]
  np.testing.assert_array_equal(batch['input_mask'], pairs['input_mask'][:256])
  _check_whole_words(batch, starts[:256], wordpiece)
  # The check can fail: masks by the vocabulary alone (one word per
  # character) cut gold words.
  by_table = examples.mask_batch(
    ids[:256],
    pairs['input_mask'][:256],
    seeds[:256].astype(np.int64),
    config=masking,
    **examples.vocab_kwargs(wordpiece, True),
  )
  by_table = {k: v.numpy() for k, v in by_table.items()}
  by_table['original'] = ids[:256]
  by_table['input_mask'] = pairs['input_mask'][:256]
  with pytest.raises(AssertionError):
    _check_whole_words(by_table, starts[:256], wordpiece)

  # Offline masking of the same text computes the same word starts.
  _create(text, tmp_path / 'masked', wordpiece, word_segmenter='whitespace')
  offline = _read_records(tmp_path / 'masked', with_masks=True)
  original = offline['input_ids'].copy()
  rows = np.repeat(np.arange(len(original)), PREDICTIONS)
  keep = offline['masked_lm_weights'].reshape(-1) > 0
  original[rows[keep], offline['masked_lm_positions'].reshape(-1)[keep]] = (
    offline['masked_lm_ids'].reshape(-1)[keep]
  )
  # The same pairs in the same order: only the masks were added.
  np.testing.assert_array_equal(original, ids)
  offline['original'] = original
  _check_whole_words(offline, starts, wordpiece)


def test_jieba_segmentation_in_sentencepiece_records(
  gold, sentencepiece, tmp_path
):
  text = tmp_path / 'zh.txt'
  _write_text(text, [p.replace(' ', '') for p in gold[:1500]])
  stats = _create(text, tmp_path / 'masked', sentencepiece)
  assert stats['examples'] > 500, stats['examples']
  features = _read_records(tmp_path / 'masked', with_masks=True)
  chosen = features['masked_lm_weights'] > 0
  # Whole jieba words of one to several pieces, not whole sentences (what
  # SentencePiece's '▁' rule alone makes of Chinese text).
  positions = np.where(chosen, features['masked_lm_positions'], -9)
  gaps = np.diff(np.sort(positions, 1), axis=1)
  adjacent = np.mean(gaps[chosen[:, 1:]] == 1)
  assert 0.2 < adjacent < 0.9, adjacent


def test_unknown_segmenter_is_one_line():
  with pytest.raises(segmentation.SegmenterError, match="'stanza' is not"):
    records.CreationConfig(word_segmenter='stanza')


@pytest.mark.slow
def test_chinese_demo_learns_with_whole_word_masking(tmp_path):
  """The README's Chinese demo (shortened): People's Daily, a vocabulary
  trained on it, jieba words masked whole; above the most-frequent-token
  baseline after 200 steps (0.103 against 0.045 at step 200 of the full
  demo with whole words, BENCHMARKS.md)."""
  from bertjax import trainer
  from configs import bert_tiny

  config = bert_tiny.get_config('steps=200')
  with config.unlocked():
    config.data.demo_corpus = 'peoples-daily-zh'
    config.data.whole_word_mask = True
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 0
  result = trainer.train_and_evaluate(config, str(tmp_path))
  baseline = result['baseline/mlm_accuracy']
  assert 0.02 < baseline < 0.08, baseline
  assert result['eval/mlm_accuracy'] > baseline + 0.015, result
  # The records it trained on carry jieba's word starts.
  prepared = glob.glob(
    os.path.join(corpora.get_cache_dir(), 'prepared', 'records', '*', 'train-*')
  )
  with_starts = [
    path
    for path in prepared
    if 'word_starts'
    in tf.train.Example.FromString(
      next(iter(tf.data.TFRecordDataset(path).take(1))).numpy()
    ).features.feature
  ]
  assert with_starts


@pytest.fixture(scope='module')
def bert_base_chinese(gold, tmp_path_factory):
  """A Hugging Face directory shaped as bert-base-chinese (BERT-base,
  vocabulary 21,128), random weights from transformers, with a 21,128-token
  vocab.txt: specials and [unused] slots first, then People's Daily's
  characters and WordPiece pieces, as Google's Chinese vocabulary is laid
  out."""
  import torch
  import transformers

  root = tmp_path_factory.mktemp('bert_base_chinese')
  trained = tokenizers.train_wordpiece(
    [p.replace(' ', '') for p in gold],
    str(root / 'zh'),
    vocab_size=8000,
    limit_alphabet=6000,
  )
  pieces = [
    p
    for p in tokenizers.read_vocab_txt(trained)
    if p not in tokenizers.SPECIAL_TOKENS
  ]
  vocab = ['[PAD]'] + [f'[unused{i}]' for i in range(1, 100)]
  vocab += ['[UNK]', '[CLS]', '[SEP]', '[MASK]'] + pieces
  vocab += [f'##{p}' for p in pieces if not p.startswith('##')]
  vocab = list(dict.fromkeys(vocab))[:21_128]
  vocab += [f'[unused{i}]' for i in range(100, 100 + 21_128 - len(vocab))]
  hf_dir = root / 'hf'
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=21_128)  # BERT-base otherwise
  theirs = transformers.BertForPreTraining(config).eval()
  # Non-zero biases and non-unit LayerNorm scales, so that a mapping error
  # cannot hide behind init's zeros and ones.
  with torch.no_grad():
    for name, tensor in theirs.named_parameters():
      if name.endswith('bias') or 'LayerNorm' in name:
        tensor.add_(torch.randn_like(tensor) * 0.05)
  theirs.save_pretrained(hf_dir)
  (hf_dir / 'vocab.txt').write_text('\n'.join(vocab) + '\n', encoding='utf-8')
  return hf_dir, theirs


@pytest.mark.slow
def test_bert_base_chinese_round_trip_with_transformers(
  bert_base_chinese, gold, tmp_path
):
  import torch
  import transformers

  from bertjax import hf, model, pretrained

  hf_dir, theirs = bert_base_chinese
  config, params, tokenizer_path = pretrained.load(str(hf_dir))
  tokenizer = tokenizers.create_tokenizer(tokenizer_path)
  assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (
    21_128,
    768,
    12,
  )
  assert tokenizer.vocab_size == 21_128
  texts = [p.replace(' ', '') for p in gold[:4]]
  ids = np.zeros((4, 48), np.int64)
  for row, text in enumerate(texts):
    encoded = [tokenizer.cls_id] + tokenizer.encode(text)[:46]
    encoded.append(tokenizer.sep_id)
    ids[row, : len(encoded)] = encoded
  mask = (ids > 0).astype(np.int64)
  segments = np.zeros_like(ids)
  # The tokenizer is transformers' BertTokenizer on this vocabulary.
  their_tokenizer = transformers.BertTokenizer(str(hf_dir / 'vocab.txt'))
  assert [their_tokenizer.encode(t)[:47] for t in texts] == [
    row[row > 0][:47].tolist() for row in ids
  ]
  positions = np.tile(np.arange(1, 6), (4, 1))

  def logits_of(torch_model):
    with torch.no_grad():
      out = torch_model(
        input_ids=torch.tensor(ids),
        attention_mask=torch.tensor(mask),
        token_type_ids=torch.tensor(segments),
      )
    return out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()

  ours = model.BertForPreTraining(config).apply(
    {'params': params}, ids, mask, segments, positions
  )
  mlm, nsp = logits_of(theirs)
  mlm = np.take_along_axis(mlm, positions[..., None], axis=1)
  np.testing.assert_allclose(ours['mlm_logits'], mlm, atol=1e-4, rtol=0)
  np.testing.assert_allclose(ours['nsp_logits'], nsp, atol=1e-4, rtol=0)
  # Exported back, transformers reads the same function.
  out = tmp_path / 'exported'
  hf.save(str(out), config, params)
  again = transformers.BertForPreTraining.from_pretrained(out).eval()
  mlm_again, nsp_again = logits_of(again)
  mlm_again = np.take_along_axis(mlm_again, positions[..., None], axis=1)
  np.testing.assert_allclose(ours['mlm_logits'], mlm_again, atol=1e-4, rtol=0)
  np.testing.assert_allclose(ours['nsp_logits'], nsp_again, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize('task', ['classification', 'ner'])
def test_chinese_fine_tuning_runs_from_bert_base_chinese(
  bert_base_chinese, task, tmp_path
):
  """The Chinese tasks of the fine-tuning tests (review sentiment, People's
  Daily NER), started from the bert-base-chinese-shaped checkpoint: two
  steps each (BERT-base on 2 CPU cores; that they learn is tested from a
  tiny model in finetune_test)."""
  import csv

  from bertjax import tasks
  from configs.finetune import classification, ner

  hf_dir, _ = bert_base_chinese
  if task == 'classification':
    reviews = corpus_readers.chinese_sentiment()[::500]
    random.Random(0).shuffle(reviews)  # negatives come first in the files
    rows = [(r.text, corpus_readers.SENTIMENT_LABELS[r.label]) for r in reviews]
    parts = {'train': rows[:32], 'eval': rows[32:48]}
    for name, part in parts.items():
      path = tmp_path / f'{name}.csv'
      with open(path, 'w', encoding='utf-8', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['text', 'label'])
        writer.writerows(part)
    config, metric = classification.get_config(), 'accuracy'
    labels = ['negative', 'positive']
  else:
    sentences = corpus_readers.peoples_daily_ner()[1:49]
    parts = {'train': sentences[:32], 'eval': sentences[32:]}
    for name, part in parts.items():
      with open(tmp_path / f'{name}.conll', 'w', encoding='utf-8') as f:
        for s in part:
          for word, label in zip(s.words, s.labels, strict=True):
            f.write(f'{word} {"O" if label == "O" else "B-" + label}\n')
          f.write('\n')
    config, metric = ner.get_config(), 'f1'
    labels = None
  extension = 'csv' if task == 'classification' else 'conll'
  config.init = str(hf_dir)
  config.batch_size = 16
  config.max_seq_length = 64
  config.num_train_epochs = 1.0
  config.data.train_file = str(tmp_path / f'train.{extension}')
  config.data.eval_file = str(tmp_path / f'eval.{extension}')
  result = tasks.finetune(config, str(tmp_path / 'run'))
  assert 0.0 <= result[f'best/eval/{metric}'] <= 1.0, result
  tuned = tasks.load_tuned(str(tmp_path / 'run'))
  assert tuned.config.vocab_size == 21_128
  if labels:
    assert sorted(tuned.labels) == labels
  else:
    assert 'B-PER' in tuned.labels and 'B-LOC' in tuned.labels


def test_word_starts_of_no_text_and_of_texts_without_tokens(wordpiece):
  table = wordpiece.word_start_table()
  assert segmentation.batch_word_starts([], [], table, 'jieba') == []
  texts = ['中国', '', '我们学习']
  found = segmentation.batch_word_starts(
    texts, wordpiece.encode_with_offsets(texts), table, 'jieba'
  )
  assert [s.tolist() for s in found] == [[True, False], [], [True, False] * 2]
