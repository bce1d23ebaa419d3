r"""Turns local text files into a TFDS dataset, offline.

`TextDocumentsBuilder`'s examples are the documents `data_pipeline.documents`
reads (any format, same accounting of bad input), each `{'text': the
document's sentences, one per line}`, in one `train` split. The dataset
then loads like any prepared one, without this module or a download:

  python -m data_pipeline.build_tfds --input_files='corpus/*.txt' \
    --data_dir=/tmp/tfds --name=my_corpus
  tfds.load('my_corpus', split='train', data_dir='/tmp/tfds', download=False)
  python -m data_pipeline.create_pretraining_data --tfds_name=my_corpus \
    --tfds_data_dir=/tmp/tfds ...

The builder class is made per name and never registered (TFDS reads an
unregistered dataset from its files): no name collides with the catalog.
"""

import json
import re
import types
from collections.abc import Sequence

import tensorflow_datasets as tfds
from absl import flags, logging

from data_pipeline import cli, documents

DATASET_VERSION = '1.0.0'
_NAME_RE = re.compile(r'^[a-z][a-z0-9_]*$')


class TextDocumentsBuilder(
  tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """Documents from local (or gs://) text files; made by `create_builder`."""

  VERSION = tfds.core.Version(DATASET_VERSION)
  RELEASE_NOTES = {
    DATASET_VERSION: 'Documents read by data_pipeline.documents.'
  }

  def __init__(
    self, *, paths: Sequence[str], options: documents.ReadOptions, **kwargs
  ):
    """Reads `paths` in this order with `options`; `kwargs` go to
    `tfds.core.GeneratorBasedBuilder` (`data_dir`, ...)."""
    self._paths = list(paths)
    self._options = options
    self.stats = documents.Stats()  # Filled while the dataset is generated.
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        'Documents read from local text files by data_pipeline.documents; '
        'text: the sentences of one document, one per line.'
      ),
      features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    docs = documents.read_documents(self._paths, self._options, self.stats)
    for number, sentences in enumerate(docs):
      yield number, {'text': '\n'.join(sentences)}


def create_builder(
  name: str,
  paths: Sequence[str],
  data_dir: str,
  options: documents.ReadOptions | None = None,
) -> TextDocumentsBuilder:
  """A builder of the dataset `name` (lower snake case, else ValueError) from
  `paths` (expand globs with `documents.expand_patterns`) into `data_dir`;
  its `download_and_prepare()` writes the dataset and fills `builder.stats`."""
  if not _NAME_RE.match(name):
    raise cli.UsageError(f'--name must be lower snake case, not {name!r}')
  # A subclass per name: TFDS takes the dataset name from the class.
  cls = types.new_class(
    'TextDocuments_' + name,
    (TextDocumentsBuilder,),
    {'skip_registration': True},
    lambda namespace: namespace.update(name=name),
  )
  return cls(
    paths=paths, options=options or documents.ReadOptions(), data_dir=data_dir
  )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this CLI's flags (not at import: see create_pretraining_data)."""
  fv = {'flag_values': flag_values}
  flags.DEFINE_list(
    'input_files', None, 'Comma-separated globs (local or gs://).', **fv
  )
  flags.DEFINE_string('data_dir', None, 'The TFDS data_dir.', **fv)
  flags.DEFINE_string('name', 'text_documents', 'TFDS dataset name.', **fv)
  flags.DEFINE_enum(
    'input_format',
    'auto',
    documents.FORMATS,
    'See data_pipeline.documents.FORMATS; auto goes by extension.',
    **fv,
  )
  flags.DEFINE_string(
    'text_field', 'text', 'JSONL key or CSV column of the text.', **fv
  )
  flags.DEFINE_enum(
    'invalid_utf8',
    'replace',
    ['replace', 'skip'],
    'Lines with invalid UTF-8: replace the bad bytes or skip (counted).',
    **fv,
  )


def builder_from_flags(
  argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> TextDocumentsBuilder:
  """The builder the flags describe, its `stats` counting skipped inputs;
  raises ValueError for a bad flag, FileNotFoundError for no input file."""
  del argv
  fv = flag_values
  if not fv.input_files or not fv.data_dir:
    raise cli.UsageError('--input_files and --data_dir are required')
  options = documents.ReadOptions(
    input_format=fv.input_format,
    text_field=fv.text_field,
    invalid_utf8=fv.invalid_utf8,
  )
  stats = documents.Stats()
  paths = documents.expand_patterns(fv.input_files, stats)
  builder = create_builder(fv.name, paths, fv.data_dir, options)
  builder.stats.merge(stats)
  return builder


def build(builder: TextDocumentsBuilder) -> dict:
  """Writes the dataset; prints and returns the accounting of its inputs."""
  builder.download_and_prepare()
  logging.info('Dataset %s in %s', builder.name, builder.data_dir)
  stats = builder.stats.to_dict()
  print(json.dumps(stats, ensure_ascii=False))
  return stats


def main(argv: Sequence[str]) -> None:
  build(builder_from_flags(argv))


if __name__ == '__main__':
  from data_pipeline import cli

  define_flags()
  cli.run(main)
