r"""README.md's table of recipes x Cloud TPU slices, compiled on this host.

  pip install -e '.[tpu]'
  python benchmarks/aot_table.py [--topologies=v5litepod-16,v5p-128] \
    [--recipes='bert_base.py:phase=1,bert_large.py:phase=2;optimizer=lamb']

Compiles each recipe's train step for each slice with `bertjax.aot`, as
the recipe stands (its own mesh, batch and micro-batches), and prints a
Markdown row per pair: peak memory per chip against HBM, or what does not
fit; the compile time here; and the step time, tokens/s and time to train
the recipe's steps at 50% MFU.
"""

import os
import sys

# Before JAX is imported: compile for TPUs on this host's CPU.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import importlib  # noqa: E402

# (bertjax.aot's own flags are defined, not parsed: argparse here.)
from bertjax import aot  # noqa: E402

_RECIPES = (
  'bert_base.py:phase=1',
  'bert_base.py:phase=2',
  'bert_large.py:phase=1',
  'bert_large.py:phase=2',
  'bert_large.py:phase=1;optimizer=lamb',
)


def _row(recipe: str, topology: str) -> str:
  path, _, arg = recipe.partition(':')
  recipe_module = importlib.import_module(f'configs.{path.removesuffix(".py")}')
  config = recipe_module.get_config(arg or None)
  tpu = aot.parse_topology(topology)
  what = f'`{path.removesuffix(".py")}{":" + arg if arg else ""}`'
  try:
    r = aot.compile_train_step(config, tpu, what=recipe)
  except aot.AotError as e:
    message = str(e)
    needed = (
      message.split('needs ')[1].split(' per chip')[0] + ' of '
      if 'needs ' in message
      else ''
    )
    return (
      f'| {what} | {topology} | does not fit ({needed}{tpu.hbm_gib:g} GiB) '
      '| | | | |'
    )
  mesh = 'x'.join(str(v) for v in r.mesh.values())
  return (
    f'| {what} | {topology} | {r.peak / aot.GIB:.1f} of {tpu.hbm_gib:g} GiB '
    f'(mesh {mesh}, batch {r.global_batch}) | {r.compile_s:.0f} s | '
    f'{r.step_s * 1e3:.3g} ms | {r.tokens_per_s / 1e6:.2f} M | '
    f'{r.num_train_steps:,} steps: {aot.format_duration(r.train_hours)} |'
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--topologies', default='v5litepod-16,v5litepod-256,v5p-128'
  )
  parser.add_argument(
    '--recipes',
    default=','.join(_RECIPES),
    help="recipes in configs/ with their arguments, ';' between arguments",
  )
  args = parser.parse_args()
  print(
    '| recipe | slice | peak memory per chip | compile | step at 50% MFU '
    '| tokens/s | time to train |'
  )
  print('|---|---|---|---|---|---|---|')
  for recipe in args.recipes.split(','):
    for topology in args.topologies.split(','):
      print(_row(recipe.replace(';', ','), topology), flush=True)


if __name__ == '__main__':
  main()
