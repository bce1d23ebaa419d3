"""data_pipeline: tokenizers, corpora and tf.data input pipelines for BERT.

Nothing here imports JAX or the model: the pipeline hands numpy batches to
the trainer, which alone turns them into global device arrays.
"""
