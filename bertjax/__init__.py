"""bertjax: BERT pretraining and fine-tuning in JAX/Flax.

Import submodules directly (`from bertjax import model`); this package
imports nothing heavy at import time so CLIs start fast.
"""

__version__ = '0.1.0'
