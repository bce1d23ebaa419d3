"""Test-wide setup, before any test module is imported.

8 simulated CPU devices (set before JAX is imported), a compilation cache
shared by the session's processes, and triton (when installed) loaded
before TensorFlow.
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
