r"""Command line: convert a BERT checkpoint between formats.

  python -m bertjax.convert --from=PATH --to=PATH [--to_format=hf|bertjax] \
    [--hf_do_lower_case=true|false]

The source may be a Hugging Face directory (`config.json`), a bertjax model
directory (`bert_config.json` + `params/`) or an original Google TF
checkpoint (`bert_model.ckpt` prefix, or its directory). `--to_format`
defaults to bertjax, or to hf when the source is a bertjax model. Pretraining
heads that the source lacks (a `BertModel`-only checkpoint) are initialised
freshly and named in the log. The tokenizer file travels along; a bertjax
directory does not record lower-casing (bertjax infers it from the
vocabulary), so for a cased model exported to hf pass --hf_do_lower_case=false,
which transformers' tokenizer needs.
"""

import os

from absl import app, flags, logging

from bertjax import checkpoint, cli, hf_convert

_FROM = flags.DEFINE_string(
  'from', None, 'Source: HF directory, bertjax directory or TF checkpoint.'
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
  """Converts the model at `source` into a new directory `target`.

  Args:
    source: a model in any format `checkpoint.detect_format` recognises.
    target: output directory; must not exist or be empty.
    to_format: 'hf' or 'bertjax'; None picks the other format than a
      bertjax source, else bertjax.
    do_lower_case: for 'hf', what `tokenizer_config.json` says; None copies
      the source's setting, if it has one.

  Returns:
    The format written.

  Raises:
    cli.UserError: an unreadable source, or a non-empty target.
  """
  kind = checkpoint.detect_format(source)
  if to_format is None:
    to_format = 'hf' if kind == 'bertjax' else 'bertjax'
  if os.path.exists(target) and (
    not os.path.isdir(target) or os.listdir(target)
  ):
    raise cli.UserError(f'{target}: exists and is not an empty directory')
  config, params, tokenizer = checkpoint.load_pretrained(source)
  if tokenizer is None:
    logging.warning('%s has no tokenizer file; writing none', source)
  if to_format == 'hf':
    if do_lower_case is None and tokenizer is not None:
      do_lower_case = hf_convert.read_do_lower_case(os.path.dirname(tokenizer))
    hf_convert.save_hf_dir(target, config, params, tokenizer, do_lower_case)
  else:
    checkpoint.save_model(target, config, params, tokenizer)
  logging.info('converted %s (%s) to %s (%s)', source, kind, target, to_format)
  return to_format


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise cli.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _FROM.value or not _TO.value:
    raise cli.UserError('--from and --to are required')
  convert(_FROM.value, _TO.value, _TO_FORMAT.value, _HF_DO_LOWER_CASE.value)


if __name__ == '__main__':
  app.run(cli.run(main), flags_parser=cli.parse_flags)
