r"""Fine-tuning speed, with and without length bucketing.

Fine-tunes all-MiniLM-L6-v2 (`bertjax.pretrained`) on the real Rotten
Tomatoes snippets (`data_pipeline.task_data.demo_files('sentiment-en')`)
with the step `python -m bertjax.finetune` runs (`bertjax.tasks`'
classification objective through `train_step.jit_train_step`), and reports,
for batches padded to `--max_seq_length` and for length-bucketed batches:
examples/s, real (non-padding) tokens/s and the padding fraction. Every
batch shape is compiled before timing starts; the rounds alternate the two
settings so that load from other processes hits both alike.

  python benchmarks/finetune.py [--steps=30] [--rounds=2] \
    [--max_seq_length=128] [--batch_size=32]
"""

import time

import jax
from absl import app, flags

from bertjax import model, sharding, tasks, train_step
from configs.finetune import classification
from data_pipeline import task_data, tokenizers

_STEPS = flags.DEFINE_integer('steps', 30, 'Timed steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Rounds per setting.')
_MAX_SEQ_LENGTH = flags.DEFINE_integer('max_seq_length', 128, 'Tokens.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Examples per step.')


def main(argv):
  del argv
  config = classification.get_config()
  with config.unlocked():
    config.init = 'all-minilm-l6-v2'
    config.max_seq_length = _MAX_SEQ_LENGTH.value
    config.batch_size = _BATCH_SIZE.value
  train_file, _ = task_data.demo_files('sentiment-en')
  examples = task_data.read_examples(train_file, 'classification')
  labels = task_data.label_names(examples, 'classification')
  head = tasks.get_head('classification', labels)
  bert_config, params, vocab = tasks.load_init(config, head, jax.random.key(0))
  tokenizer = tokenizers.create_tokenizer(vocab)
  features = task_data.encode(
    examples, tokenizer, 'classification', config.max_seq_length, labels
  )
  run = tasks.derive_run_config(config, 10_000)
  tx, schedule = train_step.create_optimizer(run)
  mesh = sharding.create_mesh((-1, 1, 1))
  rules = sharding.default_logical_axis_rules()
  module = model.create_model(bert_config, head)
  state, _ = train_step.create_train_state(
    module, tx, mesh, rules, jax.random.key(0), params
  )
  step = train_step.jit_train_step(tasks.Classification(module), schedule)
  rng = jax.random.key(1)
  results = {False: [], True: []}
  iterators = {
    b: task_data.TrainBatches(
      features, config.batch_size, 0, b, config.max_seq_length, 0
    )
    for b in (False, True)
  }
  # Compile every shape first: a whole epoch's batches, shapes deduplicated.
  for bucketing, it in iterators.items():
    shapes = set()
    for _ in range(it.batches_per_epoch):
      batch = next(it)
      if batch['input_ids'].shape not in shapes:
        shapes.add(batch['input_ids'].shape)
        state, metrics = step(state, batch, rng)
        jax.block_until_ready(metrics)
    print(f'bucketing={bucketing}: {len(shapes)} batch shapes compiled')
  for _ in range(_ROUNDS.value):
    for bucketing, it in iterators.items():
      batches = [next(it) for _ in range(_STEPS.value)]
      start = time.perf_counter()
      for batch in batches:
        state, metrics = step(state, batch, rng)
      jax.block_until_ready(metrics)
      seconds = time.perf_counter() - start
      real = sum(int(b['input_mask'].sum()) for b in batches)
      cells = sum(b['input_mask'].size for b in batches)
      n = sum(int(b['example_mask'].sum()) for b in batches)
      results[bucketing].append((n / seconds, real / seconds, 1 - real / cells))
  print(
    f'MiniLM-L6 fine-tuning, batch {config.batch_size}, max_seq_length '
    f'{config.max_seq_length}, {jax.devices()[0].device_kind} x '
    f'{jax.device_count()}, best of {_ROUNDS.value} rounds of '
    f'{_STEPS.value} steps:'
  )
  print('| batches | examples/s | real tokens/s | padding |')
  print('|---|---|---|---|')
  for bucketing in (False, True):
    best = max(results[bucketing])
    name = (
      'length-bucketed' if bucketing else f'padded to {config.max_seq_length}'
    )
    print(f'| {name} | {best[0]:.1f} | {best[1]:.0f} | {best[2]:.1%} |')
  ratio = max(results[True])[0] / max(results[False])[0]
  print(f'bucketed / padded examples/s: {ratio:.2f}x')


if __name__ == '__main__':
  app.run(main)
