r"""Fine-tune BERT on a task: the command line.

  python -m bertjax.finetune --config=configs/finetune/classification.py \
    --workdir=/tmp/task --config.init=all-minilm-l6-v2 \
    [--config.data.train_file=train.csv --config.data.eval_file=dev.csv ...]

The flags are `bertjax.train`'s (a recipe file with `--config.FIELD=VALUE`
overrides, `--workdir`, and the multi-process flags); the run lives in
`bertjax.tasks`. The workdir's `best/` is the fine-tuned model: give it to
`python -m bertjax.predict`, `bertjax.embed` or `bertjax.convert`.
"""

from bertjax import train


def _finetune(config, workdir: str) -> None:
  from bertjax import tasks

  tasks.finetune(config, workdir)


if __name__ == '__main__':
  train.launch(_finetune)
