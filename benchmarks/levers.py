r"""Train-step levers, each measured against the step as it is, in one
process (issue #12 §6: predict, change, measure, keep what pays).

  python benchmarks/levers.py --size=base --lever=chunked_ce
  python benchmarks/levers.py --size=base --lever=bf16_params

The levers, written here and not in the library until one pays:
- `chunked_ce`: the MLM cross-entropy over the vocabulary in
  `--vocab_chunks` slices of the tied decoder (a scan with a running
  log-sum-exp, each slice's scores recomputed in the backward), so the
  `[batch, predictions, vocab]` scores never exist whole.
- `bf16_params`: parameters stored in bfloat16 (`param_dtype`), so no
  matmul casts a float32 weight, with a float32 master copy of them in the
  optimizer state (the update is computed on the master and the params are
  its rounding).

The two steps are compiled once each and timed in rounds that alternate, so
the machine's load hits both alike; their first losses are compared, so a
lever that changed the result shows. Synthetic batches as
`train_step.py`'s; needs only jax, flax and optax. Ends with one JSON line.
"""

import argparse
import dataclasses
import json
import statistics
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import train_step as harness  # The sibling benchmark: batches, the recipe.

from bertjax import model, sharding, train_step


@dataclasses.dataclass(frozen=True)
class ChunkedCrossEntropy(train_step.Pretraining):
  """`Pretraining` with the MLM loss from `chunked_xent` (same sums)."""

  vocab_chunks: int = 6

  def sums(self, params, batch, rng, deterministic):
    captured = {}

    def encode(m):
      sequence, pooled = m.bert(
        batch['input_ids'],
        batch['input_mask'],
        batch['segment_ids'],
        deterministic,
      )

      def attend(x):  # The head's transform output; the scores are ours.
        captured['x'] = x
        return jnp.zeros((*x.shape[:-1], 1), jnp.float32)

      m.mlm_head(sequence, batch['masked_lm_positions'], attend)
      return captured['x'], m.nsp_head(pooled).astype(jnp.float32)

    x, nsp_logits = self.module.apply(
      {'params': params},
      method=encode,
      rngs=None if deterministic else {'dropout': rng},
    )
    plain = nn.meta.unbox(params)
    table = plain['bert']['embeddings']['word_embeddings']['embedding']
    bias = plain['mlm_head']['output_bias']
    b, p, h = x.shape
    ids = batch['masked_lm_ids'].reshape(-1)
    xent, best = chunked_xent(
      x.reshape(b * p, h), table, bias, ids, x.dtype, self.vocab_chunks
    )
    weights = batch['masked_lm_weights'].astype(jnp.float32).reshape(-1)
    labels = batch['next_sentence_labels']
    nsp_xent = optax.softmax_cross_entropy_with_integer_labels
    return dict(
      mlm_loss_sum=jnp.sum(xent * weights),
      mlm_weight=jnp.sum(weights),
      mlm_correct=jnp.sum((best == ids) * weights),
      nsp_loss_sum=jnp.sum(nsp_xent(nsp_logits, labels)),
      nsp_correct=jnp.sum(jnp.argmax(nsp_logits, -1) == labels),
      nsp_count=jnp.asarray(labels.shape[0], jnp.float32),
    )


def chunked_xent(x, table, bias, labels, dtype, chunks):
  """Cross-entropy and argmax of `x @ table.T + bias` over the vocabulary
  in `chunks` slices.

  Args:
    x: `[n, hidden]`; table: `[vocab, hidden]`; bias: `[vocab]`;
    labels: int `[n]`; dtype: the matmul dtype; chunks: divides vocab.

  Returns:
    float32 `[n]` losses and int `[n]` argmax ids.
  """
  vocab, hidden = table.shape
  size = vocab // chunks
  slices = (
    table.reshape(chunks, size, hidden),
    bias.reshape(chunks, size),
    jnp.arange(chunks) * size,
  )

  @jax.checkpoint  # Each slice's scores are recomputed, not kept.
  def step(carry, piece):
    top, total, hit, best, best_id = carry
    t, b, start = piece
    scores = model.matmul('nh,vh->nv', x, t, dtype) + b.astype(jnp.float32)
    new_top = jnp.maximum(top, jnp.max(scores, -1))
    total = total * jnp.exp(top - new_top) + jnp.sum(
      jnp.exp(scores - new_top[:, None]), -1
    )
    local = labels - start
    inside = (local >= 0) & (local < size)
    picked = jnp.take_along_axis(
      scores, jnp.clip(local, 0, size - 1)[:, None], -1
    )[:, 0]
    hit = hit + jnp.where(inside, picked, 0.0)
    chunk_best = jnp.max(scores, -1)
    best_id = jnp.where(
      chunk_best > best, jnp.argmax(scores, -1) + start, best_id
    )
    return (new_top, total, hit, jnp.maximum(best, chunk_best), best_id), None

  n = x.shape[0]
  start = (
    jnp.full((n,), -jnp.inf),
    jnp.zeros((n,)),
    jnp.zeros((n,)),
    jnp.full((n,), -jnp.inf),
    jnp.zeros((n,), jnp.int32),
  )
  (top, total, hit, _, best_id), _ = jax.lax.scan(step, start, slices)
  return top + jnp.log(total) - hit, best_id


def float32_master(inner: optax.GradientTransformation):
  """`inner` run on a float32 copy of the (lower-precision) params kept in
  its state; the update makes the params that copy's rounding."""

  def init(params):
    master = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    return master, inner.init(master)

  def update(grads, state, params):
    master, inner_state = state
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    updates, inner_state = inner.update(grads, inner_state, master)
    master = optax.apply_updates(master, updates)
    # p + (master - p), in float32, then rounded to p's dtype.
    updates = jax.tree.map(
      lambda m, p: m - p.astype(jnp.float32), master, params
    )
    return updates, (master, inner_state)

  return optax.GradientTransformation(init, update)


def build(args, lever: str):
  """(compiled step, state, peak bytes) for `lever` ('none' = as it is)."""
  config = model.get_config(
    args.size,
    vocab_size=harness.VOCAB,
    dtype=args.dtype,
    scan_layers=args.scan_layers,
  )
  module = model.BertForPreTraining(config)
  recipe = types.SimpleNamespace(optim=harness.OPTIM, num_train_steps=1000)
  tx, schedule = train_step.create_optimizer(recipe)
  if lever == 'bf16_params':
    tx = float32_master(tx)
  if lever == 'chunked_ce':
    objective = ChunkedCrossEntropy(module, vocab_chunks=args.vocab_chunks)
  else:
    objective = train_step.Pretraining(module)
  mesh = sharding.create_mesh((-1, 1, 1), jax.devices()[:1])
  rules = sharding.default_logical_axis_rules()
  # Both steps start from the same float32 initial params (rounded for
  # bf16_params, whose master copy keeps them whole).
  state, _ = train_step.create_train_state(
    module, tx, mesh, rules, jax.random.key(0)
  )
  if lever == 'bf16_params':
    state = state.replace(
      params=jax.tree.map(lambda p: p.astype(jnp.bfloat16), state.params)
    )
  step = train_step.jit_train_step(objective, schedule)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = step.lower(state, args.batch, jax.random.key(1)).compile()
  return compiled, state, harness.peak_bytes(compiled)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--lever', required=True, choices=('chunked_ce', 'bf16_params')
  )
  parser.add_argument('--size', default='base', choices=list(model.PRESETS))
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--predictions', type=int, default=20)
  parser.add_argument(
    '--dtype', default='bfloat16', choices=('float32', 'bfloat16')
  )
  parser.add_argument('--scan_layers', type=harness.parse_bool, default=True)
  parser.add_argument('--vocab_chunks', type=int, default=6)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=4)
  args = parser.parse_args(argv)
  if harness.VOCAB % args.vocab_chunks:
    parser.error(
      f'--vocab_chunks must divide the vocabulary ({harness.VOCAB}), got '
      f'{args.vocab_chunks}'
    )
  args.packed = False
  args.batch = jax.device_put(
    harness.make_batch(args, np.random.default_rng(0))
  )
  key = jax.random.key(1)
  runs, peaks, losses = {}, {}, {}
  for lever in ('none', args.lever):
    compiled, state, peaks[lever] = build(args, lever)
    state, metrics = compiled(state, args.batch, key)  # Also a warm-up.
    losses[lever] = float(metrics['loss'])
    runs[lever] = [compiled, state]
  times = {lever: [] for lever in runs}
  for _ in range(args.rounds):
    for lever, holder in runs.items():
      for _ in range(args.steps):
        start = time.perf_counter()
        holder[1], metrics = holder[0](holder[1], args.batch, key)
        jax.block_until_ready((holder[1], metrics))
        times[lever].append(time.perf_counter() - start)
  rate = {
    lever: args.batch_size / statistics.median(t) for lever, t in times.items()
  }
  for lever in runs:
    print(
      f'{lever:12s} {rate[lever]:7.3f} seq/s  peak {peaks[lever] / 2**30:.2f} '
      f'GiB  first loss {losses[lever]:.6f}'
    )
  print(
    json.dumps(
      dict(
        size=args.size,
        dtype=args.dtype,
        scan_layers=args.scan_layers,
        lever=args.lever,
        seq_per_s=rate[args.lever],
        baseline_seq_per_s=rate['none'],
        speedup=rate[args.lever] / rate['none'],
        peak_gib=peaks[args.lever] / 2**30,
        baseline_peak_gib=peaks['none'] / 2**30,
        first_loss=losses[args.lever],
        baseline_first_loss=losses['none'],
        device=jax.devices()[0].device_kind,
        jax=jax.__version__,
      )
    )
  )


if __name__ == '__main__':
  main()
