r"""Training-step speed: throughput, model FLOP/s and MFU against the
device's measured matmul ceiling, beside transformers' PyTorch BERT.

  python benchmarks/train_step.py --size=base --batch_size=8 --seq_len=128 \
    --dtype=bfloat16 [--peer=false] [--packed] [--attention=auto]

In one process it measures:
- the ceiling: the median rate of a large square matmul (15 calls after 3
  warm-up ones), bf16 x bf16 -> f32 and f32 x f32, on the first device;
- bertjax's jitted train step (`bertjax.train_step`: forward, backward,
  AdamW; the MLM head at the masked positions only) on synthetic batches:
  compile time, peak memory from the compiler, and the median of `--steps`
  synchronised steps after warm-up;
- with `--peer` (the default), transformers' `BertForPreTraining` in float32
  and under bf16 autocast on the same batches with torch.optim.AdamW, its
  MLM head at the masked positions too, in rounds alternating with ours so
  machine load hits both alike.

Model FLOPs per example follow `train_step.get_train_flops_per_example`:
matmuls only, 2 per multiply-add, bidirectional attention in full, the MLM
decoder at the masked positions, training = 3x forward. MFU is model FLOP/s
over the measured ceiling of the step's dtype, and over the data-sheet peak
where the device has one.

Needs only jax, flax and optax (plus torch and transformers for the peer),
so it runs on a bare accelerator image (from a checkout without installing:
`PYTHONPATH=. python benchmarks/train_step.py ...`). It ends with one JSON
line.
"""

import argparse
import json
import os
import statistics
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertjax import model, sharding, train_step

VOCAB = 30522
# BERT's AdamW recipe (configs/common.py), spelled out: the config library
# is not needed here.
OPTIM = types.SimpleNamespace(
  name='adamw',
  learning_rate=1e-4,
  end_learning_rate=0.0,
  decay_power=1.0,
  decay_steps=0,
  warmup_steps=10,
  b1=0.9,
  b2=0.999,
  eps=1e-6,
  weight_decay=0.01,
  grad_clip_norm=1.0,
)


def parse_bool(text: str) -> bool:
  if text.lower() in ('1', 'true', 'yes'):
    return True
  if text.lower() in ('0', 'false', 'no'):
    return False
  raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', default='base', help='model preset')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--predictions', type=int, default=20)
  parser.add_argument(
    '--dtype', default='bfloat16', choices=('float32', 'bfloat16')
  )
  parser.add_argument(
    '--attention', default='auto', choices=model.ATTENTION_IMPLEMENTATIONS
  )
  parser.add_argument(
    '--attention_dropout',
    type=float,
    default=0.1,
    help="BERT's 0.1; the fused kernels need 0",
  )
  parser.add_argument('--remat', default='none', help='remat policy')
  parser.add_argument(
    '--scan_layers',
    type=parse_bool,
    default=True,
    help='nn.scan over the layers (the default: compiles faster); false '
    'unrolls them',
  )
  parser.add_argument(
    '--packed',
    action='store_true',
    help='rows of 4 packed examples each (segment-aware attention)',
  )
  parser.add_argument('--steps', type=int, default=6, help='timed, >= 5')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--peer', type=parse_bool, default=True)
  parser.add_argument(
    '--peer_bf16',
    type=parse_bool,
    default=True,
    help='also the bf16-autocast peer (slow on CPUs without AVX512-BF16)',
  )
  parser.add_argument(
    '--matmul_size', type=int, default=0, help='0: 2048 on CPU, else 8192'
  )
  args = parser.parse_args(argv)
  if args.steps < 5:
    parser.error(f'--steps must be >= 5, got {args.steps}')
  if args.size not in model.PRESETS:
    parser.error(
      f'--size {args.size!r} is not one of {", ".join(model.PRESETS)}'
    )
  if args.peer and args.packed:
    parser.error('--packed has no peer; pass --peer=false')
  if args.peer:
    try:
      import torch  # noqa: F401
      import transformers  # noqa: F401
    except ImportError:
      parser.error(
        "--peer needs torch and transformers (pip install '.[test]'); or "
        'pass --peer=false'
      )
  return args


def make_batch(args, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A synthetic pretraining batch; `--packed` puts 4 examples in a row."""
  b, s, p = args.batch_size, args.seq_len, args.predictions
  batch = dict(
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
  if args.packed:
    n = 4
    batch['example_ids'] = (np.arange(s) * n // s + 1)[None].repeat(b, 0)
    batch['example_ids'] = batch['example_ids'].astype(np.int32)
    batch['cls_positions'] = (np.arange(n) * s // n)[None].repeat(b, 0)
    batch['cls_positions'] = batch['cls_positions'].astype(np.int32)
    batch['next_sentence_labels'] = rng.integers(0, 2, (b, n)).astype(np.int32)
    batch['next_sentence_weights'] = np.ones((b, n), np.float32)
  return batch


def matmul_rate(dtype: str, n: int, repeats: int = 15) -> float:
  """Median FLOP/s of an `n` x `n` matmul in `dtype`, float32 accumulation."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(n, n)), dtype) for _ in range(2))
  matmul = jax.jit(
    lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)
  )
  # A few calls first: the first ones after start-up ran at half speed on
  # a CPU (thread pools, page faults), and halved the ceiling.
  for _ in range(3):
    matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times)


def peak_bytes(compiled) -> int:
  """The compiler's peak memory for a compiled step: its arguments and
  outputs (a donated buffer counted once) and its temporaries."""
  memory = compiled.memory_analysis()
  return (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )


def jax_runner(args, batch):
  """(run n synchronised steps -> their times, compile seconds, peak bytes,
  the attention implementation)."""
  config = model.get_config(
    args.size,
    vocab_size=VOCAB,
    dtype=args.dtype,
    attention=args.attention,
    attention_probs_dropout_prob=args.attention_dropout,
    remat_policy=args.remat,
    scan_layers=args.scan_layers,
  )
  module = model.BertForPreTraining(config)
  recipe = types.SimpleNamespace(optim=OPTIM, num_train_steps=1000)
  tx, schedule = train_step.create_optimizer(recipe)
  mesh = sharding.create_mesh((-1, 1, 1), jax.devices()[:1])
  rules = sharding.default_logical_axis_rules()
  state, _ = train_step.create_train_state(
    module, tx, mesh, rules, jax.random.key(0)
  )
  step = train_step.jit_train_step(train_step.Pretraining(module), schedule)
  batch = jax.device_put(batch)
  key = jax.random.key(1)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    attention = model.resolve_attention(config, args.seq_len, False)
    start = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - start
  peak = peak_bytes(compiled)
  holder = {'state': state}

  def run(n):
    times = []
    for _ in range(n):
      start = time.perf_counter()
      holder['state'], metrics = compiled(holder['state'], batch, key)
      jax.block_until_ready((holder['state'], metrics))
      times.append(time.perf_counter() - start)
    return times

  run(args.warmup)
  return run, compile_s, peak, attention


def torch_runner(args, batch, autocast):
  import torch

  import torch_peer  # A sibling script module; it needs torch.

  torch.set_num_threads(os.cpu_count() or 1)
  hf = torch_peer.build_model(model.get_config(args.size, vocab_size=VOCAB))
  hf.train()
  opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
  tensors = torch_peer.to_torch(batch)

  def run(n):
    times = []
    for _ in range(n):
      start = time.perf_counter()
      with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        loss, _ = torch_peer.pretraining_loss(hf, tensors)
      loss.backward()
      opt.step()
      opt.zero_grad()
      times.append(time.perf_counter() - start)
    return times

  run(args.warmup)
  return run


def main(argv=None):
  args = parse_args(argv)
  device = jax.devices()[0]
  n = args.matmul_size or (2048 if device.platform == 'cpu' else 8192)
  ceiling = {dtype: matmul_rate(dtype, n) for dtype in ('bfloat16', 'float32')}
  batch = make_batch(args, np.random.default_rng(0))
  run, compile_s, peak_bytes, attention = jax_runner(args, batch)
  runners = {'bertjax': run}
  if args.peer:
    runners['transformers float32'] = torch_runner(args, batch, False)
    if args.peer_bf16:
      runners['transformers bf16 autocast'] = torch_runner(args, batch, True)
  times = {name: [] for name in runners}
  for _ in range(args.rounds):
    for name, runner in runners.items():
      times[name] += runner(args.steps)
  step_s = {name: statistics.median(t) for name, t in times.items()}
  seq_per_s = {name: args.batch_size / s for name, s in step_s.items()}

  config = model.get_config(args.size, vocab_size=VOCAB)
  step_flops = args.batch_size * train_step.get_train_flops_per_example(
    config, args.seq_len, args.predictions
  )
  model_flops = step_flops / step_s['bertjax']
  measured = ceiling[args.dtype]
  datasheet = train_step.get_peak_flops_per_device(device.device_kind)
  print(
    f'{args.size}, batch {args.batch_size} x {args.seq_len}, '
    f'{args.predictions} predictions, {args.dtype}, attention {attention}'
    f'{", packed" if args.packed else ""}'
    f'{"" if args.scan_layers else ", layers unrolled"}; {device.device_kind} '
    f'({device.platform}), {os.cpu_count()} cores, jax {jax.__version__}'
  )
  print(
    f'ceiling ({n}x{n} matmul): bf16 {ceiling["bfloat16"] / 1e12:.3f}, '
    f'f32 {ceiling["float32"] / 1e12:.3f} TFLOP/s'
  )
  print(
    f'compile {compile_s:.1f} s, peak memory {peak_bytes / 2**30:.2f} GiB, '
    f'model FLOPs per step {step_flops:.3g}'
  )
  for name, rate in seq_per_s.items():
    flops = step_flops / step_s[name]
    print(
      f'{name:28s} {rate:9.2f} seq/s {flops / 1e12:8.3f} TFLOP/s '
      f'({flops / measured:.0%} of the {args.dtype} ceiling)'
    )
  for peer in ('transformers float32', 'transformers bf16 autocast'):
    if peer in seq_per_s:
      print(f'bertjax / {peer}: {seq_per_s["bertjax"] / seq_per_s[peer]:.2f}x')
  result = dict(
    size=args.size,
    batch_size=args.batch_size,
    seq_len=args.seq_len,
    dtype=args.dtype,
    attention=attention,
    packed=args.packed,
    scan_layers=args.scan_layers,
    device=device.device_kind,
    jax=jax.__version__,
    seq_per_s=seq_per_s['bertjax'],
    tokens_per_s=seq_per_s['bertjax'] * args.seq_len,
    model_tflops=model_flops / 1e12,
    mfu_vs_measured=model_flops / measured,
    mfu_vs_datasheet=model_flops / datasheet if datasheet else None,
    ceiling_tflops=measured / 1e12,
    ceiling_f32_tflops=ceiling['float32'] / 1e12,
    compile_s=compile_s,
    peak_memory_gib=peak_bytes / 2**30,
    peer_bf16_seq_per_s=seq_per_s.get('transformers bf16 autocast'),
    peer_f32_seq_per_s=seq_per_s.get('transformers float32'),
  )
  print(json.dumps(result))


if __name__ == '__main__':
  main()
