r"""Training-step throughput of bertjax beside transformers' PyTorch BERT.

Times a full optimizer step (forward, backward, AdamW update) of
`BertForPreTraining` on the same synthetic batch shape in both frameworks,
in the same run, alternating rounds so machine load hits both alike:

  python benchmarks/train_step.py [--size=base] [--batch_size=8] \
    [--seq_len=128] [--steps=5] [--rounds=2]

bertjax runs `bertjax.trainer.train_step` (the step the trainer jits, MLM
head at the masked positions only) in float32 and in bfloat16 compute with
float32 accumulation; the peer runs `transformers.BertForPreTraining`'s
modules with torch.optim.AdamW in float32 and under bf16 autocast, using
the machine's cores (torch.set_num_threads(os.cpu_count())), its MLM head
also at the masked positions only. Prints sequences/s, the
model FLOP/s behind them (bertjax.trainer), and ratios.
"""

import os
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from bertjax import model, sharding, trainer
from configs import common

_SIZE = flags.DEFINE_string('size', 'base', 'Model preset.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Sequences per step.')
_SEQ = flags.DEFINE_integer('seq_len', 128, 'Tokens per sequence.')
_PRED = flags.DEFINE_integer('predictions', 20, 'Masked positions per seq.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Alternating rounds.')
_PEER = flags.DEFINE_bool('peer', True, 'Also time transformers (torch).')

VOCAB = 30522


def _batch(rng):
  b, s, p = _BATCH.value, _SEQ.value, _PRED.value
  return dict(
    input_ids=rng.integers(5, VOCAB, (b, s)).astype(np.int32),
    input_mask=np.ones((b, s), np.int32),
    segment_ids=(np.arange(s)[None] >= s // 2).repeat(b, 0).astype(np.int32),
    masked_lm_positions=np.sort(
      rng.permuted(np.tile(np.arange(1, s), (b, 1)), axis=1)[:, :p], axis=1
    ).astype(np.int32),
    masked_lm_ids=rng.integers(5, VOCAB, (b, p)).astype(np.int32),
    masked_lm_weights=np.ones((b, p), np.float32),
    next_sentence_labels=rng.integers(0, 2, (b,)).astype(np.int32),
  )


def _jax_runner(dtype, batch):
  config = model.get_config(_SIZE.value, vocab_size=VOCAB, dtype=dtype)
  module = model.BertForPreTraining(config)
  recipe = common.get_base_config()
  recipe.num_train_steps, recipe.optim.warmup_steps = 1000, 10
  tx, schedule = trainer.create_optimizer(recipe)
  mesh = sharding.create_mesh((-1, 1, 1))
  rules = sharding.default_logical_axis_rules()
  state, _ = trainer.create_train_state(
    module, tx, mesh, rules, jax.random.key(0)
  )
  step = trainer.jit_train_step(trainer.Pretraining(module), schedule)
  holder = {'state': state}

  def run(n):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      for _ in range(n):
        holder['state'], metrics = step(
          holder['state'], batch, jax.random.key(1)
        )
      jax.block_until_ready(metrics)

  run(1)  # compile
  return run, config


def _torch_runner(autocast, batch):
  import torch

  import torch_peer  # A sibling script module; it needs torch.

  torch.set_num_threads(os.cpu_count() or 1)
  hf = torch_peer.build_model(model.get_config(_SIZE.value, vocab_size=VOCAB))
  hf.train()
  opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
  tensors = torch_peer.to_torch(batch)

  def run(n):
    for _ in range(n):
      with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        loss, _ = torch_peer.pretraining_loss(hf, tensors)
      loss.backward()
      opt.step()
      opt.zero_grad()

  run(1)
  return run


def main(argv):
  del argv
  batch = _batch(np.random.default_rng(0))
  runners = {
    'bertjax float32': _jax_runner('float32', batch)[0],
    'bertjax bfloat16': _jax_runner('bfloat16', batch)[0],
  }
  if _PEER.value:
    runners['transformers float32'] = _torch_runner(False, batch)
    runners['transformers bf16 autocast'] = _torch_runner(True, batch)
  best = {name: float('inf') for name in runners}
  for _ in range(_ROUNDS.value):
    for name, run in runners.items():
      start = time.perf_counter()
      run(_STEPS.value)
      best[name] = min(best[name], (time.perf_counter() - start) / _STEPS.value)
  config = model.get_config(_SIZE.value, vocab_size=VOCAB)
  step_flops = _BATCH.value * trainer.get_train_flops_per_example(
    config, _SEQ.value, _PRED.value
  )
  print(
    f'{_SIZE.value}, batch {_BATCH.value}, seq {_SEQ.value}, '
    f'{_PRED.value} predictions, {os.cpu_count()} cores, '
    f'{jax.devices()[0].device_kind} x {jax.device_count()}'
  )
  for name, seconds in best.items():
    print(
      f'{name:28s} {_BATCH.value / seconds:8.2f} seq/s '
      f'{step_flops / seconds / 1e9:7.1f} GFLOP/s'
    )
  for ours, peer in (
    ('bertjax float32', 'transformers float32'),
    ('bertjax bfloat16', 'transformers bf16 autocast'),
  ):
    if peer in best:
      print(f'{ours} / {peer}: {best[peer] / best[ours]:.2f}x')


if __name__ == '__main__':
  app.run(main)
