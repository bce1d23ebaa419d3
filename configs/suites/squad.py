"""SQuAD v1.1 and v2.0 dev (TFDS `squad/v1.1`, `squad/v2.0`, prepared once
with `tfds build squad` where it can be downloaded), BERT's recipe: 2
epochs, batch 32, 3e-5, 384 tokens, stride 128.

  python -m bertjax.evaluate --model=PATH --suite=squad --workdir=/tmp/squad

Reference: BERT-base on SQuAD v1.1 dev, F1 88.5 (Devlin et al. 2018,
Table 2), as a fraction.
"""


def get_suite():
  return [
    dict(
      name='squad-v1.1',
      recipe='qa',
      metric='f1',
      reference=(0.885, 'BERT paper, Table 2: BERT-base, SQuAD v1.1 dev F1'),
      config={'data.tfds_name': 'squad/v1.1'},
    ),
    dict(
      name='squad-v2.0',
      recipe='qa',
      metric='f1',
      config={'data.tfds_name': 'squad/v2.0'},
    ),
  ]
