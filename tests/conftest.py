"""Test-wide setup: 8 simulated CPU devices, set before JAX is imported."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# TensorFlow is only used for tf.data here; keep it off any accelerator and
# quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

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
