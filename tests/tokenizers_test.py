"""Tests for data_pipeline.tokenizers and data_pipeline.train_tokenizer.

WordPiece ids are checked against two references on real text from the
corpus registry: transformers' BertTokenizer and its pure-Python
BertTokenizerLegacy (BERT's original algorithm). SentencePiece and WordPiece
vocabs are trained here, through the train_tokenizer CLI, on a slice of the
English news.
"""

import os
import pathlib
import re
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from data_pipeline import corpora, tokenizers, train_tokenizer

import corpus_readers

# Awkward inputs for the in-graph path: control and format characters,
# U+FFFD, accents and combining marks, full-width forms, CJK, literal and
# lower-case specials, a word over BERT's 100-character limit, emptiness.
TRICKY = [
  '',
  ' \t\n ',
  'a\x00b c\u200bd e\x7ff g\x85h',
  'x\ufffdy \ufffd',
  'İstanbul ÀÉÎÕÜ Straße ǅemal naïve café',
  'e\u0301 n\u0303 \u3000x\u00a0y',
  'Ａｂｃ １２３ （ｘ） ＡＢＣ',
  '中华人民共和国成立了。日本語のテキスト，한국어 텍스트',
  'hello [MASK] world [SEP][CLS]x[PAD] [mask] [UNK]',
  'a' * 100 + ' ' + 'b' * 101 + ' ' + 'é' * 60,
  "don't stop-believing... 3.14 $5 @user #tag https://t.co/x?y=1&z=2",
  # Printable ASCII with \t \r \n: the fast path of in-graph tokenization.
  'Plain ASCII\tWITH Tabs\r\nAND [SEP] Caps ~{|}',
]


@pytest.fixture(scope='module')
def vocab_path():
  return corpus_readers.minilm_vocab()


@pytest.fixture(scope='module')
def news_sentences():
  """1,500 sentences spread over the English news corpus."""
  docs = corpora.news_documents()
  sentences = [
    s for doc in docs[::7] for s in re.split(r'(?<=[.!?])\s+', doc) if s.strip()
  ]
  return sentences[::8][:1500]


@pytest.fixture(scope='module')
def zh_paragraphs():
  """1,218 People's Daily paragraphs (every 16th)."""
  return corpus_readers.peoples_daily_paragraphs()[::16]


@pytest.fixture(scope='module')
def news_files(tmp_path_factory):
  """A training slice of the news (documents not in news_sentences)."""
  docs = corpora.news_documents()
  train = [d for i, d in enumerate(docs[:700]) if i % 7]
  out = tmp_path_factory.mktemp('news')
  for shard in range(2):
    text = '\n'.join(train[shard::2]) + '\n'
    (out / f'news-{shard}.txt').write_text(text, encoding='utf-8')
  return str(out / 'news-*.txt')


def run_train_tokenizer(*args):
  """Runs the train_tokenizer CLI's main with these flags."""
  flag_values = flags.FlagValues()
  train_tokenizer.define_flags(flag_values)
  argv = flag_values(['train_tokenizer', *args])
  train_tokenizer.main(argv, flag_values)


@pytest.fixture(scope='module')
def sp_model(news_files, tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp('sp') / 'news_sp')
  run_train_tokenizer(
    f'--input_files={news_files}',
    f'--model_prefix={prefix}',
    '--vocab_size=2000',
    '--model_type=unigram',
    '--input_sentence_size=250',
  )
  return prefix + '.model'


@pytest.fixture(scope='module')
def wp_vocab(news_files, tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp('wp') / 'news_wp')
  run_train_tokenizer(
    f'--input_files={news_files}',
    f'--model_prefix={prefix}',
    '--vocab_size=2000',
    '--model_type=wordpiece',
  )
  return prefix + '.vocab.txt'


@pytest.fixture(scope='module')
def zh_vocab(tmp_path_factory):
  """A WordPiece vocab from the People's Daily paragraphs not tested on."""
  paragraphs = corpus_readers.peoples_daily_paragraphs()
  train = [p for i, p in enumerate(paragraphs) if i % 16]
  prefix = str(tmp_path_factory.mktemp('zh') / 'zh_wp')
  return tokenizers.train_wordpiece(train, prefix, 8000, limit_alphabet=6000)


def unk_rate(ids, unk_id):
  return sum(x.count(unk_id) for x in ids) / sum(map(len, ids))


def reference(vocab, do_lower_case):
  """transformers' BertTokenizer, checked to have really read the vocab."""
  import transformers

  # transformers 5: BertTokenizer(vocab_file=...) silently ignores the file
  # and builds a 5-token vocab; vocab= is the argument that works.
  ref = transformers.BertTokenizer(vocab=vocab, do_lower_case=do_lower_case)
  with open(vocab, encoding='utf-8') as f:
    assert len(ref.get_vocab()) == len(f.read().splitlines())
  return ref


def legacy_reference(vocab, do_lower_case):
  """BERT's original pure-Python algorithm, as kept by transformers."""
  from transformers.models.bert import tokenization_bert_legacy

  return tokenization_bert_legacy.BertTokenizerLegacy(
    vocab, do_lower_case=do_lower_case
  )


@pytest.mark.network
class WordPieceTest:
  @pytest.mark.parametrize('do_lower_case', [True, False])
  def test_news_matches_transformers(
    self, vocab_path, news_sentences, do_lower_case
  ):
    ours = tokenizers.WordPieceTokenizer(vocab_path, do_lower_case)
    ref = reference(vocab_path, do_lower_case)
    expected = ref(news_sentences, add_special_tokens=False)['input_ids']
    # An uncased vocab read cased loses capitalised words, nothing else.
    assert unk_rate(expected, ours.unk_id) < (0.002 if do_lower_case else 0.2)
    assert ours.encode_batch(news_sentences) == expected

  @pytest.mark.parametrize('do_lower_case', [True, False])
  def test_matches_original_bert_algorithm(
    self, vocab_path, news_sentences, zh_paragraphs, do_lower_case
  ):
    ours = tokenizers.WordPieceTokenizer(vocab_path, do_lower_case)
    ref = legacy_reference(vocab_path, do_lower_case)
    texts = news_sentences + zh_paragraphs + TRICKY
    expected = [ref.encode(t, add_special_tokens=False) for t in texts]
    assert ours.encode_batch(texts) == expected

  @pytest.mark.parametrize('do_lower_case', [True, False])
  def test_peoples_daily_matches_transformers(
    self, vocab_path, zh_vocab, zh_paragraphs, do_lower_case
  ):
    # The English MiniLM vocab lacks most Chinese characters (64% [UNK]);
    # a vocab trained on the corpus makes the comparison cover real pieces.
    for vocab, max_unk in ((vocab_path, 0.7), (zh_vocab, 0.002)):
      ours = tokenizers.WordPieceTokenizer(vocab, do_lower_case)
      expected = reference(vocab, do_lower_case)(
        zh_paragraphs, add_special_tokens=False
      )['input_ids']
      assert unk_rate(expected, ours.unk_id) < max_unk
      assert ours.encode_batch(zh_paragraphs) == expected

  def test_word_starts_are_bert_words(
    self, vocab_path, news_sentences, zh_paragraphs
  ):
    ours = tokenizers.WordPieceTokenizer(vocab_path, do_lower_case=True)
    basic = legacy_reference(vocab_path, True).basic_tokenizer
    table = ours.word_start_table()
    assert table.shape == (30_522,) and table.dtype == bool
    assert not table[ours.encode('unaffable')[1:]].any()
    for text, ids in zip(
      news_sentences + zh_paragraphs,
      ours.encode_batch(news_sentences + zh_paragraphs),
      strict=True,
    ):
      assert ours.is_word_start(ids).sum() == len(basic.tokenize(text)), text

  def test_specials(self, vocab_path):
    tok = tokenizers.create_tokenizer(vocab_path)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
      0,
      100,
      101,
      102,
      103,
    )
    assert tok.special_ids.tolist() == [0, 100, 101, 102, 103]
    ids = tok.encode('The [MASK] sat.[SEP] [mask]')
    assert tok.tokens(ids) == [
      'the',
      '[MASK]',
      'sat',
      '.',
      '[SEP]',
      '[',
      'mask',
      ']',
    ]
    assert tok.word_start_table()[tok.special_ids].all()
    assert tok.replacement_range == (0, 30_522)

  def test_decode_and_lookup(self, vocab_path):
    tok = tokenizers.create_tokenizer(vocab_path)
    ids = tok.encode('Héllo, unaffable World!')
    assert tok.decode(ids) == 'hello, unaffable world!'
    assert tok.tokens(ids)[2:5] == ['una', '##ffa', '##ble']
    assert tok.id_to_token(ids[0]) == 'hello'
    assert tok.decode([tok.cls_id, *ids, tok.sep_id]).startswith('[CLS] hello')

  def test_case_is_inferred_from_the_vocab(self, vocab_path, tmp_path):
    model_dir = corpus_readers.minilm_dir()
    assert tokenizers.create_tokenizer(model_dir).do_lower_case
    cased = tmp_path / 'cased.txt'
    cased.write_text('\n'.join(tokenizers.SPECIAL_TOKENS + ('The', 'the')))
    tok = tokenizers.create_tokenizer(cased)
    assert isinstance(tok, tokenizers.WordPieceTokenizer)
    assert not tok.do_lower_case
    assert tok.encode('The the THE') == [5, 6, 1]


@pytest.mark.network
class SentencePieceTest:
  def test_reserved_ids(self, sp_model):
    tok = tokenizers.create_tokenizer(sp_model)
    assert isinstance(tok, tokenizers.SentencePieceTokenizer)
    assert tok.vocab_size == 2000
    assert tok.tokens(range(5)) == list(tokenizers.SPECIAL_TOKENS)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
      0,
      1,
      2,
      3,
      4,
    )
    assert tok.special_ids.tolist() == [0, 1, 2, 3, 4]
    with open(sp_model.replace('.model', '.vocab'), encoding='utf-8') as f:
      assert [line.split('\t')[0] for line in f][:5] == list(
        tokenizers.SPECIAL_TOKENS
      )

  def test_literal_mask_is_one_id(self, sp_model):
    tok = tokenizers.create_tokenizer(sp_model)
    ids = tok.encode('The president [MASK] the bill.[SEP]Next')
    assert ids.count(tok.mask_id) == 1 and ids.count(tok.sep_id) == 1
    assert tok.decode(ids) == 'The president [MASK] the bill. [SEP] Next'

  def test_round_trip_and_word_starts(self, sp_model, news_sentences):
    tok = tokenizers.create_tokenizer(sp_model)
    # SentencePiece's nmt_nfkc maps U+FFFD to a space; leave those out.
    texts = [s for s in news_sentences if '\ufffd' not in s]
    checked = 0
    for text, ids in zip(texts, tok.encode_batch(texts), strict=True):
      if tok.unk_id in ids:
        continue
      checked += 1
      expected = ' '.join(unicodedata.normalize('NFKC', text).split())
      assert tok.decode(ids) == expected
      assert tok.is_word_start(ids).sum() == len(text.split()), text
    assert checked > 0.95 * len(texts)

  def test_word_start_table(self, sp_model):
    tok = tokenizers.create_tokenizer(sp_model)
    table = tok.word_start_table()
    pieces = tok.tokens(range(tok.vocab_size))
    assert table[tok.special_ids].all()
    assert all(
      table[i] == p.startswith('\u2581') for i, p in enumerate(pieces) if i >= 5
    )

  def test_bpe(self, news_files, tmp_path):
    prefix = str(tmp_path / 'bpe')
    run_train_tokenizer(
      f'--input_files={news_files}',
      f'--model_prefix={prefix}',
      '--vocab_size=1000',
      '--model_type=bpe',
      '--input_sentence_size=200',
    )
    tok = tokenizers.create_tokenizer(prefix + '.model')
    assert tok.tokens(range(5)) == list(tokenizers.SPECIAL_TOKENS)
    assert tok.encode('a [MASK] b').count(tok.mask_id) == 1


@pytest.mark.network
class WordPieceTrainingTest:
  def test_trained_vocab(self, wp_vocab, news_sentences):
    with open(wp_vocab, encoding='utf-8') as f:
      vocab = f.read().splitlines()
    assert len(vocab) == 2000
    assert vocab[:5] == list(tokenizers.SPECIAL_TOKENS)
    tok = tokenizers.create_tokenizer(wp_vocab)
    assert tok.do_lower_case
    assert tok.special_ids.tolist() == [0, 1, 2, 3, 4]
    ids = tok.encode_batch(news_sentences)
    assert unk_rate(ids, tok.unk_id) < 0.001
    expected = reference(wp_vocab, True)(
      news_sentences, add_special_tokens=False
    )['input_ids']
    assert ids == expected

  def test_same_text_same_vocab_in_another_process(
    self, wp_vocab, news_files, zh_paragraphs, tmp_path
  ):
    """The vocab is a function of the text: another process (other hash
    seeds) writes the same bytes, for English and for Chinese, whose 8,000
    tokens leave many merges tied on count."""
    zh_file = tmp_path / 'zh.txt'
    zh_file.write_text('\n'.join(zh_paragraphs) + '\n', encoding='utf-8')
    here = tokenizers.train_wordpiece(
      tokenizers.read_text_lines([str(zh_file)]),
      str(tmp_path / 'here'),
      8000,
      limit_alphabet=6000,
    )
    for inputs, prefix, size, alphabet, ours in [
      (news_files, 'news', 2000, 1000, wp_vocab),
      (str(zh_file), 'zh', 8000, 6000, here),
    ]:
      result = subprocess.run(
        [
          sys.executable,
          '-m',
          'data_pipeline.train_tokenizer',
          f'--input_files={inputs}',
          f'--model_prefix={tmp_path / prefix}',
          f'--vocab_size={size}',
          '--model_type=wordpiece',
          f'--limit_alphabet={alphabet}',
        ],
        cwd=pathlib.Path(__file__).parents[1],
        capture_output=True,
        text=True,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
      )
      assert result.returncode == 0, result.stderr[-2000:]
      theirs = pathlib.Path(f'{tmp_path / prefix}.vocab.txt').read_bytes()
      assert theirs == pathlib.Path(ours).read_bytes(), prefix


@pytest.mark.network
class InGraphTest:
  @pytest.mark.parametrize('do_lower_case', [True, False])
  def test_wordpiece_equals_python(
    self, vocab_path, news_sentences, zh_paragraphs, do_lower_case
  ):
    tok = tokenizers.WordPieceTokenizer(vocab_path, do_lower_case)
    texts = news_sentences + zh_paragraphs + TRICKY
    dataset = (
      tf.data.Dataset.from_tensor_slices(texts)
      .batch(256)
      .map(tok.create_tf_tokenize_fn())
    )
    in_graph = [row for batch in dataset for row in batch.to_list()]
    assert in_graph == tok.encode_batch(texts)

  @pytest.mark.parametrize('do_lower_case', [True, False])
  def test_wordpiece_over_the_basic_multilingual_plane(
    self, vocab_path, do_lower_case
  ):
    tok = tokenizers.WordPieceTokenizer(vocab_path, do_lower_case)
    points = np.array(
      [c for c in range(1, 0x10000) if not 0xD800 <= c <= 0xDFFF]
    )
    texts = [f'x{chr(c)}y {chr(c)} z' for c in points]
    in_graph = tok.create_tf_tokenize_fn()(tf.constant(texts)).to_list()
    differ = points[
      [a != b for a, b in zip(in_graph, tok.encode_batch(texts), strict=True)]
    ]
    # Unicode 10+ additions whose category ICU and Rust's tables disagree on
    # (39 cased, 118 uncased with tensorflow-text 2.21, tokenizers 0.23).
    assert len(differ) < 0.003 * len(points)
    # None among Latin, Greek, Cyrillic, general punctuation, CJK, kana,
    # hangul or full-width forms.
    for low, high in (
      (0x0000, 0x05FF),
      (0x2000, 0x206F),
      (0x3000, 0x9FFF),
      (0xAC00, 0xD7AF),
      (0xFF00, 0xFFEF),
    ):
      assert not ((differ >= low) & (differ <= high)).any(), hex(low)

  def test_scalar_input(self, vocab_path):
    tok = tokenizers.WordPieceTokenizer(vocab_path)
    tokenize = tf.function(tok.create_tf_tokenize_fn())
    out = tokenize(tf.constant('Hello [MASK]!'))
    assert out.dtype == tf.int32
    assert out.numpy().tolist() == tok.encode('Hello [MASK]!')

  def test_sentencepiece(self, sp_model):
    import sentencepiece

    tok = tokenizers.create_tokenizer(sp_model)
    scorer = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    docs = corpora.news_documents()[::10]
    in_graph = tok.create_tf_tokenize_fn()(tf.constant(docs)).to_list()
    python = tok.encode_batch(docs)
    same = [a == b for a, b in zip(in_graph, python, strict=True)]
    assert np.mean(same) > 0.99
    # tensorflow-text bundles another SentencePiece build, which breaks
    # Viterbi near-ties the other way ('000' as '00 0', not '0 00'): the
    # same text, segmented with (almost) the same score.
    for a, b in zip(in_graph, python, strict=True):
      if a != b:
        assert tok.decode(a) == tok.decode(b)
        score = lambda ids: sum(scorer.get_score(i) for i in ids)
        assert score(a) == pytest.approx(score(b), abs=0.01)


class BadInputTest:
  def test_missing_vocab(self, tmp_path):
    path = tmp_path / 'nope' / 'vocab.txt'
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
      tokenizers.create_tokenizer(path)
    with pytest.raises(FileNotFoundError, match='nope.model'):
      tokenizers.create_tokenizer(tmp_path / 'nope.model')

  def test_directory_without_vocab(self, tmp_path):
    with pytest.raises(FileNotFoundError, match='vocab.txt'):
      tokenizers.create_tokenizer(tmp_path)

  def test_empty_vocab(self, tmp_path):
    path = tmp_path / 'vocab.txt'
    path.write_text('')
    with pytest.raises(tokenizers.VocabError, match='empty vocab'):
      tokenizers.create_tokenizer(path)
    empty_model = tmp_path / 'empty.model'
    empty_model.write_bytes(b'')
    with pytest.raises(tokenizers.VocabError, match='empty SentencePiece'):
      tokenizers.create_tokenizer(empty_model)

  def test_binary_garbage(self, tmp_path):
    garbage = np.random.default_rng(0).bytes(4096)
    path = tmp_path / 'vocab.txt'
    path.write_bytes(garbage)
    with pytest.raises(tokenizers.VocabError, match='not a UTF-8 text vocab'):
      tokenizers.create_tokenizer(path)
    model = tmp_path / 'garbage.model'
    model.write_bytes(garbage)
    with pytest.raises(tokenizers.VocabError, match='not a SentencePiece'):
      tokenizers.create_tokenizer(model)

  @pytest.mark.parametrize(
    'lines, message',
    [
      (['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'a'], 'missing special.*MASK'),
      ([*tokenizers.SPECIAL_TOKENS, 'a', 'a'], "'a' repeats on lines 6 and 7"),
      ([*tokenizers.SPECIAL_TOKENS, '', 'a'], 'line 6 is blank'),
      ([*tokenizers.SPECIAL_TOKENS, 'a b'], 'line 6.*whitespace'),
      (['[PAD]\t0', '[UNK]\t0'], 'SentencePiece .vocab'),
    ],
  )
  def test_malformed_vocab(self, tmp_path, lines, message):
    path = tmp_path / 'vocab.txt'
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    with pytest.raises(tokenizers.VocabError, match=message) as error:
      tokenizers.create_tokenizer(path)
    assert str(path) in str(error.value)
    assert '\n' not in str(error.value)

  @pytest.mark.network
  def test_lower_case_is_not_a_sentencepiece_option(self, sp_model):
    with pytest.raises(ValueError, match='do_lower_case'):
      tokenizers.create_tokenizer(sp_model, do_lower_case=True)

  def test_train_tokenizer_missing_inputs(self, tmp_path):
    pattern = str(tmp_path / 'missing-*.txt')
    with pytest.raises(FileNotFoundError, match=re.escape(pattern)):
      run_train_tokenizer(
        f'--input_files={pattern}',
        f'--model_prefix={tmp_path / "x"}',
        '--vocab_size=100',
      )
    with pytest.raises(tokenizers.VocabError, match='model_prefix'):
      run_train_tokenizer(f'--input_files={pattern}', '--vocab_size=100')

  @pytest.mark.network
  def test_train_tokenizer_cli_reports_one_line(self, news_files, tmp_path):
    result = subprocess.run(
      [
        sys.executable,
        '-m',
        'data_pipeline.train_tokenizer',
        f'--input_files={news_files},{tmp_path}/absent.txt',
        f'--model_prefix={tmp_path}/x',
        '--vocab_size=100',
      ],
      cwd=pathlib.Path(__file__).parents[1],
      capture_output=True,
      text=True,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith(f"no file matches '{tmp_path}/absent.txt'")
