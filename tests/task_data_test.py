"""data_pipeline.task_data: files, errors, encoding and batches."""

import json

import numpy as np
import pytest

from data_pipeline import task_data, tokenizers
from tests import corpus_readers

WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
WORDS += ['the', 'film', 'is', 'good', 'bad', 'paris', 'berlin', 'in', 'un']
WORDS += ['##believ', '##able', 'john', 'lives', '.', ',']


@pytest.fixture
def tokenizer(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(WORDS) + '\n')
  return tokenizers.create_tokenizer(str(path))


def _write(path, text):
  path.write_text(text, encoding='utf-8')
  return str(path)


def test_csv_tsv_jsonl_read_named_columns(tmp_path):
  csv_file = _write(
    tmp_path / 'a.csv', 'id,sentence,gold\n1,"the film, is good",pos\n'
  )
  tsv_file = _write(tmp_path / 'a.tsv', 'sentence\tgold\nthe film\tneg\n')
  jsonl_file = _write(
    tmp_path / 'a.jsonl',
    json.dumps({'sentence': 'in paris', 'gold': 3}) + '\n\n',
  )
  columns = task_data.Columns(text='sentence', label='gold')
  read = [
    task_data.read_examples(f, 'classification', columns)
    for f in (csv_file, tsv_file, jsonl_file)
  ]
  assert [(e.text, e.label) for r in read for e in r] == [
    ('the film, is good', 'pos'),
    ('the film', 'neg'),
    ('in paris', '3'),
  ]
  assert read[0][0].row == f'{csv_file}: record 2'


@pytest.mark.parametrize(
  'name, text, kind, message',
  [
    (
      'x.jsonl',
      '{"text": "a", "label": 1}\n{"text": \n',
      'classification',
      r'x.jsonl:2: not a JSON line',
    ),
    (
      'x.csv',
      'text,label\ngood,1\nbad\n',
      'classification',
      r'x.csv: record 3: 1 fields, the header has 2',
    ),
    (
      'x.csv',
      'sentence,label\ngood,1\n',
      'classification',
      r"x.csv: no column 'text' \(columns: sentence, label\)",
    ),
    (
      'x.csv',
      'text,label\n  ,1\n',
      'classification',
      r"x.csv: record 2: empty 'text'",
    ),
    ('x.jsonl', '{"text": "a"}\n', 'classification', r"x.jsonl:1: no 'label'"),
    (
      'x.tsv',
      'text\tlabel\na\tnope\n',
      'regression',
      r"x.tsv: record 2: label 'nope' is not a number",
    ),
    (
      'x.conll',
      'John B-PER\nlives\n',
      'tagging',
      r'x.conll:2: a word without a tag',
    ),
    ('x.txt', 'a\n', 'classification', r'x.txt: unknown file type'),
    ('x.csv', 'text,label\na,b\n', 'tagging', r'tagging reads CoNLL'),
  ],
)
def test_bad_rows_are_one_line_naming_file_and_row(
  tmp_path, name, text, kind, message
):
  path = _write(tmp_path / name, text)
  with pytest.raises(task_data.DataError, match=message) as e:
    task_data.read_examples(path, kind)
  assert '\n' not in str(e.value)


def test_bad_rows_can_be_skipped_and_counted(tmp_path, caplog):
  path = _write(
    tmp_path / 'x.jsonl',
    '{"text": "a", "label": 1}\nbroken\n{"text": "", "label": 0}\n'
    '{"text": "b", "label": 0}\n',
  )
  examples = task_data.read_examples(path, 'classification', skip_bad_rows=True)
  assert [e.text for e in examples] == ['a', 'b']
  assert 'skipped 2 bad row(s)' in caplog.text


def test_eval_label_unseen_in_training_names_the_row(tmp_path):
  train = task_data.read_examples(
    _write(tmp_path / 't.csv', 'text,label\na,pos\nb,neg\n'), 'classification'
  )
  held_out = task_data.read_examples(
    _write(tmp_path / 'e.csv', 'text,label\na,pos\nb,neutral\n'),
    'classification',
  )
  names = task_data.label_names(train, 'classification')
  assert names == ['neg', 'pos']
  with pytest.raises(task_data.DataError, match=r"record 3: label 'neutral'"):
    task_data.check_labels(held_out, names, 'classification')


def test_conll_sentences_and_tag_order(tmp_path):
  path = _write(
    tmp_path / 'x.conll',
    '-DOCSTART- -X- O\n\nJohn NNP B-PER\nlives VBZ O\nin IN O\n'
    'Paris NNP B-LOC\n. . O\n\nBerlin NNP B-LOC\n',
  )
  examples = task_data.read_examples(path, 'tagging')
  assert [e.words for e in examples] == [
    ('John', 'lives', 'in', 'Paris', '.'),
    ('Berlin',),
  ]
  assert examples[0].tags == ('B-PER', 'O', 'O', 'B-LOC', 'O')
  tags = task_data.label_names(examples, 'tagging')
  assert tags == ['B-LOC', 'B-PER', 'O']
  with pytest.raises(
    task_data.DataError, match=r"x.conll:3: word 4 \('Paris'\): label 'B-LOC'"
  ):
    task_data.check_labels(examples, ['B-PER', 'O'], 'tagging')


def test_encode_pairs_and_truncate_the_longer_first(tokenizer):
  example = task_data.Example(
    row='r', text='the film is good', text_pair='paris', label='pos'
  )
  features = task_data.encode(
    [example], tokenizer, 'classification', 7, ['neg', 'pos']
  )
  ids = tokenizer.encode
  expected = [tokenizer.cls_id, *ids('the film is'), tokenizer.sep_id]
  expected += [*ids('paris'), tokenizer.sep_id]
  assert features.input_ids[0].tolist() == expected
  assert features.segment_ids[0].tolist() == [0] * 5 + [1] * 2
  assert features.labels == [1] and features.truncated == 1


def test_encode_tags_on_first_pieces(tokenizer):
  example = task_data.Example(
    row='r',
    words=('John', 'unbelievable', 'Paris'),
    tags=('B-PER', 'O', 'B-LOC'),
  )
  tags = ['B-LOC', 'B-PER', 'O']
  features = task_data.encode([example], tokenizer, 'tagging', 16, tags)
  pieces = tokenizer.tokens(features.input_ids[0])
  assert pieces == [
    '[CLS]',
    'john',
    'un',
    '##believ',
    '##able',
    'paris',
    '[SEP]',
  ]
  assert features.labels[0].tolist() == [-1, 1, 2, -1, -1, 0, -1]
  assert features.word_index[0].tolist() == [-1, 0, 1, 1, 1, 2, -1]
  # Cut to 4 tokens, the last word is lost (and predicted O downstream).
  short = task_data.encode([example], tokenizer, 'tagging', 4, tags)
  assert short.word_index[0].tolist() == [-1, 0, 1, -1]
  assert short.truncated == 1


def _features(n, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, 120, n)
  return task_data.Features(
    'classification',
    [np.arange(k, dtype=np.int32) + 5 for k in lengths],
    [np.zeros(k, np.int32) for k in lengths],
    list(rng.integers(0, 2, n)),
  )


def test_train_batches_resume_exactly_and_split_across_hosts(tmp_path):
  features = _features(301)
  args = (features, 16, 7, True, 128, 0)
  whole = task_data.TrainBatches(*args)
  batches = [next(whole) for _ in range(45)]  # Past two epochs of 19.
  resumed = task_data.TrainBatches(*args)
  for _ in range(11):
    next(resumed)
  resumed.save(str(tmp_path / 'it'))
  fresh = task_data.TrainBatches(*args)
  fresh.restore(str(tmp_path / 'it'))
  for expected in batches[11:]:
    got = next(fresh)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
  hosts = [task_data.TrainBatches(*args, p, 2) for p in range(2)]
  for expected in batches[:20]:
    parts = [next(h) for h in hosts]
    for k in expected:
      np.testing.assert_array_equal(
        np.concatenate([p[k] for p in parts]), expected[k]
      )
  other = task_data.TrainBatches(features, 16, 8, True, 128, 0)
  with pytest.raises(task_data.DataError, match='other data'):
    other.restore(str(tmp_path / 'it'))


def test_every_example_once_per_epoch_and_in_eval():
  features = _features(100)
  it = task_data.TrainBatches(features, 16, 0, True, 128, 0)
  seen = []
  for _ in range(it.batches_per_epoch):
    batch = next(it)
    seen += batch['input_ids'][batch['example_mask'] > 0, 0].tolist()
  assert len(seen) == 100
  counted = []
  for index, batch in task_data.eval_batches(features, 16, 128, 0):
    real = index[index >= 0]
    lengths = batch['input_mask'].sum(1)[: len(real)]
    np.testing.assert_array_equal(lengths, features.lengths[real])
    counted += real.tolist()
  assert sorted(counted) == list(range(100))


def test_bucketing_pads_less(tokenizer):
  features = _features(2000)
  padded = {}
  for bucketing in (False, True):
    it = task_data.TrainBatches(features, 32, 0, bucketing, 128, 0)
    cells = real = 0
    for _ in range(it.batches_per_epoch):
      batch = next(it)
      cells += batch['input_mask'].size
      real += batch['input_mask'].sum()
    padded[bucketing] = 1 - real / cells
  assert padded[True] < padded[False] / 2
  del tokenizer


@pytest.mark.network
def test_demo_files_split_real_sentiment(tmp_path):
  del tmp_path
  train, held_out = task_data.demo_files('sentiment-en')
  train = task_data.read_examples(train, 'classification')
  held_out = task_data.read_examples(held_out, 'classification')
  assert len(train) + len(held_out) == len(corpus_readers.english_sentiment())
  assert len(held_out) == -(-12808 // 5)
  assert task_data.label_names(train, 'classification') == ['fresh', 'rotten']


def _tfds_dataset(data_dir, dataset_name, features, examples):
  """Prepares a TFDS dataset offline (train and validation splits)."""
  import tensorflow_datasets as tfds

  class TinyTask(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = dataset_name
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(features)
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {
        'train': self._generate_examples(0),
        'validation': self._generate_examples(1),
      }

    def _generate_examples(self, part):
      yield from enumerate(examples[part::2])

  TinyTask(data_dir=str(data_dir)).download_and_prepare()


def test_tfds_datasets_by_name(tmp_path):
  import tensorflow_datasets as tfds

  f = tfds.features
  _tfds_dataset(
    tmp_path,
    'tiny_sst',
    dict(
      sentence=f.Text(),
      label=f.ClassLabel(names=['negative', 'positive']),
    ),
    [dict(sentence=f'film {i}', label=i % 2) for i in range(8)],
  )
  columns = task_data.Columns(text='sentence')
  read, names = task_data.read_tfds(
    'tiny_sst', 'train', 'classification', columns, str(tmp_path)
  )
  assert names == ['negative', 'positive']
  # TFDS orders examples by a hash of their keys.
  assert sorted((e.text, e.label) for e in read) == [
    ('film 0', 'negative'),
    ('film 2', 'negative'),
    ('film 4', 'negative'),
    ('film 6', 'negative'),
  ]
  held_out, _ = task_data.read_tfds(
    'tiny_sst', 'validation', 'classification', columns, str(tmp_path)
  )
  assert {e.label for e in held_out} == {'positive'}
  _tfds_dataset(
    tmp_path,
    'tiny_conll',
    dict(
      tokens=f.Sequence(f.Text()),
      ner=f.Sequence(f.ClassLabel(names=['O', 'B-PER', 'I-PER'])),
    ),
    [dict(tokens=['John', 'Smith', 'ran'], ner=[1, 2, 0])] * 2,
  )
  tagged, tags = task_data.read_tfds(
    'tiny_conll',
    'train',
    'tagging',
    task_data.Columns(text='tokens', label='ner'),
    str(tmp_path),
  )
  assert tagged[0].words == ('John', 'Smith', 'ran')
  assert tagged[0].tags == ('B-PER', 'I-PER', 'O')
  assert tags == ['O', 'B-PER', 'I-PER']
  context = 'Bertjax lives in Zürich.'
  _tfds_dataset(
    tmp_path,
    'tiny_squad',
    dict(
      id=f.Text(),
      question=f.Text(),
      context=f.Text(),
      answers=f.Sequence(dict(text=f.Text(), answer_start=np.int32)),
    ),
    [
      dict(
        id=f'q{i}',
        question='Where?',
        context=context,
        answers=dict(text=['Zürich'], answer_start=[17]),
      )
      for i in range(2)
    ],
  )
  qa, _ = task_data.read_tfds(
    'tiny_squad', 'train', 'qa', data_dir=str(tmp_path)
  )
  assert qa[0].answers == (('Zürich', 17),) and qa[0].qid == 'q0'
  with pytest.raises(task_data.DataError, match='TFDS glue/nope') as e:
    task_data.read_tfds(
      'glue/nope', 'train', 'classification', data_dir=str(tmp_path)
    )
  assert '\n' not in str(e.value)
  with pytest.raises(task_data.DataError, match="no feature 'text'"):
    task_data.read_tfds(
      'tiny_sst', 'train', 'classification', data_dir=str(tmp_path)
    )
