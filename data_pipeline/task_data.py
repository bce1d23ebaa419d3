"""Fine-tuning data: labelled files -> tokenized examples -> batches.

Task kinds (`KINDS`): `classification` (a label name per text or text pair,
as the file spells it) and `regression` (a float score) from CSV, TSV or
JSONL with named columns; `tagging` (a tag per word) from CoNLL-style files;
`qa` from SQuAD v1.1/v2.0 JSON. Any kind can also come from a prepared TFDS
dataset (`read_tfds`).

A bad row is a `DataError` naming the file and row (line for JSONL and
CoNLL, record for CSV/TSV with the header as record 1), or, with
`skip_bad_rows`, a counted and logged skip.
"""

import csv
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging

from data_pipeline import files

KINDS = ('classification', 'regression', 'tagging', 'qa')
# Shortest padded length of a batch: shorter shapes save little and each
# costs a compilation.
MIN_BUCKET = 16


class DataError(ValueError):
  """A fine-tuning file or row that cannot be used as the task says."""


@dataclasses.dataclass(frozen=True)
class Columns:
  """Which fields of a CSV/TSV/JSONL row hold what."""

  text: str = 'text'
  text_pair: str = ''  # '' = single texts
  label: str = 'label'


@dataclasses.dataclass(frozen=True)
class Example:
  """One labelled example as read: texts, or words and their tags."""

  row: str  # 'FILE:ROW', for messages
  text: str = ''
  text_pair: str | None = None
  label: str | float | None = None  # None: unlabelled (prediction input)
  words: tuple[str, ...] = ()
  tags: tuple[str, ...] = ()
  # QA: the question, its context, the gold answers as (text, character
  # start) pairs (none: unanswerable, SQuAD v2.0) and the question's id.
  question: str = ''
  context: str = ''
  answers: tuple[tuple[str, int], ...] = ()
  qid: str = ''


def file_format(path: str) -> str:
  """'csv', 'tsv', 'jsonl' or 'conll', from the file name."""
  name = path.lower()
  for suffix, kind in (
    ('.csv', 'csv'),
    ('.tsv', 'tsv'),
    ('.jsonl', 'jsonl'),
    ('.json', 'jsonl'),
    ('.conll', 'conll'),
    ('.iob', 'conll'),
    ('.bio', 'conll'),
  ):
    if name.endswith(suffix):
      return kind
  raise DataError(
    f'{path}: unknown file type (expected .csv, .tsv, .jsonl, or .conll / '
    '.iob / .bio for tagging)'
  )


def read_examples(
  path: str,
  kind: str,
  columns: Columns = Columns(),
  labelled: bool = True,
  skip_bad_rows: bool = False,
) -> list[Example]:
  """Reads a task file (formats and bad rows: see the module docstring).

  `labelled=False` reads text to predict on. Raises DataError for a missing
  file, an unknown format, a bad row (unless `skip_bad_rows`), or no rows.
  """
  if kind not in KINDS:
    raise DataError(f'task kind {kind!r} is not one of {", ".join(KINDS)}')
  if not os.path.isfile(path):
    raise DataError(f'{path}: no such file')
  if kind == 'qa':
    rows = _squad_rows(path, labelled)
    fmt = None
  else:
    fmt = file_format(path)
  if fmt is None:
    pass
  elif kind == 'tagging':
    if fmt != 'conll':
      raise DataError(
        f'{path}: tagging reads CoNLL-style files (a word and its tag per '
        'line, a blank line between sentences; .conll, .iob or .bio)'
      )
    rows = _conll_rows(path, labelled)
  elif fmt == 'conll':
    raise DataError(f'{path}: a CoNLL file holds tags, not {kind} examples')
  else:
    rows = _table_rows(path, fmt, columns, kind, labelled)
  out, skipped = [], 0
  for row in rows:
    if isinstance(row, DataError):
      if not skip_bad_rows:
        raise row
      skipped += 1
      if skipped <= 5:
        logging.warning('skipped: %s', row)
      continue
    out.append(row)
  if skipped:
    logging.warning('%s: skipped %d bad row(s)', path, skipped)
  if not out:
    raise DataError(f'{path}: no examples')
  return out


def _open_text(path: str):
  return open(path, encoding='utf-8', newline='')


def _table_rows(path, fmt, columns, kind, labelled) -> Iterator[Any]:
  """Examples (or DataErrors) of a CSV/TSV/JSONL file."""
  wanted = [columns.text] + ([columns.text_pair] if columns.text_pair else [])
  if labelled:
    wanted.append(columns.label)
  try:
    with _open_text(path) as f:
      if fmt == 'jsonl':
        records = _jsonl_records(f, path)
      else:
        records = _csv_records(f, path, fmt, wanted)
      for where, record in records:
        if isinstance(record, DataError):
          yield record
          continue
        yield _example_from_record(record, where, wanted, columns, kind)
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not UTF-8 text ({e.reason})') from None


def _jsonl_records(f, path):
  for number, line in enumerate(f, start=1):
    where = f'{path}:{number}'
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      yield where, DataError(f'{where}: not a JSON line ({e.msg})')
      continue
    if not isinstance(record, dict):
      yield where, DataError(f'{where}: not a JSON object')
      continue
    yield where, record


def _csv_records(f, path, fmt, wanted):
  reader = csv.reader(f, delimiter=',' if fmt == 'csv' else '\t')
  try:
    header = next(reader)
  except StopIteration:
    raise DataError(f'{path}: empty file') from None
  except csv.Error as e:
    raise DataError(f'{path}: record 1: {e}') from None
  missing = [c for c in wanted if c not in header]
  if missing:
    raise DataError(
      f'{path}: no column {", ".join(map(repr, missing))} (columns: '
      f'{", ".join(header)}); set config.data.text_column / '
      'text_pair_column / label_column'
    )
  number = 1
  while True:
    number += 1
    where = f'{path}: record {number}'
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      yield where, DataError(f'{where}: malformed {fmt.upper()} ({e})')
      continue
    if not fields:
      continue
    if len(fields) != len(header):
      yield (
        where,
        DataError(
          f'{where}: {len(fields)} fields, the header has {len(header)}'
        ),
      )
      continue
    yield where, dict(zip(header, fields, strict=True))


def _example_from_record(record, where, wanted, columns, kind):
  for column in wanted:
    if column not in record or record[column] is None:
      return DataError(f'{where}: no {column!r}')
  text = record[columns.text]
  pair = record[columns.text_pair] if columns.text_pair else None
  for name, value in ((columns.text, text), (columns.text_pair, pair)):
    if value is None:
      continue
    if not isinstance(value, str):
      return DataError(f'{where}: {name!r} is not a string')
    if not value.strip():
      return DataError(f'{where}: empty {name!r}')
  label = record.get(columns.label) if columns.label in wanted else None
  if label is not None:
    if kind == 'regression':
      try:
        label = float(label)
      except (TypeError, ValueError):
        return DataError(f'{where}: label {label!r} is not a number')
      if not math.isfinite(label):
        return DataError(f'{where}: label {label!r} is not finite')
    else:
      if isinstance(label, bool) or not isinstance(label, str | int):
        return DataError(f'{where}: label {label!r} is not a name or integer')
      label = str(label).strip()
      if not label:
        return DataError(f'{where}: empty label')
  return Example(row=where, text=text, text_pair=pair, label=label)


def _conll_rows(path, labelled) -> Iterator[Any]:
  """Sentences of a CoNLL-style file: a word and (last column) its tag per
  line, blank lines between sentences, `-DOCSTART-` lines ignored."""
  words, tags, start = [], [], 1
  try:
    with _open_text(path) as f:
      for number, line in enumerate(f, start=1):
        fields = line.split()
        if not fields or fields[0] == '-DOCSTART-':
          if words:
            yield Example(
              row=f'{path}:{start}', words=tuple(words), tags=tuple(tags)
            )
          words, tags, start = [], [], number + 1
          continue
        if labelled and len(fields) < 2:
          yield DataError(f'{path}:{number}: a word without a tag')
          continue
        words.append(fields[0])
        tags.append(fields[-1] if labelled else '')
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not UTF-8 text ({e.reason})') from None
  if words:
    yield Example(row=f'{path}:{start}', words=tuple(words), tags=tuple(tags))


def read_tfds(
  name: str,
  split: str,
  kind: str,
  columns: Columns = Columns(),
  data_dir: str | None = None,
  skip_bad_rows: bool = False,
) -> tuple[list[Example], list[str] | None]:
  """Reads a prepared TFDS dataset as task examples; never downloads.

  Returns the examples, and the label (or tag) names in the dataset's order
  when its label is a `ClassLabel`, else None (GLUE's positive class is its
  label 1: keeping the order keeps F1 GLUE's).

  Features: text (and pair) and label columns, a `ClassLabel` label read as
  its name (GLUE's unlabelled -1 fails); tagging: words `columns.text` (e.g.
  conll2003's `tokens`) and tags `columns.label` (e.g. `ner`); QA: SQuAD's
  `id`, `question`, `context` and `answers` (`text`, `answer_start`).
  """
  import tensorflow_datasets as tfds  # Heavy; only TFDS inputs need it.

  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    ds = tfds.load(name, split=split, data_dir=data_dir or None, download=False)
  except (AssertionError, ValueError, FileNotFoundError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DataError(
      f'TFDS {name} split {split!r}: {first} (prepare it once where it can '
      f'be downloaded: tfds build {name.split("/")[0]})'
    ) from None
  features = builder.info.features
  spec = ds.element_spec
  if kind == 'qa':
    wanted = ['question', 'context', 'answers']
  elif kind == 'tagging':
    wanted = [columns.text, columns.label]
  else:
    wanted = [columns.text, columns.label]
    if columns.text_pair:
      wanted.append(columns.text_pair)
  missing = [w for w in wanted if w not in spec]
  if missing:
    raise DataError(
      f'TFDS {name}: no feature {", ".join(map(repr, missing))} (features: '
      f'{", ".join(sorted(spec))}); set config.data.text_column / '
      'text_pair_column / label_column'
    )

  def names_of(feature):
    inner = getattr(feature, 'feature', feature)  # Sequence(ClassLabel)
    return getattr(inner, 'names', None)

  label_names_ = names_of(features[columns.label]) if kind != 'qa' else None
  out, skipped = [], 0
  for number, record in enumerate(tfds.as_numpy(ds)):
    where = f'{name}/{split}:{number}'
    try:
      out.append(_tfds_example(record, where, kind, columns, label_names_))
    except DataError as e:
      if not skip_bad_rows:
        raise
      skipped += 1
      if skipped <= 5:
        logging.warning('skipped: %s', e)
  if skipped:
    logging.warning('%s/%s: skipped %d bad example(s)', name, split, skipped)
  if not out:
    raise DataError(f'TFDS {name} split {split!r}: no examples')
  return out, list(label_names_) if label_names_ else None


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _tfds_example(record, where, kind, columns, label_names_) -> Example:
  if kind == 'qa':
    answers = record['answers']
    texts = [_text(t) for t in answers['text']]
    starts = [int(x) for x in answers['answer_start']]
    context = _text(record['context'])
    for text, start in zip(texts, starts, strict=True):
      if context[start : start + len(text)] != text:
        raise DataError(
          f'{where}: answer {text!r} at {start} is not in its context'
        )
    return Example(
      row=where,
      question=_text(record['question']),
      context=context,
      answers=tuple(zip(texts, starts, strict=True)),
      qid=_text(record.get('id', where)),
    )

  def label(value):
    value = value.item() if hasattr(value, 'item') else value
    if label_names_ is None:
      return value
    if not 0 <= int(value) < len(label_names_):
      raise DataError(f'{where}: label {value} (unlabelled test data?)')
    return label_names_[int(value)]

  if kind == 'tagging':
    words = tuple(_text(w) for w in record[columns.text])
    tags = tuple(str(label(t)) for t in record[columns.label])
    if len(words) != len(tags) or not words:
      raise DataError(f'{where}: {len(words)} words and {len(tags)} tags')
    return Example(row=where, words=words, tags=tags)
  text = _text(record[columns.text])
  pair = _text(record[columns.text_pair]) if columns.text_pair else None
  if not text.strip() or (pair is not None and not pair.strip()):
    raise DataError(f'{where}: empty text')
  value = label(record[columns.label])
  if kind == 'regression':
    value = float(value)
  else:
    value = str(value)
  return Example(row=where, text=text, text_pair=pair, label=value)


def _squad_rows(path, labelled) -> Iterator[Any]:
  """Questions of a SQuAD v1.1 / v2.0 JSON file (`data` -> `paragraphs` ->
  `context`, `qas` -> `id`, `question`, `answers`, `is_impossible`)."""
  try:
    with open(path, encoding='utf-8') as f:
      root = json.load(f)
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not UTF-8 text ({e.reason})') from None
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: not JSON ({e.msg}, line {e.lineno})') from None
  if not isinstance(root, dict) or not isinstance(root.get('data'), list):
    raise DataError(f'{path}: not SQuAD JSON (no "data" list)')
  for article in root['data']:
    for paragraph in article.get('paragraphs', ()):
      context = paragraph.get('context')
      for qa in paragraph.get('qas', ()):
        qid = str(qa.get('id', '?'))
        where = f'{path}: question {qid}'
        if not isinstance(context, str) or not context.strip():
          yield DataError(f'{where}: empty context')
          continue
        question = qa.get('question')
        if not isinstance(question, str) or not question.strip():
          yield DataError(f'{where}: empty question')
          continue
        answers = []
        for answer in qa.get('answers', ()) if labelled else ():
          text, start = answer.get('text'), answer.get('answer_start')
          if (
            not isinstance(text, str)
            or not isinstance(start, int)
            or context[start : start + len(text)] != text
          ):
            yield DataError(
              f'{where}: answer {text!r} at {start!r} is not in its context'
            )
            break
          answers.append((text, start))
        else:
          if labelled and not answers and not qa.get('is_impossible'):
            yield DataError(f'{where}: no answer and not is_impossible')
            continue
          yield Example(
            row=where,
            question=question,
            context=context,
            answers=tuple(answers),
            qid=qid,
          )


def label_names(examples: Sequence[Example], kind: str) -> list[str]:
  """The sorted label (or tag) names of training examples (none for
  regression and QA)."""
  if kind in ('regression', 'qa'):
    return []
  if kind == 'tagging':
    names = {t for e in examples for t in e.tags}
  else:
    names = {e.label for e in examples}
  return sorted(names, key=_label_order)


def _label_order(name: str):
  # Integers as numbers ('2' < '10'), then names; tags by entity then
  # prefix, 'O' last.
  if name.lstrip('-').isdigit():
    return (0, int(name), '')
  if name[:2] in ('B-', 'I-', 'E-', 'S-'):
    return (1, 0, f'{name[2:]}-{name[0]}')
  if name == 'O':
    return (2, 0, '')
  return (1, 0, name)


def check_labels(
  examples: Sequence[Example], names: Sequence[str], kind: str
) -> None:
  """Raises DataError naming the first example (and word) whose label or
  tag is not one of `names` (the training set's)."""
  known = set(names)
  allowed = ', '.join(names[:20])
  for e in examples:
    for i, tag in enumerate(e.tags):
      if tag not in known:
        raise DataError(
          f'{e.row}: word {i + 1} ({e.words[i]!r}): label {tag!r} is not '
          f'one of the training labels ({allowed})'
        )
    if e.label is not None and kind != 'regression' and e.label not in known:
      raise DataError(
        f'{e.row}: label {e.label!r} is not one of the training labels '
        f'({allowed})'
      )


# Demo tasks on real data (corpora of `data_pipeline.corpora`).
DEMOS = ('sentiment-en',)


def demo_files(name: str, cache_dir: str | None = None) -> tuple[str, str]:
  """The train and eval CSV files of demo task `name`, written once.

  `sentiment-en`: Rotten Tomatoes snippets, columns `text` and `label`
  (`fresh` or `rotten`; `plot` left out), every fifth held out for eval."""
  import bz2  # Only the demo reads a compressed file.

  from data_pipeline import corpora

  if name not in DEMOS:
    raise DataError(f'demo {name!r} is not one of {", ".join(DEMOS)}')
  out_dir = corpora.fetch(name, cache_dir)
  train, held_out = out_dir / 'train.csv', out_dir / 'eval.csv'
  if train.exists() and held_out.exists():
    return os.fspath(train), os.fspath(held_out)
  source = out_dir / 'rotten_tomatoes_corpus_full.csv.bz2'
  with bz2.open(source, 'rt', encoding='utf-8', newline='') as f:
    rows = [
      (r['text'], r['category'])
      for r in csv.DictReader(f)
      if r['category'] != 'plot'
    ]
  for path, part in (
    (held_out, rows[::5]),
    (train, [r for i, r in enumerate(rows) if i % 5]),
  ):
    # Replaced when complete: a half-written file is never taken as data.
    with files.replacing(os.fspath(path)) as f:
      writer = csv.writer(f)
      writer.writerow(['text', 'label'])
      writer.writerows(part)
  return os.fspath(train), os.fspath(held_out)


@dataclasses.dataclass
class Features:
  """Tokenized examples, ragged: what batches are cut from.

  `input_ids[i]` and `segment_ids[i]` are int32 `[len_i]` with [CLS] and
  [SEP]s; `labels[i]` is an int class, a float score, or (tagging) an int32
  `[len_i]` array, -1 where no label is predicted (specials and word
  continuations); `word_index[i]` (tagging) is each token's word, -1 for
  none. `truncated` counts examples cut to max_seq_length.

  QA: one feature per window; `labels[i]` is int32 `[2]`, the answer's start
  and end token ((0, 0): no answer in this window, or none at all);
  `example_index[i]` is the window's example, `char_spans[i]` int32
  `[len_i, 2]` each token's context characters (-1 outside the context).
  """

  kind: str
  input_ids: list[np.ndarray]
  segment_ids: list[np.ndarray]
  labels: list[Any]
  word_index: list[np.ndarray] | None = None
  truncated: int = 0
  example_index: list[int] | None = None
  char_spans: list[np.ndarray] | None = None

  def __len__(self) -> int:
    return len(self.input_ids)

  @property
  def lengths(self) -> np.ndarray:
    return np.array([len(x) for x in self.input_ids])


def _pair_budget(a: list[int], b: list[int], budget: int):
  """Truncates the longer of a pair first (BERT's `_truncate_seq_pair`)."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    (a if len(a) >= len(b) else b).pop()
  return a, b


def encode(
  examples: Sequence[Example],
  tokenizer: Any,
  kind: str,
  max_seq_length: int,
  label_names_: Sequence[str] = (),
  doc_stride: int = 128,
  max_query_length: int = 64,
) -> Features:
  """Tokenizes examples into BERT inputs (see `Features`).

  Inputs are `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, a word's tag on its
  first piece; `max_seq_length` counts the specials (>= 3). `label_names_`
  are the class or tag names by id (unused for regression and QA). QA: each
  question becomes context windows `doc_stride` tokens apart; a question
  keeps at most `max_query_length` tokens.
  """
  if max_seq_length < 3:
    raise DataError(f'max_seq_length must be >= 3, got {max_seq_length}')
  if kind == 'qa':
    return _encode_qa(
      examples, tokenizer, max_seq_length, doc_stride, max_query_length
    )
  index = {name: i for i, name in enumerate(label_names_)}
  cls, sep = tokenizer.cls_id, tokenizer.sep_id
  out = Features(kind, [], [], [], [] if kind == 'tagging' else None)
  if kind == 'tagging':
    words = [w for e in examples for w in e.words]
    pieces = iter(tokenizer.encode_batch(words))
    for e in examples:
      ids, labels, word_of = [cls], [-1], [-1]
      for w, tag in enumerate(e.tags):
        word_ids = next(pieces)
        ids += word_ids
        labels += [index.get(tag, -1)] + [-1] * (len(word_ids) - 1)
        word_of += [w] * len(word_ids)
      if len(ids) > max_seq_length - 1:
        out.truncated += 1
        ids, labels = ids[: max_seq_length - 1], labels[: max_seq_length - 1]
        word_of = word_of[: max_seq_length - 1]
      out.input_ids.append(np.array([*ids, sep], np.int32))
      out.segment_ids.append(np.zeros(len(ids) + 1, np.int32))
      out.labels.append(np.array([*labels, -1], np.int32))
      out.word_index.append(np.array([*word_of, -1], np.int32))
    return out
  first = tokenizer.encode_batch([e.text for e in examples])
  pairs = [e.text_pair for e in examples]
  has_pairs = any(p is not None for p in pairs)
  second = tokenizer.encode_batch([p or '' for p in pairs]) if has_pairs else []
  for i, e in enumerate(examples):
    if e.text_pair is None:
      a, b = first[i], None
      if len(a) > max_seq_length - 2:
        out.truncated += 1
        a = a[: max_seq_length - 2]
      ids, segments = [cls, *a, sep], [0] * (len(a) + 2)
    else:
      budget = max_seq_length - 3
      if len(first[i]) + len(second[i]) > budget:
        out.truncated += 1
      a, b = _pair_budget(first[i], second[i], budget)
      ids = [cls, *a, sep, *b, sep]
      segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    out.input_ids.append(np.array(ids, np.int32))
    out.segment_ids.append(np.array(segments, np.int32))
    if kind == 'regression':
      out.labels.append(np.float32(e.label if e.label is not None else 0.0))
    else:
      out.labels.append(index.get(e.label, -1))
  return out


def context_windows(
  num_tokens: int, window: int, stride: int
) -> list[tuple[int, int]]:
  """(start, end) token ranges that cover a context of `num_tokens`: each
  `window` long at most, starting `stride` apart (BERT's run_squad.py)."""
  spans, start = [], 0
  while True:
    end = min(start + window, num_tokens)
    spans.append((start, end))
    if end >= num_tokens:
      return spans
    start += min(end - start, stride)


def _encode_qa(examples, tokenizer, max_seq_length, stride, max_query_length):
  if stride < 1 or max_query_length < 1:
    raise DataError(
      f'doc_stride ({stride}) and max_query_length ({max_query_length}) '
      'must be >= 1'
    )
  cls, sep = tokenizer.cls_id, tokenizer.sep_id
  questions = tokenizer.encode_batch([e.question for e in examples])
  contexts = tokenizer.encode_with_offsets([e.context for e in examples])
  out = Features('qa', [], [], [], example_index=[], char_spans=[])
  for i, e in enumerate(examples):
    question = questions[i][:max_query_length]
    context_ids, offsets = contexts[i]
    window = max_seq_length - len(question) - 3
    if window < 1:
      raise DataError(
        f'max_seq_length {max_seq_length} leaves no room for the context '
        f'after a {len(question)}-token question (lower max_query_length)'
      )
    answer = None
    if e.answers:
      text, start = e.answers[0]
      end = start + len(text)
      inside = [t for t, (a, b) in enumerate(offsets) if a < end and b > start]
      if inside:
        answer = (inside[0], inside[-1])
    head = [cls, *question, sep]
    for first, last in context_windows(len(context_ids), window, stride):
      ids = [*head, *context_ids[first:last], sep]
      spans = np.full((len(ids), 2), -1, np.int32)
      spans[len(head) : len(head) + last - first] = offsets[first:last]
      label = [0, 0]
      if answer and first <= answer[0] and answer[1] < last:
        label = [answer[0] - first + len(head), answer[1] - first + len(head)]
      out.input_ids.append(np.array(ids, np.int32))
      segments = np.ones(len(ids), np.int32)
      segments[: len(head)] = 0
      out.segment_ids.append(segments)
      out.labels.append(np.array(label, np.int32))
      out.example_index.append(i)
      out.char_spans.append(spans)
  return out


def bucket_length(longest: int, max_seq_length: int) -> int:
  """The padded length of a batch whose longest example has `longest`
  tokens: the next of 16, 24, 32, 48, 64, 96, ... (powers of two and the
  midpoints between them, so at most a third is padding), at most
  max_seq_length. Each length costs one compilation of the step."""
  size = MIN_BUCKET
  while size < longest:
    size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
  return min(size, max_seq_length)


def make_batch(
  features: Features,
  index: np.ndarray,
  rows: int,
  seq_len: int,
  pad_id: int,
) -> dict[str, np.ndarray]:
  """A padded batch of the examples `index` in `rows` rows of `seq_len`.

  Returns:
    int32 `input_ids`, `input_mask`, `segment_ids` `[rows, seq_len]`;
    `labels` (int32 `[rows]`, float32 `[rows]` for regression, or int32
    `[rows, seq_len]` with -1 where no label counts for tagging); float32
    `example_mask` `[rows]`, 0 on padding rows.
  """
  input_ids = np.full((rows, seq_len), pad_id, np.int32)
  input_mask = np.zeros((rows, seq_len), np.int32)
  segment_ids = np.zeros((rows, seq_len), np.int32)
  tagging = features.kind == 'tagging'
  if tagging:
    labels = np.full((rows, seq_len), -1, np.int32)
  elif features.kind == 'qa':
    labels = np.zeros((rows, 2), np.int32)
  else:
    regression = features.kind == 'regression'
    labels = np.zeros(rows, np.float32 if regression else np.int32)
  example_mask = np.zeros(rows, np.float32)
  for row, i in enumerate(index):
    n = len(features.input_ids[i])
    input_ids[row, :n] = features.input_ids[i]
    input_mask[row, :n] = 1
    segment_ids[row, :n] = features.segment_ids[i]
    if tagging:
      labels[row, :n] = features.labels[i]
    else:
      labels[row] = features.labels[i]
    example_mask[row] = 1.0
  return dict(
    input_ids=input_ids,
    input_mask=input_mask,
    segment_ids=segment_ids,
    labels=labels,
    example_mask=example_mask,
  )


def epoch_batches(
  lengths: np.ndarray,
  batch_size: int,
  seed: int,
  epoch: int,
  bucketing: bool,
) -> list[np.ndarray]:
  """The example indices of each global batch of one training epoch.

  A seeded permutation; with `bucketing`, windows of 32 batches are sorted by
  length before they are cut (similar lengths per batch), and the batches
  then shuffled. The last batch may be short (padded with masked rows).
  """
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(lengths))
  if bucketing:
    window = 32 * batch_size
    order = np.concatenate(
      [
        part[np.argsort(lengths[part], kind='stable')]
        for part in np.split(order, range(window, len(order), window))
      ]
    )
  batches = np.split(order, range(batch_size, len(order), batch_size))
  if bucketing:
    batches = [batches[i] for i in rng.permutation(len(batches))]
  return batches


class TrainBatches(Iterator[dict[str, np.ndarray]]):
  """Endless training batches, epoch after epoch, that resume exactly.

  Every host computes the same global batch order (`epoch_batches`) and
  takes its own rows of each batch, so resuming onto any host count gives the
  same global batches. `position` counts the batches taken; `save`/`restore`
  write and read it with a fingerprint of the data and settings, so a workdir
  of another run is refused.
  """

  def __init__(
    self,
    features: Features,
    global_batch: int,
    seed: int,
    bucketing: bool,
    max_seq_length: int,
    pad_id: int,
    process_index: int = 0,
    process_count: int = 1,
  ):
    if global_batch % process_count:
      raise DataError(
        f'batch_size {global_batch} is not divisible by {process_count} hosts'
      )
    self._features = features
    self._global_batch = global_batch
    self._per_host = global_batch // process_count
    self._host = process_index
    self._seed = seed
    self._bucketing = bucketing
    self._max_seq_length = max_seq_length
    self._pad_id = pad_id
    self._lengths = features.lengths
    self.position = 0
    self._epoch, self._batches = -1, []
    digest = hashlib.sha256()
    for ids in features.input_ids:
      digest.update(ids.tobytes())
    digest.update(
      repr((global_batch, seed, bucketing, max_seq_length)).encode()
    )
    self._fingerprint = digest.hexdigest()[:16]

  @property
  def batches_per_epoch(self) -> int:
    return -(-len(self._features) // self._global_batch)

  def __next__(self) -> dict[str, np.ndarray]:
    epoch, i = divmod(self.position, self.batches_per_epoch)
    if epoch != self._epoch:
      self._epoch = epoch
      self._batches = epoch_batches(
        self._lengths, self._global_batch, self._seed, epoch, self._bucketing
      )
    index = self._batches[i]
    seq_len = (
      bucket_length(int(self._lengths[index].max()), self._max_seq_length)
      if self._bucketing
      else self._max_seq_length
    )
    mine = index[
      self._host * self._per_host : (self._host + 1) * self._per_host
    ]
    self.position += 1
    return make_batch(
      self._features, mine, self._per_host, seq_len, self._pad_id
    )

  def save(self, prefix: str) -> None:
    with open(prefix + '.json', 'w', encoding='utf-8') as f:
      json.dump(dict(position=self.position, fingerprint=self._fingerprint), f)

  def restore(self, prefix: str) -> None:
    with open(prefix + '.json', encoding='utf-8') as f:
      state = json.load(f)
    if state.get('fingerprint') != self._fingerprint:
      raise DataError(
        'the saved input position belongs to other data or batch settings'
      )
    self.position = int(state['position'])


def eval_batches(
  features: Features,
  global_batch: int,
  max_seq_length: int,
  pad_id: int,
  bucketing: bool = True,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """Every example once, in global batches sorted by length (bucketed).

  Yields:
    (the example indices of the global batch, `[global_batch]` with -1 on
    padding rows; this host's rows of the padded batch).
  """
  per_host = global_batch // process_count
  lengths = features.lengths
  order = (
    np.argsort(lengths, kind='stable') if bucketing else np.arange(len(lengths))
  )
  for start in range(0, len(order), global_batch):
    index = order[start : start + global_batch]
    seq_len = (
      bucket_length(int(lengths[index].max()), max_seq_length)
      if bucketing
      else max_seq_length
    )
    padded = np.full(global_batch, -1)
    padded[: len(index)] = index
    mine = padded[process_index * per_host : (process_index + 1) * per_host]
    yield (
      padded,
      make_batch(features, mine[mine >= 0], per_host, seq_len, pad_id),
    )
