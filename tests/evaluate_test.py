"""bertjax.evaluate's suites: the built-in ones load, bad ones are one line.

(A whole suite runs end to end in finetune_test.py.)"""

import pytest

from bertjax import evaluate


@pytest.mark.parametrize('name', ['demo', 'glue', 'squad', 'conll'])
def test_builtin_suites_make_valid_configs(name):
  tasks = evaluate.load_suite(name)
  assert tasks
  for task in tasks:
    config = evaluate.task_config(task, 'all-minilm-l6-v2', 3)
    assert config.init == 'all-minilm-l6-v2' and config.seed == 3
    reference = task.get('reference')
    if reference:
      value, source = reference
      assert 0 < value < 1 and source


def test_glue_references_cite_their_source():
  by_name = {t['name']: t for t in evaluate.load_suite('glue')}
  assert by_name['mrpc']['metric'] == 'f1'
  assert by_name['cola']['metric'] == 'matthews'
  assert by_name['stsb']['recipe'] == 'regression'
  assert by_name['mnli']['config']['data.eval_split'] == 'validation_matched'


@pytest.mark.parametrize(
  'text, message',
  [
    (
      'def get_suite():\n  return [dict(name="a", recipe="x", metric="f1")]\n',
      "recipe 'x' is not one of",
    ),
    (
      'def get_suite():\n  return [dict(name="a", metric="f1")]\n',
      "no 'recipe'",
    ),
    ('x = 1\n', 'defines no get_suite'),
    (
      'def get_suite():\n  return [dict(name="a", recipe="ner", metric="f1",'
      ' confg={})]\n',
      'unknown field(s) confg',
    ),
  ],
)
def test_bad_suites(tmp_path, text, message):
  path = tmp_path / 'suite.py'
  path.write_text(text)
  with pytest.raises(
    ValueError, match=message.replace('(', r'\(').replace(')', r'\)')
  ):
    evaluate.load_suite(str(path))


def test_bad_override_names_the_task():
  task = dict(
    name='t',
    recipe='classification',
    metric='accuracy',
    config={'data.text_colum': 'x'},
  )
  with pytest.raises(ValueError, match='task t: bad config override'):
    evaluate.task_config(task, 'm', 0)
