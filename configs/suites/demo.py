"""The demo suite: real English sentiment (Rotten Tomatoes, fresh or
rotten), small enough for a laptop CPU.

  python -m bertjax.evaluate --model=all-minilm-l6-v2 --suite=demo \
    --seeds=3 --workdir=/tmp/eval

A suite file defines `get_suite()`, returning a list of tasks. Each task:

  name       a directory name for its runs
  recipe     classification | regression | ner | qa
             (configs/finetune/<recipe>.py)
  metric     the eval metric reported (accuracy, f1, matthews, pearson, ...)
  config     {'dotted.field': value} overrides of the recipe: data files and
             columns, epochs, learning rate, ...
  reference  optional (value, 'source') of a published figure to show
             beside the result
"""


def get_suite():
  return [
    dict(
      name='sentiment-en',
      recipe='classification',
      metric='accuracy',
      config={
        'data.demo': 'sentiment-en',
        'data.max_train_examples': 2048,
        'data.max_eval_examples': 512,
        'num_train_epochs': 2.0,
        'learning_rate': 1e-4,
      },
    ),
  ]
