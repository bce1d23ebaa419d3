"""Extractive QA: windows, offsets, answers, SQuAD scores, and learning."""

import json
import random

import numpy as np
import pytest

from bertjax import metrics, tasks
from data_pipeline import task_data, tokenizers

WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'code', 'is']
WORDS += ['what', '?', '.', ',', 'zurich', 'in', 'city', 'a', 'lies', 'river']
WORDS += ['北', '京', 'and', '##s', 'old', 'new', 'where', 'does', 'it', 'flow']


@pytest.fixture
def tokenizer(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(WORDS) + '\n')
  return tokenizers.create_tokenizer(str(path))


def _squad(path, paragraphs):
  data = [dict(title='t', paragraphs=paragraphs)]
  path.write_text(json.dumps(dict(version='v2.0', data=data)), encoding='utf-8')
  return str(path)


def test_windows_cover_the_context_stride_apart():
  assert task_data.context_windows(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
  assert task_data.context_windows(3, 4, 2) == [(0, 3)]
  assert task_data.context_windows(9, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 9)]


def _example(context, answer, question='where does it flow ?', qid='q'):
  start = context.index(answer) if answer else 0
  return task_data.Example(
    row=qid,
    question=question,
    context=context,
    answers=((answer, start),) if answer else (),
    qid=qid,
  )


def test_answer_labels_map_back_to_the_exact_characters(tokenizer):
  context = 'The old city, Zürich, lies in 北京 and the new city is Zürich.'
  examples = [
    _example(context, a, qid=a) for a in ('Zürich', '北京', 'new city')
  ]
  features = task_data.encode(
    examples, tokenizer, 'qa', 16, doc_stride=3, max_query_length=5
  )
  # 16 tokens leave 5 for context after a 5-token question: many windows.
  assert max(features.example_index) == 2
  assert len(features) > 6
  found = {e.qid: 0 for e in examples}
  for i, label, spans, ids in zip(
    features.example_index,
    features.labels,
    features.char_spans,
    features.input_ids,
    strict=True,
  ):
    assert len(ids) <= 16
    start, end = label
    if (start, end) == (0, 0):
      continue
    found[examples[i].qid] += 1
    assert context[spans[start, 0] : spans[end, 1]] == examples[i].answers[0][0]
  # Every answer lies whole in at least one window; where a window cuts it,
  # that window is labelled (0, 0).
  assert all(found.values())


def _peaked_logits(features, example, answer_start, answer_end):
  """Logits that point at the answer's tokens wherever a window holds it,
  and at [CLS] elsewhere."""
  out = []
  for label in features.labels:
    n = len(features.input_ids[len(out)])
    x = np.zeros((n, 2), np.float32)
    x[label[0], 0] = x[label[1], 1] = 5.0
    out.append(x)
  del example, answer_start, answer_end
  return out


@pytest.mark.parametrize('allow_null', [False, True])
def test_answers_from_logits(tokenizer, allow_null):
  context = 'The old city, Zürich, lies in 北京 and the new city is Zürich.'
  examples = [
    _example(context, '北京', qid='a'),
    _example(context, '', qid='b'),
  ]
  features = task_data.encode(
    examples, tokenizer, 'qa', 16, doc_stride=3, max_query_length=5
  )
  logits = _peaked_logits(features, None, None, None)
  settings = tasks.AnswerSettings(allow_null=allow_null)
  found = tasks.answers(logits, examples, features, settings)
  assert found[0]['answer'] == '北京'
  assert found[0]['start'] == context.index('北京')
  if allow_null:
    assert found[1]['answer'] == ''  # All windows point at [CLS].
  else:
    assert found[1]['answer'] != ''  # v1.1 always answers.


def test_an_answer_not_in_its_context_is_one_line(tmp_path):
  path = _squad(
    tmp_path / 'x.json',
    [
      dict(
        context='It flows north.',
        qas=[
          dict(
            id='q7',
            question='Where?',
            answers=[dict(text='south', answer_start=9)],
          )
        ],
      )
    ],
  )
  with pytest.raises(
    task_data.DataError, match=r"question q7: answer 'south' at 9 is not in"
  ):
    task_data.read_examples(path, 'qa')
  ok = _squad(
    tmp_path / 'y.json',
    [
      dict(
        context='It flows north.',
        qas=[
          dict(
            id='a',
            question='Where?',
            answers=[dict(text='north', answer_start=9)],
          ),
          dict(id='b', question='Why?', answers=[], is_impossible=True),
        ],
      )
    ],
  )
  read = task_data.read_examples(ok, 'qa')
  assert [(e.qid, e.answers) for e in read] == [
    ('a', (('north', 9),)),
    ('b', ()),
  ]


def test_squad_scores_follow_the_official_script():
  scores = metrics.squad_scores(
    ['the Eiffel Tower!', 'Paris France', '', 'x'],
    [['Eiffel Tower'], ['Paris'], [], []],
  )
  # EM: 1, 0, 1 (no answer, none given), 0. F1: 1, 2/3, 1, 0.
  assert scores['exact'] == pytest.approx(2 / 4)
  assert scores['f1'] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
  assert scores['has_ans_f1'] == pytest.approx((1 + 2 / 3) / 2)
  assert scores['no_ans_exact'] == pytest.approx(1 / 2)
  assert metrics.normalize_answer(' An  apple, the pie. ') == 'apple pie'


def _code_questions(path, n, offset, unanswerable=0.0):
  """Real snippets with 'the code is WORD.' hidden among their sentences:
  'what is the code?' asks for WORD (a word of another snippet)."""
  from tests import corpus_readers

  texts = [t.text for t in corpus_readers.english_sentiment()]
  rng = random.Random(offset)
  paragraphs = []
  for i in range(n):
    word = rng.choice(texts[rng.randrange(len(texts))].split()).strip('.,!?"')
    word = word or 'blue'
    parts = [texts[offset + i], texts[offset + n + i]]
    fact = f'The code is {word}.'
    missing = rng.random() < unanswerable
    if not missing:
      parts.insert(rng.randrange(3), fact)
    context = ' '.join(parts)
    answers = (
      []
      if missing
      else [dict(text=word, answer_start=context.index(fact) + 12)]
    )
    paragraphs.append(
      dict(
        context=context,
        qas=[
          dict(
            id=f'q{i}',
            question='What is the code?',
            answers=answers,
            is_impossible=missing,
          )
        ],
      )
    )
  return _squad(path, paragraphs)


@pytest.mark.network
@pytest.mark.slow
def test_qa_learns_on_constructed_questions(tmp_path):
  from configs.finetune import qa

  config = qa.get_config()
  config.init = 'all-minilm-l6-v2'
  config.data.train_file = _code_questions(tmp_path / 'train.json', 256, 0)
  config.data.eval_file = _code_questions(tmp_path / 'eval.json', 128, 4000)
  config.max_seq_length = 96
  config.data.bucketing = False  # One shape: one compilation.
  config.qa.doc_stride = 48
  config.num_train_epochs = 2.0
  config.learning_rate = 1e-4
  result = tasks.finetune(config, str(tmp_path / 'run'))
  # Measured: F1 0.85 from 256 questions (0.91 from 512, which took 1.5x).
  assert result['best/eval/f1'] > 0.5, result
  predictions = [
    json.loads(x)
    for x in (tmp_path / 'run' / tasks.PREDICTIONS_FILE)
    .read_text()
    .splitlines()
  ]
  assert len(predictions) == 128
  # The tuned model answers new questions as it answered during its run,
  # and exports to transformers' BertForQuestionAnswering.
  tuned = tasks.load_tuned(str(tmp_path / 'run'))
  examples = task_data.read_examples(config.data.eval_file, 'qa')[:16]
  answers = tasks.predict(tuned, examples)
  assert [a['answer'] for a in answers] == [
    p['predicted'] for p in predictions[:16]
  ]
  for a in answers:
    if a['answer']:
      start = a['start']
      source = next(e.context for e in examples if e.qid == a['id'])
      assert source[start : start + len(a['answer'])] == a['answer']
  from bertjax import convert

  assert convert.convert(str(tmp_path / 'run'), str(tmp_path / 'hf')) == 'hf'
  hf_config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
  assert hf_config['architectures'] == ['BertForQuestionAnswering']


def test_v2_scores_split_answerable_and_not(tokenizer):
  context = 'The old city, Zürich, lies in 北京 and the new city is Zürich.'
  examples = [
    _example(context, '北京', qid='a'),
    _example(context, '', qid='b'),
  ]
  features = task_data.encode(
    examples, tokenizer, 'qa', 16, doc_stride=3, max_query_length=5
  )
  logits = _peaked_logits(features, None, None, None)
  scores, records = tasks.score(
    'qa', logits, examples, features, [], tasks.AnswerSettings(allow_null=True)
  )
  assert scores == {
    'eval/exact': 1.0,
    'eval/f1': 1.0,
    'eval/has_ans_exact': 1.0,
    'eval/has_ans_f1': 1.0,
    'eval/no_ans_exact': 1.0,
    'eval/no_ans_f1': 1.0,
  }
  assert [r['predicted'] for r in records] == ['北京', '']
