r"""How fast the tiny recipe learns, beside transformers' PyTorch BERT.

Trains bertjax's `BertForPreTraining` and transformers' of the same size on
the very same batches (the demo corpus through bertjax's input pipeline,
read once into memory), with the same recipe (`configs/bert_tiny.py`:
AdamW, warmup + linear decay, clipping, weight decay off LayerNorm and
biases), and prints MLM and NSP accuracy over windows of steps, then on
the held-out split:

  python benchmarks/tiny_recipe.py [--steps=600] [--peer=true] \
    [--config.optim.learning_rate=2e-3 ...]

Accuracy is per step on that step's batch before its update (as the
trainer logs it), averaged over each window of `--window` steps. The
majority baseline is always predicting the most frequent token.
"""

import functools
import os
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from bertjax import model, sharding, train_step, trainer
from data_pipeline import pipeline, records

_CONFIG = config_flags.DEFINE_config_file(
  'config',
  os.path.join(os.path.dirname(__file__), '..', 'configs', 'bert_tiny.py'),
  'The recipe (and data) to train.',
  lock_config=True,
)
_STEPS = flags.DEFINE_integer('steps', 600, 'Optimizer steps.')
_WINDOW = flags.DEFINE_integer('window', 50, 'Steps per accuracy window.')
_PEER = flags.DEFINE_bool('peer', True, 'Also train transformers (torch).')
_OURS = flags.DEFINE_bool('ours', True, 'Train bertjax.')


def _read_batches(config, data_files, steps):
  data_config = trainer.pipeline_config(config, data_files, config.batch_size)
  train = pipeline.create_train_iterator(data_config, 0, 1)
  batches = [next(train) for _ in range(steps)]
  evals = []
  for i, batch in enumerate(pipeline.create_eval_iterator(data_config, 0, 1)):
    if i >= config.eval_steps:
      break
    evals.append(batch)
  return batches, evals


def _train_bertjax(bert_config, config, batches, evals):
  module = model.BertForPreTraining(bert_config)
  objective = train_step.Pretraining(module, use_nsp=bool(config.data.nsp))
  tx, schedule = train_step.create_optimizer(config)
  mesh = sharding.create_mesh((-1, 1, 1))
  rules = sharding.default_logical_axis_rules()
  state, _ = train_step.create_train_state(
    module, tx, mesh, rules, jax.random.key(config.seed)
  )
  step = train_step.jit_train_step(objective, schedule)
  evaluate = jax.jit(
    functools.partial(train_step.eval_step, objective=objective)
  )
  history = []
  for batch in batches:
    state, metrics = step(state, batch, jax.random.key(1))
    history.append(jax.device_get(metrics))
  sums = [jax.device_get(evaluate(state.params, b)) for b in evals]
  return history, sums


def _train_torch(bert_config, config, batches, evals):
  import torch

  import torch_peer  # A sibling script module; it needs torch.

  recipe = config.optim
  torch.manual_seed(config.seed)
  torch.set_num_threads(os.cpu_count() or 1)
  hf = torch_peer.build_model(bert_config)
  hf.train()
  decay, no_decay = [], []
  for name, param in hf.named_parameters():
    # As bertjax.train_step.decay_mask: no decay on LayerNorm and biases.
    (
      no_decay if 'LayerNorm' in name or name.endswith('bias') else decay
    ).append(param)
  opt = torch.optim.AdamW(
    [
      dict(params=decay, weight_decay=recipe.weight_decay),
      dict(params=no_decay, weight_decay=0.0),
    ],
    lr=recipe.learning_rate,
    betas=(recipe.b1, recipe.b2),
    eps=recipe.eps,
  )
  _, schedule = train_step.create_optimizer(config)
  history = []
  for number, batch in enumerate(batches):
    for group in opt.param_groups:
      group['lr'] = float(schedule(number))
    loss, sums = torch_peer.pretraining_loss(hf, torch_peer.to_torch(batch))
    loss.backward()
    if recipe.grad_clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(hf.parameters(), recipe.grad_clip_norm)
    opt.step()
    opt.zero_grad()
    history.append(sums)
  hf.eval()
  with torch.no_grad():
    eval_sums = [
      torch_peer.pretraining_loss(hf, torch_peer.to_torch(b))[1] for b in evals
    ]
  return history, eval_sums


def _accuracy(sums, kind='mlm'):
  if kind == 'mlm':
    return sum(s['mlm_correct'] for s in sums) / sum(
      s['mlm_weight'] for s in sums
    )
  return sum(s['nsp_correct'] for s in sums) / sum(s['nsp_count'] for s in sums)


def main(argv):
  del argv
  config = _CONFIG.value
  steps = _STEPS.value
  with tempfile.TemporaryDirectory() as tmp:
    data_files = records.prepare_data(config.data, config.max_seq_length, tmp)
    batches, evals = _read_batches(config, data_files, steps)
  bert_config = trainer.get_model_config(config, data_files.vocab_size)
  config.num_train_steps = steps  # The schedule decays over the run.
  recipe = config.optim
  runs = {}
  trainers = {'bertjax': _train_bertjax} if _OURS.value else {}
  if _PEER.value:
    trainers['transformers'] = _train_torch
  for name, train in trainers.items():
    start = time.perf_counter()
    runs[name] = train(bert_config, config, batches, evals)
    print(
      f'{name}: {steps} steps in {time.perf_counter() - start:.0f} s',
      flush=True,
    )
  print(
    f'tiny recipe: {config.model.size}, vocab {data_files.vocab_size}, batch '
    f'{config.batch_size}, seq {config.max_seq_length}, lr '
    f'{recipe.learning_rate}, warmup {recipe.warmup_steps}, dropout '
    f'{config.model.hidden_dropout_prob}; majority baseline '
    f'{data_files.majority_token_accuracy:.4f}'
  )
  header = 'steps'.ljust(12) + ''.join(f'{n + " mlm/nsp":>26s}' for n in runs)
  print(header)
  window = _WINDOW.value
  for end in range(window, steps + 1, window):
    cells = ''.join(
      f'{_accuracy(h[end - window : end]):>19.4f}'
      f'/{_accuracy(h[end - window : end], "nsp"):.3f}'
      for h, _ in runs.values()
    )
    print(f'{end - window + 1}-{end}'.ljust(12) + cells)
  cells = ''.join(
    f'{_accuracy(e):>19.4f}/{_accuracy(e, "nsp"):.3f}' for _, e in runs.values()
  )
  print('eval'.ljust(12) + cells)


if __name__ == '__main__':
  app.run(main)
