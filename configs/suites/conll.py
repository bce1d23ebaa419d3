"""CoNLL-2003 English NER (TFDS `conll2003`, prepared once with
`tfds build conll2003` where it can be downloaded), scored on its test
split by entity F1: 3 epochs, batch 32, 5e-5.

  python -m bertjax.evaluate --model=PATH --suite=conll --workdir=/tmp/conll

Reference: BERT-base, CoNLL-2003 test F1 92.4 (Devlin et al. 2018, Table
7, fine-tuning approach), as a fraction.
"""


def get_suite():
  return [
    dict(
      name='conll2003',
      recipe='ner',
      metric='f1',
      reference=(0.924, 'BERT paper, Table 7: BERT-base, CoNLL-2003 test F1'),
      config={
        'data.tfds_name': 'conll2003',
        'data.text_column': 'tokens',
        'data.label_column': 'ner',
        'data.eval_split': 'test',
      },
    ),
  ]
