"""Model FLOPs of BERT pretraining and the peak FLOP/s of accelerators.

Owns the arithmetic behind `perf/tflops_per_device` and `perf/mfu`. FLOPs
count matmuls only (2 per multiply-add), as MFU conventionally does: the
bidirectional attention in full (every query against every key, no causal
halving) and the MLM decoder only at the masked positions, as the model
computes it. Training is 3x the forward pass (backward = 2x forward).
"""

from bertjax import model

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets. Keys are
# matched as substrings of `jax.Device.device_kind` (lower-cased), longest
# first.
PEAK_FLOPS_PER_DEVICE = {
  'tpu v2': 45e12,
  'tpu v3': 123e12,
  'tpu v4': 275e12,
  'tpu v5 lite': 197e12,
  'tpu v5e': 197e12,
  'tpu v5p': 459e12,
  'tpu v5': 459e12,
  'tpu v6 lite': 918e12,
  'tpu v6e': 918e12,
  'tpu7x': 2307e12,
  'h100': 989e12,
  'h200': 989e12,
  'h800': 989e12,
  'b200': 2250e12,
  'a100': 312e12,
  'a10g': 125e12,
  'l4': 121e12,
  'v100': 125e12,
  't4': 65e12,
}


def get_peak_flops_per_device(device_kind: str, override: float = 0.0) -> float:
  """Peak FLOP/s of one device, or 0 when unknown (MFU is then not reported).

  Args:
    device_kind: `jax.devices()[0].device_kind`.
    override: a user-supplied peak (e.g. measured for a CPU); wins if > 0.
  """
  if override > 0:
    return float(override)
  kind = device_kind.lower()
  for key in sorted(PEAK_FLOPS_PER_DEVICE, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS_PER_DEVICE[key]
  return 0.0


def get_train_flops_per_example(
  config: model.BertConfig,
  seq_len: int,
  num_masked: int,
  nsp: bool = True,
) -> float:
  """Matmul FLOPs of one training example (forward + backward).

  Args:
    config: the model.
    seq_len: sequence length (padding included: it is computed).
    num_masked: MLM predictions per sequence (max_predictions_per_seq).
    nsp: whether the next-sentence head runs.

  Returns:
    FLOPs, 3x the forward count.
  """
  h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
  per_token_layer = (
    2 * 4 * h * h  # query, key, value and output projections
    + 2 * 2 * h * i  # feed-forward in and out
    + 2 * 2 * seq_len * h  # scores QK^T and the weighted sum of V
  )
  encoder = config.num_hidden_layers * seq_len * per_token_layer
  pooler = 2 * h * h
  mlm = num_masked * (2 * h * h + 2 * h * v)
  nsp_head = 2 * h * 2 if nsp else 0
  return 3.0 * (encoder + pooler + mlm + nsp_head)
