"""GLUE dev (TFDS `glue/*`, prepared once with `tfds build glue` where it can
be downloaded), BERT's fine-tuning recipe: 3 epochs, batch 32, 2e-5,
max_seq_length 128.

  python -m bertjax.evaluate --model=PATH --suite=glue --seeds=5 \
    --workdir=/tmp/glue [--tasks=sst2,mrpc]

Every GLUE task but WNLI (whose dev set BERT's authors also leave out).
References: bert-base-uncased on GLUE dev, the median of 5 seeds, from
huggingface/transformers `examples/text-classification/README.md` (the
run_glue.py table), as fractions.
"""

_SOURCE = 'transformers run_glue.py README, bert-base-uncased dev, median of 5'

# name: (recipe, metric, text, pair, eval split, reference)
_TASKS = {
  'cola': ('classification', 'matthews', 'sentence', '', 'validation', 0.4923),
  'sst2': ('classification', 'accuracy', 'sentence', '', 'validation', 0.9197),
  'mrpc': (
    'classification',
    'f1',
    'sentence1',
    'sentence2',
    'validation',
    0.8947,
  ),
  'stsb': (
    'regression',
    'pearson',
    'sentence1',
    'sentence2',
    'validation',
    0.8395,
  ),
  'qqp': (
    'classification',
    'accuracy',
    'question1',
    'question2',
    'validation',
    0.8840,
  ),
  'mnli': (
    'classification',
    'accuracy',
    'premise',
    'hypothesis',
    'validation_matched',
    0.8061,
  ),
  'qnli': (
    'classification',
    'accuracy',
    'question',
    'sentence',
    'validation',
    0.8746,
  ),
  'rte': (
    'classification',
    'accuracy',
    'sentence1',
    'sentence2',
    'validation',
    0.6173,
  ),
}


def get_suite():
  return [
    dict(
      name=name,
      recipe=recipe,
      metric=metric,
      reference=(reference, _SOURCE),
      config={
        'data.tfds_name': f'glue/{name}',
        'data.text_column': text,
        'data.text_pair_column': pair,
        'data.eval_split': split,
        'num_train_epochs': 3.0,
        'learning_rate': 2e-5,
      },
    )
    for name, (recipe, metric, text, pair, split, reference) in _TASKS.items()
  ]
