"""Scores of fine-tuned predictions against gold labels, on the host.

Classification: accuracy, F1 and Matthews correlation, as GLUE reports
them. Regression: Pearson and Spearman correlation, mean squared error.
Tagging: entity-level precision, recall and F1 with seqeval's default
(conlleval) semantics, for IOB1, IOB2 and IOBES tags, plus token accuracy.
Extractive QA: SQuAD v2.0's official exact match and F1.
"""

import collections
import re
import string
from collections.abc import Sequence

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """F1 of class 1 when `num_classes` is 2, else the macro average."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  classes = [1] if num_classes == 2 else range(num_classes)
  scores = []
  for c in classes:
    tp = np.sum((predictions == c) & (labels == c))
    fp = np.sum((predictions == c) & (labels != c))
    fn = np.sum((predictions != c) & (labels == c))
    scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
  return float(np.mean(scores))


def matthews_corrcoef(
  predictions: np.ndarray, labels: np.ndarray, num_classes: int
) -> float:
  """Matthews correlation (R_K for more than two classes); 0 when either
  side is constant."""
  confusion = np.zeros((num_classes, num_classes), np.float64)
  np.add.at(confusion, (np.asarray(labels), np.asarray(predictions)), 1)
  t, p = confusion.sum(1), confusion.sum(0)
  n, correct = confusion.sum(), np.trace(confusion)
  denominator = np.sqrt((n * n - p @ p) * (n * n - t @ t))
  return float((correct * n - t @ p) / denominator) if denominator else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt((x @ x) * (y @ y))
  return float(x @ y / denominator) if denominator else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks from 1, ties sharing their mean rank."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind='stable')
  ranks = np.empty(len(x))
  ranks[order] = np.arange(1, len(x) + 1)
  values, inverse = np.unique(x, return_inverse=True)
  sums = np.bincount(inverse, ranks)
  counts = np.bincount(inverse)
  del values
  return (sums / counts)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  return pearson(_ranks(x), _ranks(y))


def classification_scores(
  predictions: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, float]:
  return dict(
    accuracy=accuracy(predictions, labels),
    f1=f1(predictions, labels, num_classes),
    matthews=matthews_corrcoef(predictions, labels, num_classes),
  )


def regression_scores(
  predictions: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
  predictions = np.asarray(predictions, np.float64)
  labels = np.asarray(labels, np.float64)
  return dict(
    pearson=pearson(predictions, labels),
    spearman=spearman(predictions, labels),
    mse=float(np.mean((predictions - labels) ** 2)),
  )


def _split_tag(tag: str) -> tuple[str, str]:
  if tag in ('O', ''):
    return 'O', ''
  prefix, sep, kind = tag.partition('-')
  if not sep or prefix not in ('B', 'I', 'E', 'S'):
    return 'I', tag  # A bare type reads as inside an entity of it.
  return prefix, kind


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
  """(type, first, last) word spans of the entities in one tag sequence,
  as seqeval's `get_entities` finds them (conlleval's chunk rules)."""
  found = set()
  prev_prefix, prev_type, start = 'O', '', None
  for i, tag in enumerate([*tags, 'O']):
    prefix, kind = _split_tag(tag)
    ends = prev_prefix in ('E', 'S') or (
      prev_prefix in ('B', 'I')
      and (prefix in ('B', 'S', 'O') or kind != prev_type)
    )
    if ends and start is not None:
      found.add((prev_type, start, i - 1))
      start = None
    starts = (
      prefix in ('B', 'S')
      or (prev_prefix in ('E', 'S', 'O') and prefix in ('E', 'I'))
      or (prefix != 'O' and kind != prev_type)
    )
    if starts:
      start = i
    prev_prefix, prev_type = prefix, kind
  return found


def tagging_scores(
  predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]
) -> dict[str, float]:
  """Entity-level micro precision/recall/F1 and token accuracy over
  sentences of tags."""
  tp = n_predicted = n_gold = 0
  correct = total = 0
  for p, g in zip(predicted, gold, strict=True):
    p_entities, g_entities = entities(p), entities(g)
    tp += len(p_entities & g_entities)
    n_predicted += len(p_entities)
    n_gold += len(g_entities)
    correct += sum(a == b for a, b in zip(p, g, strict=True))
    total += len(g)
  precision = tp / n_predicted if n_predicted else 0.0
  recall = tp / n_gold if n_gold else 0.0
  f1_score = (
    2 * precision * recall / (precision + recall) if precision + recall else 0.0
  )
  return dict(
    precision=precision,
    recall=recall,
    f1=f1_score,
    accuracy=correct / total if total else 0.0,
  )


def normalize_answer(text: str) -> str:
  """SQuAD's official answer normalisation: lower case, no punctuation, no
  articles (a, an, the), single spaces."""
  text = ''.join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def _answer_f1(predicted: str, gold: str) -> float:
  p, g = normalize_answer(predicted).split(), normalize_answer(gold).split()
  if not p or not g:
    return float(p == g)
  same = sum((collections.Counter(p) & collections.Counter(g)).values())
  if not same:
    return 0.0
  precision, recall = same / len(p), same / len(g)
  return 2 * precision * recall / (precision + recall)


def squad_scores(
  predicted: Sequence[str], gold: Sequence[Sequence[str]]
) -> dict[str, float]:
  """Exact match and F1 (fractions, not percent) as SQuAD v2.0's official
  script computes them: the best over each question's gold answers, an
  unanswerable question (no gold answer) right only when the prediction is
  empty; with unanswerable questions, also `has_ans_*` and `no_ans_*`."""
  exact, f1_ = [], []
  for p, answers in zip(predicted, gold, strict=True):
    answers = [a for a in answers if normalize_answer(a)] or ['']
    exact.append(
      max(float(normalize_answer(p) == normalize_answer(a)) for a in answers)
    )
    f1_.append(max(_answer_f1(p, a) for a in answers))
  out = dict(exact=float(np.mean(exact)), f1=float(np.mean(f1_)))
  has = np.array(
    [any(normalize_answer(a) for a in answers) for answers in gold]
  )
  if not has.all():
    for name, part in (('has_ans', has), ('no_ans', ~has)):
      if part.any():
        out[f'{name}_exact'] = float(np.mean(np.array(exact)[part]))
        out[f'{name}_f1'] = float(np.mean(np.array(f1_)[part]))
  return out
