"""Fine-tuning: task objectives, the run, and predictions of a tuned model.

`finetune` (the loop of `python -m bertjax.finetune`) puts a fresh
`model.Head` on the encoder of any model `bertjax.pretrained` reads, trains
it on the task's files with the model's own tokenizer through `trainer.fit`,
evaluates every epoch (or every `eval_every_steps`), and keeps the best
evaluation's params in `best/` and its predictions in
`eval_predictions.jsonl`. Task kinds, their loss and eval metrics:

* `classification`: cross-entropy; accuracy, F1, Matthews correlation.
* `regression`: squared error of one score; Pearson, Spearman, MSE.
* `tagging`: cross-entropy of each word's tag at its first piece; entity
  F1 (seqeval semantics) and token accuracy.
* `qa`: extractive (SQuAD v1.1/v2.0): mean of the start and end
  cross-entropies over context windows; the best span over a question's
  windows (`answers`); SQuAD exact match and F1.
"""

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from bertjax import (
  metrics,
  model,
  pretrained,
  sharding,
  train_step,
  trainer,
  workdir,
)
from data_pipeline import files, progress, task_data

PREDICTIONS_FILE = 'eval_predictions.jsonl'
HEAD_KINDS = {
  'classification': 'sequence_classification',
  'regression': 'sequence_classification',
  'tagging': 'token_classification',
  'qa': 'question_answering',
}
# The eval metric that picks the best checkpoint, by task kind.
DEFAULT_BEST_METRIC = {
  'classification': 'accuracy',
  'regression': 'pearson',
  'tagging': 'f1',
  'qa': 'f1',
}


def get_head(kind: str, labels: Sequence[str]) -> model.Head:
  """The head of a task kind with `labels` (classes or tags)."""
  if kind not in HEAD_KINDS:
    raise trainer.TrainingError(
      f'task {kind!r} is not one of {", ".join(HEAD_KINDS)}'
    )
  if kind == 'qa':
    return model.Head(HEAD_KINDS[kind])
  return model.Head(
    HEAD_KINDS[kind], 1 if kind == 'regression' else len(labels)
  )


@dataclasses.dataclass(frozen=True)
class _TaskObjective:
  """Shared by the task objectives: the forward pass and the summaries."""

  module: nn.Module
  summed = ('loss_sum', 'count', 'correct')

  def outputs(self, params, batch, rng=None, deterministic=True):
    return self.module.apply(
      {'params': params},
      batch['input_ids'],
      batch['input_mask'],
      batch['segment_ids'],
      deterministic=deterministic,
      rngs=None if deterministic else {'dropout': rng},
    )

  def loss(self, sums, batch):
    """Mean over the whole batch's real examples."""
    return sums['loss_sum'] / jnp.maximum(jnp.sum(batch['example_mask']), 1.0)

  def summarize(self, sums, prefix):
    count = max(float(sums['count']), 1e-8)
    out = {f'{prefix}/loss': float(sums['loss_sum']) / count}
    if 'correct' in sums:
      out[f'{prefix}/accuracy'] = float(sums['correct']) / count
    return out


@dataclasses.dataclass(frozen=True)
class Classification(_TaskObjective):
  """Mean cross-entropy over the batch's real examples."""

  def sums(self, params, batch, rng, deterministic):
    logits = self.outputs(params, batch, rng, deterministic)['logits']
    mask = batch['example_mask']
    labels = batch['labels']
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return dict(
      loss_sum=jnp.sum(xent * mask),
      count=jnp.sum(mask),
      correct=jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
    )


@dataclasses.dataclass(frozen=True)
class Regression(_TaskObjective):
  """Mean squared error of one score."""

  summed = ('loss_sum', 'count')

  def sums(self, params, batch, rng, deterministic):
    score = self.outputs(params, batch, rng, deterministic)['logits'][:, 0]
    mask = batch['example_mask']
    return dict(
      loss_sum=jnp.sum(jnp.square(score - batch['labels']) * mask),
      count=jnp.sum(mask),
    )


def _tag_weights(batch) -> jax.Array:
  """1 where a token carries a word's tag, in a real example."""
  return (batch['labels'] >= 0) * batch['example_mask'][:, None]


@dataclasses.dataclass(frozen=True)
class Tagging(_TaskObjective):
  """Mean cross-entropy over the tokens that carry a word's tag."""

  def sums(self, params, batch, rng, deterministic):
    logits = self.outputs(params, batch, rng, deterministic)['logits']
    weights = _tag_weights(batch)
    labels = jnp.maximum(batch['labels'], 0)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return dict(
      loss_sum=jnp.sum(xent * weights),
      count=jnp.sum(weights),
      correct=jnp.sum((jnp.argmax(logits, -1) == labels) * weights),
    )

  def loss(self, sums, batch):
    return sums['loss_sum'] / jnp.maximum(jnp.sum(_tag_weights(batch)), 1.0)


@dataclasses.dataclass(frozen=True)
class QuestionAnswering(_TaskObjective):
  """Mean of the start and end cross-entropies (BERT's run_squad.py);
  `correct` counts windows whose start and end are both right."""

  def sums(self, params, batch, rng, deterministic):
    outputs = self.outputs(params, batch, rng, deterministic)
    mask = batch['example_mask']
    xent = optax.softmax_cross_entropy_with_integer_labels
    start, end = batch['labels'][:, 0], batch['labels'][:, 1]
    loss = 0.5 * (
      xent(outputs['start_logits'], start) + xent(outputs['end_logits'], end)
    )
    hit = (jnp.argmax(outputs['start_logits'], -1) == start) & (
      jnp.argmax(outputs['end_logits'], -1) == end
    )
    return dict(
      loss_sum=jnp.sum(loss * mask),
      count=jnp.sum(mask),
      correct=jnp.sum(hit * mask),
    )


OBJECTIVES = {
  'classification': Classification,
  'regression': Regression,
  'tagging': Tagging,
  'qa': QuestionAnswering,
}


def _to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict_logits(
  apply: Callable[[Any, dict], dict],
  params: Any,
  features: task_data.Features,
  global_batch: int,
  max_seq_length: int,
  pad_id: int,
  to_device: Callable[[dict], dict] = lambda batch: batch,
) -> list[np.ndarray]:
  """The `logits` of every example, in example order: float32 `[labels]`
  per text, `[len_i, labels]` per tagged sentence, `[len_i, 2]` (start,
  end) per QA window. `apply(params, batch)` returns the head's outputs;
  `to_device` turns a host's rows into the batch `apply` takes (global
  arrays, in a training run)."""
  out: list[np.ndarray | None] = [None] * len(features)
  with progress.Progress(
    'Predicting', total=len(features), unit='examples'
  ) as bar:
    for index, batch in task_data.eval_batches(
      features,
      global_batch,
      max_seq_length,
      pad_id,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    ):
      # Every host's batch holds a share of global_batch examples.
      bar.update(min(global_batch, len(features) - bar.done))
      outputs = apply(params, to_device(batch))
      if 'logits' in outputs:
        logits = _to_host(outputs['logits'])
      else:
        logits = np.stack(
          [_to_host(outputs['start_logits']), _to_host(outputs['end_logits'])],
          -1,
        )
      for row, i in enumerate(index):
        if i >= 0:
          n = len(features.input_ids[i])
          out[i] = logits[row, :n] if logits.ndim == 3 else logits[row]
  return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def word_tags(
  logits: np.ndarray, word_index: np.ndarray, num_words: int, labels
) -> list[str]:
  """A sentence's predicted tag per word: the tag at the word's first
  piece; words cut off by max_seq_length get 'O'."""
  tags = ['O'] * num_words
  seen = set()
  for token, word in enumerate(word_index):
    if word >= 0 and word not in seen:
      seen.add(word)
      tags[word] = labels[int(np.argmax(logits[token]))]
  return tags


@dataclasses.dataclass(frozen=True)
class AnswerSettings:
  """How QA logits become an answer (BERT's run_squad.py defaults)."""

  max_answer_length: int = 30  # tokens
  n_best_size: int = 20  # start and end candidates per window
  # SQuAD v2.0: answer '' when the null score beats the best span's by more.
  null_score_diff_threshold: float = 0.0
  allow_null: bool = False  # v2.0 (questions may have no answer)


def answers(
  logits: Sequence[np.ndarray],
  examples: Sequence[task_data.Example],
  features: task_data.Features,
  settings: AnswerSettings,
) -> list[dict[str, Any]]:
  """The best answer of each example over its windows: `answer` (a slice
  of the context, '' for no answer), character `start`, and `score` (start
  plus end logit; for no answer, the null score)."""
  best: list[dict[str, Any]] = [
    dict(answer='', start=-1, score=-math.inf, null=math.inf) for _ in examples
  ]
  for x, i, spans in zip(
    logits, features.example_index, features.char_spans, strict=True
  ):
    start_logits, end_logits = x[:, 0], x[:, 1]
    b = best[i]
    b['null'] = min(b['null'], float(start_logits[0] + end_logits[0]))
    in_context = spans[:, 0] >= 0
    k = settings.n_best_size
    starts = [t for t in np.argsort(-start_logits)[:k] if in_context[t]]
    ends = [t for t in np.argsort(-end_logits)[:k] if in_context[t]]
    for s in starts:
      for e in ends:
        if e < s or e - s + 1 > settings.max_answer_length:
          continue
        value = float(start_logits[s] + end_logits[e])
        if value > b['score']:
          context = examples[i].context
          b.update(
            answer=context[spans[s, 0] : spans[e, 1]],
            start=int(spans[s, 0]),
            score=value,
          )
  out = []
  for b in best:
    if settings.allow_null and (
      b['start'] < 0
      or b['null'] - b['score'] > settings.null_score_diff_threshold
    ):
      out.append(dict(answer='', start=-1, score=b['null']))
    else:
      out.append(dict(answer=b['answer'], start=b['start'], score=b['score']))
  return out


def score(
  kind: str,
  logits: Sequence[np.ndarray],
  examples: Sequence[task_data.Example],
  features: task_data.Features,
  labels: Sequence[str],
  qa_settings: AnswerSettings = AnswerSettings(),
) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Eval metrics (`eval/<name>`) and one prediction record per example."""
  records = []
  if kind == 'qa':
    found = answers(logits, examples, features, qa_settings)
    scores = metrics.squad_scores(
      [f['answer'] for f in found],
      [[a for a, _ in e.answers] for e in examples],
    )
    records = [
      dict(
        id=e.qid,
        question=e.question,
        gold=[a for a, _ in e.answers],
        predicted=f['answer'],
        start=f['start'],
      )
      for e, f in zip(examples, found, strict=True)
    ]
  elif kind == 'tagging':
    predicted, gold, losses, count = [], [], 0.0, 0
    for e, x, words, targets in zip(
      examples, logits, features.word_index, features.labels, strict=True
    ):
      tags = word_tags(x, words, len(e.words), labels)
      predicted.append(tags)
      gold.append(list(e.tags))
      records.append(
        dict(words=list(e.words), tags=list(e.tags), predicted=tags)
      )
      real = targets >= 0
      log_probs = _log_softmax(x[real])
      losses -= float(
        np.take_along_axis(log_probs, targets[real][:, None], -1).sum()
      )
      count += int(real.sum())
    scores = metrics.tagging_scores(predicted, gold)
    scores['loss'] = losses / max(count, 1)
  elif kind == 'regression':
    predicted = np.array([float(x[0]) for x in logits])
    gold = np.array([float(e.label) for e in examples])
    scores = metrics.regression_scores(predicted, gold)
    scores['loss'] = scores['mse']
    records = [
      dict(text=e.text, text_pair=e.text_pair, label=e.label, predicted=p)
      for e, p in zip(examples, predicted.tolist(), strict=True)
    ]
  else:
    stacked = np.stack(logits)
    gold = np.array([labels.index(e.label) for e in examples])
    log_probs = _log_softmax(stacked)
    predicted = stacked.argmax(-1)
    scores = metrics.classification_scores(predicted, gold, len(labels))
    scores['loss'] = float(
      -np.take_along_axis(log_probs, gold[:, None], -1).mean()
    )
    for e, p, lp in zip(examples, predicted, log_probs, strict=True):
      records.append(
        dict(
          text=e.text,
          text_pair=e.text_pair,
          label=e.label,
          predicted=labels[int(p)],
          probabilities={
            n: float(v) for n, v in zip(labels, np.exp(lp), strict=True)
          },
        )
      )
  return {f'eval/{k}': float(v) for k, v in scores.items()}, records


def baseline(kind: str, examples, train_examples) -> tuple[str, float] | None:
  """What a model that learnt nothing scores on eval, for the final log."""
  if kind == 'classification':
    counts: dict[str, int] = {}
    for e in train_examples:
      counts[e.label] = counts.get(e.label, 0) + 1
    majority = max(counts, key=counts.get)
    share = sum(e.label == majority for e in examples) / len(examples)
    return f'always {majority!r}', share
  return None


def _read_data(config, cache_dir):
  """(train examples, eval examples, columns, label names in the data's
  own order or None) of `config.data`."""
  d = config.data
  order = None
  columns = task_data.Columns(d.text_column, d.text_pair_column, d.label_column)
  if d.tfds_name:
    if d.train_file or d.eval_file:
      raise trainer.TrainingError(
        'data.tfds_name and data.train_file/eval_file exclude each other'
      )
    read = dict(
      kind=config.task,
      columns=columns,
      data_dir=d.tfds_data_dir or None,
      skip_bad_rows=d.skip_bad_rows,
    )
    train, order = task_data.read_tfds(d.tfds_name, d.train_split, **read)
    held_out = (
      task_data.read_tfds(d.tfds_name, d.eval_split, **read)[0]
      if d.eval_split
      else []
    )
  else:
    train_file, eval_file = d.train_file, d.eval_file
    if not train_file and d.demo:
      if eval_file:
        raise trainer.TrainingError(
          'data.eval_file needs data.train_file (data.demo brings both)'
        )
      train_file, eval_file = task_data.demo_files(d.demo, cache_dir)
    if not train_file:
      raise trainer.TrainingError(
        'no training data: set --config.data.train_file, data.tfds_name '
        'or data.demo'
      )
    read = dict(
      kind=config.task, columns=columns, skip_bad_rows=d.skip_bad_rows
    )
    train = task_data.read_examples(train_file, **read)
    held_out = task_data.read_examples(eval_file, **read) if eval_file else []
  for name, limit in (
    ('train', d.max_train_examples),
    ('eval', d.max_eval_examples),
  ):
    if limit < 0:
      raise trainer.TrainingError(f'data.max_{name}_examples must be >= 0')
  if d.max_train_examples:
    train = train[: d.max_train_examples]
  if d.max_eval_examples:
    held_out = held_out[: d.max_eval_examples]
  return train, held_out, columns, order


def load_init(config, head, rng):
  """(BertConfig, params of `head` with the encoder of `config.init`,
  tokenizer file)."""
  if not config.init:
    raise trainer.TrainingError(
      '--config.init is required: a model directory, TF checkpoint, '
      'training workdir or pretrained model name '
      f'({", ".join(pretrained.PRESETS)})'
    )
  m = config.model
  overrides = dict(
    dtype=m.dtype,
    scan_layers=m.scan_layers,
    remat_policy=m.remat_policy,
    attention=m.attention,
    hidden_dropout_prob=m.hidden_dropout_prob,
    attention_probs_dropout_prob=m.attention_probs_dropout_prob,
  )
  path = pretrained.resolve(config.init)
  bert_config, loaded, tokenizer_file = pretrained.load(path, overrides)
  init = jax.jit(model.init_params, static_argnums=(0, 2))
  params = jax.device_get(nn.unbox(init(bert_config, rng, head)))
  # The encoder comes from the checkpoint; a pooler it lacks stays fresh.
  encoder = dict(params['bert'])
  encoder.update({k: v for k, v in loaded['bert'].items() if k in encoder})
  params = {**params, 'bert': encoder}
  model.check_params(params, bert_config, config.init, head)
  return bert_config, params, tokenizer_file


def derive_run_config(
  config, steps_per_epoch: int
) -> ml_collections.ConfigDict:
  """The fields `trainer` reads, derived from a fine-tuning config."""
  run = ml_collections.ConfigDict(config.to_dict())
  if config.num_train_epochs <= 0:
    raise trainer.TrainingError(
      f'num_train_epochs must be > 0, got {config.num_train_epochs}'
    )
  run.num_train_steps = max(
    1, math.ceil(config.num_train_epochs * steps_per_epoch)
  )
  run.eval_every_steps = config.eval_every_steps or steps_per_epoch
  run.checkpoint_every_steps = config.checkpoint_every_steps or steps_per_epoch
  if not 0 <= config.warmup_proportion < 1:
    raise trainer.TrainingError(
      f'warmup_proportion must be in [0, 1), got {config.warmup_proportion}'
    )
  run.optim.learning_rate = config.learning_rate
  run.optim.weight_decay = config.weight_decay
  run.optim.warmup_steps = round(config.warmup_proportion * run.num_train_steps)
  run.optim.decay_steps = 0
  return run


def finetune(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
  """Fine-tunes `config.init` on a task, in (and resuming from) a workdir.

  `config` is a recipe from `configs/finetune/`. Returns the last train and
  eval metrics, the best eval metrics under `best/...`, and for
  classification `baseline/accuracy`: what always predicting the commonest
  training label scores on eval.
  """
  with workdir.claim(workdir_path) as path:
    return _finetune(config, path)


def _finetune(config: ml_collections.ConfigDict, workdir_path: str) -> dict:
  kind = config.task
  get_head(kind, ['?'])  # Checks the kind before anything is read.
  if config.best_metric and config.best_metric not in _METRIC_NAMES[kind]:
    raise trainer.TrainingError(
      f'best_metric {config.best_metric!r} is not one of '
      f'{", ".join(_METRIC_NAMES[kind])} for {kind}'
    )
  best_metric = 'eval/' + (config.best_metric or DEFAULT_BEST_METRIC[kind])
  train_examples, eval_examples, columns, order = _read_data(config, None)
  labels = task_data.label_names(train_examples, kind)
  if order and kind != 'regression':
    labels = list(order)
  if kind in ('classification', 'tagging') and len(labels) < 2:
    raise trainer.TrainingError(
      f'{config.data.train_file or config.data.demo}: one label only '
      f'({labels}); a classifier needs two or more'
    )
  task_data.check_labels(eval_examples, labels, kind)
  head = get_head(kind, labels)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  bert_config, params, tokenizer_file = load_init(config, head, init_rng)
  if config.max_seq_length > bert_config.max_position_embeddings:
    raise trainer.TrainingError(
      f"max_seq_length {config.max_seq_length} exceeds the model's "
      f'max_position_embeddings {bert_config.max_position_embeddings}'
    )
  do_lower_case = {'': None, 'true': True, 'false': False}.get(
    config.data.do_lower_case
  )
  tokenizer = pretrained.open_tokenizer(
    tokenizer_file, bert_config, do_lower_case, config.init
  )
  qa = config.get('qa') or {}
  qa_settings = AnswerSettings(
    max_answer_length=qa.get('max_answer_length', 30),
    n_best_size=qa.get('n_best_size', 20),
    null_score_diff_threshold=qa.get('null_score_diff_threshold', 0.0),
    # SQuAD v2.0 data (a question without an answer) allows no answer.
    allow_null=any(not e.answers for e in (*train_examples, *eval_examples))
    if kind == 'qa'
    else False,
  )
  encode = dict(
    tokenizer=tokenizer,
    kind=kind,
    max_seq_length=config.max_seq_length,
    label_names_=labels,
    doc_stride=qa.get('doc_stride', 128),
    max_query_length=qa.get('max_query_length', 64),
  )
  train_features = task_data.encode(train_examples, **encode)
  eval_features = (
    task_data.encode(eval_examples, **encode) if eval_examples else None
  )
  logging.info(
    '%s: %d training examples (%d %s), %d eval; labels %s',
    kind,
    len(train_examples),
    len(train_features) if kind == 'qa' else train_features.truncated,
    'context windows' if kind == 'qa' else 'truncated',
    len(eval_examples),
    labels[:20] if labels else 'none',
  )
  steps_per_epoch = -(-len(train_features) // config.batch_size)
  run = derive_run_config(config, steps_per_epoch)
  shape = trainer.compute_run_shape(run)
  tx, schedule = train_step.create_optimizer(run)
  module = model.create_model(bert_config, head)
  objective = OBJECTIVES[kind](module)
  state, state_shardings = train_step.create_train_state(
    module, tx, shape.mesh, shape.rules, init_rng, params
  )
  del params
  train_iter = task_data.TrainBatches(
    train_features,
    shape.global_batch,
    config.seed,
    config.data.bucketing,
    config.max_seq_length,
    tokenizer.pad_id,
    jax.process_index(),
    jax.process_count(),
  )
  task = dict(
    kind=kind,
    labels=labels,
    max_seq_length=config.max_seq_length,
    do_lower_case=getattr(tokenizer, 'do_lower_case', None),
    columns=dataclasses.asdict(columns),
    doc_stride=encode['doc_stride'],
    max_query_length=encode['max_query_length'],
    answers=dataclasses.asdict(qa_settings),
  )
  checkpointer = workdir.Checkpointer(
    workdir_path,
    keep=config.keep_checkpoints,
    meta=dict(
      config=json.loads(config.to_json_best_effort()),
      model=bert_config.to_dict(),
      tokenizer=workdir.keep_tokenizer(workdir_path, tokenizer.path),
      head=head.to_dict(),
      task=task,
    ),
    keep_best=True,
  )
  # What best/ holds (a resumed run's, or none): a new best must beat it.
  best: dict[str, float] = checkpointer.best_metrics() or {}
  try:
    batch_sharding = sharding.batch_sharding(shape.mesh)
    apply = jax.jit(
      lambda p, b: objective.outputs(p, b),
      in_shardings=(state_shardings.params, batch_sharding),
    )

    def evaluate(state, step) -> dict[str, float]:
      if eval_features is None:
        return {}
      logits = predict_logits(
        apply,
        state.params,
        eval_features,
        shape.global_batch,
        config.max_seq_length,
        tokenizer.pad_id,
        lambda b: trainer.make_global(b, batch_sharding),
      )
      scores, records = score(
        kind, logits, eval_examples, eval_features, labels, qa_settings
      )
      if best_metric not in scores:
        raise trainer.TrainingError(
          f'best_metric {best_metric} is not computed for this data '
          f'(computed: {", ".join(sorted(scores))})'
        )
      if not best or scores[best_metric] > best[best_metric]:
        best.clear()
        best.update(scores, step=step)
        checkpointer.save_best(step, state.params, best)
        if jax.process_index() == 0:
          write_jsonl(os.path.join(workdir_path, PREDICTIONS_FILE), records)
      return scores

    state, step, last_train, last_eval = trainer.fit(
      run,
      workdir_path,
      shape=shape,
      objective=objective,
      state=state,
      state_shardings=state_shardings,
      schedule=schedule,
      train_iter=train_iter,
      checkpointer=checkpointer,
      mismatch=task_data.DataError,
      evaluate=evaluate,
      flops_per_example=0.0,
      dropout_rng=dropout_rng,
      description=f'Fine-tuning {config.init} for {kind}',
    )
  finally:
    checkpointer.close()
  reference = baseline(kind, eval_examples, train_examples)
  if jax.process_index() == 0:
    second = ('train/accuracy',) if kind != 'regression' else ()
    workdir.plot_learning_curves(
      workdir_path,
      {reference[0]: reference[1]} if reference else None,
      {
        'loss': ('train/loss', 'eval/loss'),
        best_metric: (*second, best_metric),
      },
    )
  if best:
    logging.info(
      'Finished at step %d; best %s %.4f at step %d%s',
      step,
      best_metric,
      best[best_metric],
      best['step'],
      f' against {reference[1]:.4f} for {reference[0]}' if reference else '',
    )
  return {
    **last_train,
    **last_eval,
    **{f'best/{k}': v for k, v in best.items()},
    **({'baseline/accuracy': reference[1]} if reference else {}),
  }


_METRIC_NAMES = {
  'classification': ('accuracy', 'f1', 'matthews'),
  'regression': ('pearson', 'spearman'),
  'tagging': ('f1', 'precision', 'recall', 'accuracy'),
  'qa': ('f1', 'exact', 'has_ans_f1', 'no_ans_f1'),
}


def write_jsonl(path: str, records: Sequence[Mapping[str, Any]]) -> None:
  """Writes one JSON object per line, replacing `path` only when whole."""
  with files.replacing(path) as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + '\n')


@dataclasses.dataclass
class TunedModel:
  """A fine-tuned model loaded for prediction (`load_tuned`)."""

  config: model.BertConfig
  head: model.Head
  params: Any
  tokenizer: Any
  task: dict[str, Any]

  @property
  def kind(self) -> str:
    return self.task['kind']

  @property
  def labels(self) -> list[str]:
    return list(self.task['labels'])


def load_tuned(path: str) -> TunedModel:
  """The model of a fine-tuning workdir (its best params), or of one step
  in its `best/` or `checkpoints/`; `workdir.CheckpointError` if it is not
  a fine-tuned model."""
  step = workdir.find_step(path)
  task = step.meta.get('task')
  if not isinstance(task, dict) or task.get('kind') not in HEAD_KINDS:
    raise workdir.CheckpointError(
      f'{step.path}: not a fine-tuned model (no task record); '
      'python -m bertjax.finetune makes one'
    )
  bert_config, params, tokenizer_file = pretrained.load(path)
  tokenizer = pretrained.open_tokenizer(
    tokenizer_file, bert_config, task.get('do_lower_case'), path
  )
  return TunedModel(
    bert_config, pretrained.head_of_step(step), params, tokenizer, task
  )


def predict(
  tuned: TunedModel,
  examples: Sequence[task_data.Example],
  batch_size: int = 32,
) -> list[dict[str, Any]]:
  """Predictions of a fine-tuned model, one record per example: `label`
  and `probabilities` (classification), `score` (regression), `words` and
  their `tags` (tagging), or the question's `id`, its `answer` ('' for
  none), the answer's character `start` and its `score` (QA)."""
  features = task_data.encode(
    examples,
    tuned.tokenizer,
    tuned.kind,
    tuned.task['max_seq_length'],
    tuned.labels,
    doc_stride=tuned.task.get('doc_stride', 128),
    max_query_length=tuned.task.get('max_query_length', 64),
  )
  module = model.create_model(tuned.config, tuned.head)
  apply = jax.jit(
    lambda p, b: module.apply(
      {'params': p}, b['input_ids'], b['input_mask'], b['segment_ids']
    )
  )
  logits = predict_logits(
    apply,
    tuned.params,
    features,
    batch_size,
    tuned.task['max_seq_length'],
    tuned.tokenizer.pad_id,
  )
  if tuned.kind == 'qa':
    settings = AnswerSettings(**tuned.task.get('answers', {}))
    found = answers(logits, examples, features, settings)
    return [
      dict(id=e.qid, answer=f['answer'], start=f['start'], score=f['score'])
      for e, f in zip(examples, found, strict=True)
    ]
  out = []
  for i, (e, x) in enumerate(zip(examples, logits, strict=True)):
    if tuned.kind == 'tagging':
      tags = word_tags(x, features.word_index[i], len(e.words), tuned.labels)
      out.append(dict(words=list(e.words), tags=tags))
    elif tuned.kind == 'regression':
      out.append(dict(score=float(x[0])))
    else:
      probabilities = np.exp(_log_softmax(x))
      out.append(
        dict(
          label=tuned.labels[int(np.argmax(x))],
          probabilities={
            n: float(p)
            for n, p in zip(tuned.labels, probabilities, strict=True)
          },
        )
      )
  return out
