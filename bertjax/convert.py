r"""Command line: convert a BERT checkpoint between formats.

  python -m bertjax.convert --from=PATH --to=DIR [--to_format=hf|bertjax] \
    [--hf_do_lower_case=true|false]

The source is anything `bertjax.pretrained` loads. `--to_format` defaults
to bertjax, or to hf for a bertjax model or a fine-tuning workdir (whose
best params become the matching transformers class, labels as `id2label`).
Pretraining heads the source lacks are initialised freshly and logged. The
tokenizer file travels along; a bertjax directory does not record
lower-casing, so a cased model exported to hf needs
--hf_do_lower_case=false.
"""

import os

from absl import flags, logging

from bertjax import hf, model, pretrained, workdir
from data_pipeline import cli

_FROM = flags.DEFINE_string(
  'from', None, 'Source: any model path or pretrained model name.'
)
_TO = flags.DEFINE_string('to', None, 'Output directory (new or empty).')
_TO_FORMAT = flags.DEFINE_enum(
  'to_format',
  None,
  ['hf', 'bertjax'],
  'Output format; default: bertjax, or hf for a bertjax source.',
)
# Not --do_lower_case: bertjax.embed defines that, and tests import both.
_HF_DO_LOWER_CASE = flags.DEFINE_bool(
  'hf_do_lower_case',
  None,
  'For --to_format=hf: do_lower_case of tokenizer_config.json; default: as '
  "the source's tokenizer_config.json says, else none (transformers then "
  'lower-cases).',
)


def convert(
  source: str,
  target: str,
  to_format: str | None = None,
  do_lower_case: bool | None = None,
) -> str:
  """Converts the model at `source` (a path or pretrained model name) into
  `target`, a new or empty directory; `to_format` and `do_lower_case` as the
  flags (None: their defaults). Returns the format written."""
  source = pretrained.resolve(source)
  kind = pretrained.detect_format(source)
  head, labels = model.PRETRAINING, None
  if kind == 'training':
    step = workdir.find_step(source)
    head = pretrained.head_of_step(step)
    labels = step.meta.get('task', {}).get('labels') or None
    if do_lower_case is None:
      do_lower_case = step.meta.get('task', {}).get('do_lower_case')
  tuned = head != model.PRETRAINING
  if tuned and to_format == 'bertjax':
    raise cli.UsageError(
      f'{source}: a fine-tuned model converts to hf (its workdir is its '
      'bertjax form)'
    )
  to_format = to_format or ('hf' if kind == 'bertjax' or tuned else 'bertjax')
  if os.path.exists(target) and (
    not os.path.isdir(target) or os.listdir(target)
  ):
    raise FileExistsError(f'{target}: exists and is not an empty directory')
  config, params, tokenizer = pretrained.load(source)
  if tokenizer is None:
    logging.warning('%s has no tokenizer file; writing none', source)
  elif to_format == 'hf' and do_lower_case is None:
    do_lower_case = hf.read_do_lower_case(os.path.dirname(tokenizer))
  pretrained.save(
    target,
    config,
    params,
    tokenizer,
    format=to_format,
    do_lower_case=do_lower_case,
    head=head,
    labels=labels,
  )
  logging.info('converted %s (%s) to %s (%s)', source, kind, target, to_format)
  return to_format


def main(argv: list[str]) -> None:
  del argv
  if not _FROM.value or not _TO.value:
    raise cli.UsageError('--from and --to are required')
  convert(_FROM.value, _TO.value, _TO_FORMAT.value, _HF_DO_LOWER_CASE.value)


if __name__ == '__main__':
  cli.run(main)
