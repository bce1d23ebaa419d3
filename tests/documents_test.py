"""Tests of data_pipeline.documents: formats, sentence splitting, bad input."""

import csv
import json
import os
import re
import tracemalloc

import pytest

from data_pipeline import corpora, documents

import corpus_readers


def _read(paths, stats=None, **options):
  stats = documents.Stats() if stats is None else stats
  docs = list(
    documents.read_documents(
      [str(p) for p in paths], documents.ReadOptions(**options), stats
    )
  )
  return docs, stats


class SplitSentencesTest:
  @pytest.mark.parametrize(
    'text, expected',
    [
      (
        'Mr. Smith paid $3.14 for it. He left at 5 p.m. on Jan. 5. '
        'Then J. R. R. Tolkien wrote! Did he? Yes.',
        [
          'Mr. Smith paid $3.14 for it.',
          'He left at 5 p.m. on Jan. 5.',
          'Then J. R. R. Tolkien wrote!',
          'Did he?',
          'Yes.',
        ],
      ),
      (
        'The U.S. economy grew 2.5% in 2016. Analysts, e.g. Dr. Lee, '
        'disagree... But not all. "Really?" she asked. "Yes." Fine',
        [
          'The U.S. economy grew 2.5% in 2016.',
          'Analysts, e.g. Dr. Lee, disagree...',
          'But not all.',
          '"Really?" she asked.',
          '"Yes."',
          'Fine',
        ],
      ),
      (
        '他说：“今天天气很好。”我们去公园吧！好不好？可以；不过要早点。',
        [
          '他说：“今天天气很好。”',
          '我们去公园吧！',
          '好不好？',
          '可以；',
          '不过要早点。',
        ],
      ),
      (
        'Prices rose 3 pct. in March. 北京今天下雨。Then it cleared!后来晴了。',
        [
          'Prices rose 3 pct. in March.',
          '北京今天下雨。',
          'Then it cleared!',
          '后来晴了。',
        ],
      ),
      (
        # Initials: one capital (any script); one lower-case letter, a glued
        # word or an abbreviation list entry in another case.
        'By É. Zola and X. Li. Plan b. It failed. A ST. Louis fan. '
        'Said,"Sen. Kennedy. Ok.',
        [
          'By É. Zola and X. Li.',
          'Plan b.',
          'It failed.',
          'A ST. Louis fan.',
          'Said,"Sen. Kennedy.',
          'Ok.',
        ],
      ),
      ('  ', []),
      ('no end punctuation', ['no end punctuation']),
    ],
  )
  def test_splits(self, text, expected):
    assert documents.split_sentences(text) == expected

  @pytest.mark.network
  def test_news_articles(self, news_articles):
    """On real English news: sentences end where sentences end."""
    sentences = [
      s for text in news_articles for s in documents.split_sentences(text)
    ]
    assert len(sentences) > 5000
    # No sentence ends on a title or initial (the splitter's main risk).
    ends_on_title = [
      s for s in sentences if re.search(r'\b(Mr|Mrs|Dr|Sen|Gov)\.$', s)
    ]
    assert not ends_on_title
    # Almost every sentence ends in punctuation (the rest: headlines,
    # bylines and text without a final period).
    ended = sum(bool(re.search(r'[.!?][”’"\')]*$', s)) for s in sentences)
    assert ended / len(sentences) > 0.97
    words = sum(len(s.split()) for s in sentences) / len(sentences)
    assert 15 < words < 35

  @pytest.mark.network
  def test_peoples_daily(self, peoples_daily):
    sentences = [
      s for text in peoples_daily for s in documents.split_sentences(text)
    ]
    assert len(sentences) > 2 * len(peoples_daily)
    # Every sentence but a paragraph's last ends in Chinese punctuation.
    inner = [
      s for text in peoples_daily for s in documents.split_sentences(text)[:-1]
    ]
    assert all(re.search('[。！？；][”’」』）》]*$', s) for s in inner)


class FormatsTest:
  def test_bert_format(self, tmp_path):
    path = tmp_path / 'a.txt'
    path.write_text('One.\nTwo.\n\n\n  \nThree.\r\nFour.\n\nFive.')
    docs, stats = _read([path])
    assert docs == [['One.', 'Two.'], ['Three.', 'Four.'], ['Five.']]
    assert (stats.documents, stats.sentences, stats.files) == (3, 5, 1)
    assert stats.bytes == path.stat().st_size
    assert stats.flagged == {documents.FLAG_SINGLE_SENTENCE: 1}

  def test_lines_and_file_formats(self, tmp_path):
    path = tmp_path / 'a.txt'
    path.write_text('First doc. It has two.\n\nSecond doc!\n')
    docs, _ = _read([path], input_format='lines')
    assert docs == [['First doc.', 'It has two.'], ['Second doc!']]
    docs, _ = _read([path], input_format='file')
    assert docs == [['First doc.', 'It has two.', 'Second doc!']]

  def test_jsonl(self, tmp_path):
    path = tmp_path / 'a.jsonl'
    lines = [
      json.dumps({'text': 'A b. C d.\nNew paragraph.', 'id': 1}),
      '{not json',
      json.dumps({'body': 'wrong field'}),
      json.dumps({'text': '   '}),
      '',
      json.dumps({'text': '中文。句子！'}, ensure_ascii=False),
    ]
    path.write_text('\n'.join(lines))
    docs, stats = _read([path])
    assert docs == [['A b.', 'C d.', 'New paragraph.'], ['中文。', '句子！']]
    assert stats.skipped == {
      documents.SKIP_INVALID_JSON: 1,
      documents.SKIP_MISSING_FIELD: 1,
      documents.SKIP_EMPTY_DOCUMENT: 1,
    }
    assert stats.locations[documents.SKIP_INVALID_JSON] == [f'{path}:2']

  def test_csv_with_quoted_newlines(self, tmp_path):
    path = tmp_path / 'a.csv'
    with open(path, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['id', 'text'])
      writer.writerow([1, 'Line one. Still "one".\nLine two, para two.'])
      writer.writerow([2, ''])
      writer.writerow([3, 'Last.'])
    docs, stats = _read([path], text_field='text')
    assert docs == [
      ['Line one.', 'Still "one".', 'Line two, para two.'],
      ['Last.'],
    ]
    assert stats.skipped == {documents.SKIP_EMPTY_DOCUMENT: 1}
    _, stats = _read([path], text_field='body')
    assert stats.skipped[documents.SKIP_MISSING_FIELD] == 1
    assert stats.skipped[documents.SKIP_EMPTY_FILE] == 1

  def test_expand_patterns(self, tmp_path):
    for name in ('b.txt', 'a.txt', 'c.md'):
      (tmp_path / name).write_text('x.\n')
    (tmp_path / 'dir.txt').mkdir()
    stats = documents.Stats()
    files = documents.expand_patterns(
      f'{tmp_path}/*.txt, {tmp_path}/a.txt,', stats
    )
    assert files == [str(tmp_path / 'a.txt'), str(tmp_path / 'b.txt')]
    assert stats.skipped == {documents.SKIP_DIRECTORY: 1}
    assert documents.expand_patterns([f'{tmp_path}/*.md']) == [
      str(tmp_path / 'c.md')
    ]
    # A pattern that matches nothing is a mistake, not an empty input.
    nothing = f'{tmp_path}/nothing*'
    for patterns in (
      nothing,
      [f'{tmp_path}/a.txt', nothing],
      f'{tmp_path}/dir.*',
    ):
      with pytest.raises(FileNotFoundError, match='no file matches'):
        documents.expand_patterns(patterns, documents.Stats())


class BadInputTest:
  def test_invalid_utf8(self, tmp_path):
    path = tmp_path / 'bad.txt'
    path.write_bytes(b'Good line.\nBad \xff\xfe line.\nCut \xe4\xb8 here.\n')
    docs, stats = _read([path])
    assert docs == [
      ['Good line.', 'Bad \ufffd\ufffd line.', 'Cut \ufffd here.']
    ]
    assert stats.flagged[documents.FLAG_INVALID_UTF8] == 2
    docs, stats = _read([path], invalid_utf8='skip')
    assert docs == [['Good line.']]
    assert stats.skipped == {documents.SKIP_INVALID_UTF8: 2}
    assert stats.locations[documents.SKIP_INVALID_UTF8] == [
      f'{path}:2',
      f'{path}:3',
    ]

  def test_empty_and_whitespace_files(self, tmp_path):
    (tmp_path / 'empty.txt').write_bytes(b'')
    (tmp_path / 'blank.txt').write_text('  \n\n\t\n')
    (tmp_path / 'ok.txt').write_text('Only sentence.\n')
    docs, stats = _read(sorted(tmp_path.iterdir()))
    assert docs == [['Only sentence.']]
    assert stats.skipped == {documents.SKIP_EMPTY_FILE: 2}
    assert stats.flagged == {documents.FLAG_SINGLE_SENTENCE: 1}
    assert stats.files == 3

  def test_control_characters(self, tmp_path):
    path = tmp_path / 'ctrl.txt'
    path.write_bytes(
      b'Nul\x00byte and bell\x07.\nVertical\x0btab\x1f.\n'
      b'Line sep\xe2\x80\xa8here \xc2\x85C1.\nTab\tkept.\n'
    )
    docs, stats = _read([path])
    assert docs == [
      [
        'Nul byte and bell .',
        'Vertical tab .',
        'Line sep here  C1.',
        'Tab\tkept.',
      ]
    ]
    assert stats.flagged[documents.FLAG_CONTROL_CHARS] == 3

  def test_mixed_scripts(self, tmp_path):
    path = tmp_path / 'mixed.txt'
    path.write_text(
      'Москва — столица России. 東京は日本の首都です。'
      'Athens is in Greece (Αθήνα). مرحبا بالعالم.\n',
      encoding='utf-8',
    )
    docs, stats = _read([path], input_format='lines')
    assert docs == [
      [
        'Москва — столица России.',
        '東京は日本の首都です。',
        'Athens is in Greece (Αθήνα).',
        'مرحبا بالعالم.',
      ]
    ]
    assert not stats.skipped and not stats.flagged

  @pytest.mark.parametrize('script', ['latin', 'chinese'])
  def test_ten_megabyte_line_in_bounded_memory(self, tmp_path, script):
    """A 10 MB line with no newline: cut into pieces, split into sentences,
    documents cut at max_document_chars; memory stays far below 10 MB."""
    path = tmp_path / 'long.txt'
    # Long sentences keep the test fast (few objects under tracemalloc).
    unit = (
      'The quick brown fox jumps over the dog' + ' again' * 100 + '. '
      if script == 'latin'
      else '北京是中国的首都，' * 40 + '人口众多。'
    ).encode()
    with open(path, 'wb') as f:
      f.write(unit * (10_000_000 // len(unit)))
    options = documents.ReadOptions(
      chunk_bytes=1 << 16, max_line_bytes=1 << 16, max_document_chars=1 << 18
    )
    stats = documents.Stats()
    tracemalloc.start()
    try:
      sentences = chars = docs = 0
      for doc in documents.read_documents([str(path)], options, stats):
        docs += 1
        sentences += len(doc)
        chars += sum(map(len, doc))
        assert max(map(len, doc)) <= 1 << 16
      _, peak = tracemalloc.get_traced_memory()
    finally:
      tracemalloc.stop()
    # The line as one str would take 10-20 MB.
    assert peak < 3_000_000
    assert stats.bytes == path.stat().st_size
    text = unit.decode()
    # Only a sentence cut at a piece boundary is lost as a whole: its two
    # halves are kept.
    assert sentences >= stats.bytes // len(unit)
    assert chars >= len(text.strip()) * (stats.bytes // len(unit)) * 0.99
    assert docs > 10
    assert stats.flagged[documents.FLAG_LONG_LINE] == 1
    assert stats.flagged[documents.FLAG_LONG_DOCUMENT] == docs - 1
    assert documents.FLAG_INVALID_UTF8 not in stats.flagged

  def test_ten_megabyte_json_record_is_skipped(self, tmp_path):
    path = tmp_path / 'long.jsonl'
    with open(path, 'w') as f:
      f.write(json.dumps({'text': 'Short one.'}) + '\n')
      f.write(json.dumps({'text': 'word ' * 2_000_000}) + '\n')
      f.write(json.dumps({'text': 'After it.'}) + '\n')
    docs, stats = _read([path], max_line_bytes=1 << 20)
    assert docs == [['Short one.'], ['After it.']]
    assert stats.skipped[documents.SKIP_LINE_TOO_LONG] == 1
    assert stats.locations[documents.SKIP_LINE_TOO_LONG][0] == f'{path}:2'

  def test_file_vanishes_after_glob(self, tmp_path):
    for name in ('a', 'b', 'c'):
      (tmp_path / f'{name}.txt').write_text(f'Doc {name}.\n')
    stats = documents.Stats()
    paths = documents.expand_patterns(str(tmp_path / '*.txt'), stats)
    os.remove(tmp_path / 'b.txt')
    docs, stats = _read(paths, stats)
    assert docs == [['Doc a.'], ['Doc c.']]
    assert stats.skipped == {documents.SKIP_FILE_NOT_FOUND: 1}
    assert stats.locations[documents.SKIP_FILE_NOT_FOUND] == [
      str(tmp_path / 'b.txt')
    ]

  def test_stats_merge_and_json(self):
    a, b = documents.Stats(), documents.Stats()
    a.skip('x', 'f:1')
    b.skip('x', 'f:2', count=3)
    b.flag('y', 'g:1')
    b.documents = 2
    a.merge(b)
    assert a.to_dict() == {
      'files': 0,
      'bytes': 0,
      'documents': 2,
      'sentences': 0,
      'skipped': {'x': 4},
      'flagged': {'y': 1},
      'locations': {'x': ['f:1', 'f:2'], 'y': ['g:1']},
    }
    json.dumps(a.to_dict())


@pytest.fixture(scope='module')
def news_articles():
  """The first 300 English news articles (real text)."""
  return corpora.news_documents()[:300]


@pytest.fixture(scope='module')
def peoples_daily():
  """500 paragraphs of People's Daily (Jan 1998), as plain text."""
  return corpus_readers.peoples_daily_paragraphs()[:500]
