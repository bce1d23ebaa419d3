"""Test-wide setup, before any test module is imported.

8 simulated CPU devices (set before JAX is imported), a compilation cache
shared by the session's processes, triton (when installed) loaded before
TensorFlow, and the demo notebook executed once for the modules that
examine its models.
"""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# TensorFlow is only used for tf.data here; keep it off any accelerator and
# quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

# Many tests, and the commands they start, compile the same few programs
# (the tiny recipe's train step, above all); JAX's persistent compilation
# cache lets all but the first load them. One fresh folder per session, so a
# cached program never outlives the code that made it; subprocesses inherit
# it through the environment.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit
  import shutil
  import tempfile

  _cache = tempfile.mkdtemp(prefix='bertjax-test-jax-cache-')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  # Programs that compile in under half a second cost more to write than to
  # compile again.
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

# PyPI's torch (a CUDA build: what `pip install -e '.[test]'` gets on an
# ordinary machine) brings triton, and transformers' BERT imports
# torch._dynamo, which imports triton when it is imported. Loading triton
# (its libtriton.so, which bundles its own LLVM) after TensorFlow has been
# loaded segfaults the process in libtriton's static initialisers, and test
# modules load TensorFlow at collection. Loaded first, triton is safe: load it
# here, before any test module is imported. `import torch` first is not
# enough (torch alone does not import triton). Costs about 0.2 s.
try:
  import triton  # noqa: F401
except ImportError:  # No triton (CPU-only torch, or no torch): no hazard.
  pass

import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
  """Skips hardware-only tests when the hardware is absent."""
  del config
  import jax

  platforms = {d.platform for d in jax.devices()}
  for item in items:
    for mark, platform in (('gpu', 'gpu'), ('tpu', 'tpu')):
      if mark in item.keywords and platform not in platforms:
        item.add_marker(pytest.mark.skip(reason=f'needs a {platform.upper()}'))


# ---------------------------------------------------------------------------
# The demo notebook, run once per session: it pretrains the tiny recipe and
# fine-tunes the README's sentiment classifier, and several test modules
# examine what it made instead of training the same models again.

NOTEBOOK = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  'notebooks',
  'bertjax_demo.ipynb',
)

# The README's fine-tuning run (held-out set cut to 512), and the tiny
# recipe for half its steps (clearly above the most-frequent-token baseline
# by then; the 600-step figure is in BENCHMARKS.md). The Hub is out of reach
# here: fill-mask on a Hugging Face directory is tested on converted models.
NOTEBOOK_PARAMETERS = dict(
  PRETRAIN_STEPS=300,
  FINETUNE_EXAMPLES=2048,
  FINETUNE_EPOCHS=2,
  EVAL_EXAMPLES=512,
  PRETRAINED_MLM='',
)


class ExecutedNotebook:
  """A notebook run by `demo_notebook`."""

  def __init__(self, nb, workdir: str, seconds: dict[int, float]):
    self.nb = nb
    self.workdir = workdir  # The notebook's WORKDIR.
    self.seconds = seconds  # Per code cell index.
    with open(os.path.join(workdir, 'summary.json')) as f:
      self.summary = json.load(f)

  def stderr_of(self, marker: str) -> str:
    """The stderr (logs) of the one code cell whose source has `marker`."""
    cells = [c for c in self.nb.cells if marker in c.source]
    assert len(cells) == 1, marker
    return ''.join(
      o.text
      for o in cells[0].outputs
      if o.output_type == 'stream' and o.name == 'stderr'
    )


def with_parameters(nb, values: dict):
  """`nb` with a cell setting `values` after the one tagged `parameters`
  (papermill's convention)."""
  import nbformat

  tagged = [
    i
    for i, cell in enumerate(nb.cells)
    if 'parameters' in cell.metadata.get('tags', [])
  ]
  assert len(tagged) == 1, 'one cell tagged "parameters"'
  defaults = nb.cells[tagged[0]].source
  for name in values:
    assert re.search(rf'^{name} = ', defaults, re.M), f'no parameter {name}'
  nb.cells.insert(
    tagged[0] + 1,
    nbformat.v4.new_code_cell(
      '\n'.join(f'{k} = {v!r}' for k, v in values.items()),
      metadata={'tags': ['injected-parameters']},
    ),
  )
  return nb


@pytest.fixture(scope='session')
def demo_notebook(tmp_path_factory) -> ExecutedNotebook:
  """The demo notebook executed top to bottom in a real Jupyter kernel with
  `NOTEBOOK_PARAMETERS`; a failing cell fails every test that uses it."""
  import nbformat
  from nbclient import NotebookClient

  root = tmp_path_factory.mktemp('notebook')
  out = str(root / 'out')
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nb = with_parameters(nb, dict(NOTEBOOK_PARAMETERS, WORKDIR=out))
  env = dict(os.environ)
  # One CPU device, as a user's kernel has (the suite simulates 8).
  env['XLA_FLAGS'] = re.sub(
    r'--xla_force_host_platform_device_count=\d+', '', env['XLA_FLAGS']
  )
  client = NotebookClient(
    nb,
    timeout=None,
    kernel_name='python3',
    resources={'metadata': {'path': str(root)}},
  )
  started, seconds = {}, {}
  client.on_cell_execute = lambda cell, cell_index: started.update(
    {cell_index: time.monotonic()}
  )
  client.on_cell_executed = lambda cell, cell_index, execute_reply: (
    seconds.update({cell_index: time.monotonic() - started[cell_index]})
  )
  client.execute(env=env)  # Raises CellExecutionError on a failing cell.
  return ExecutedNotebook(nb, out, seconds)
