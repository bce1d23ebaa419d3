"""bertjax.metrics against references and hand-worked cases."""

import numpy as np
import pytest
import scipy.stats

from bertjax import metrics


def test_correlations_equal_scipy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=200)
  y = x + rng.normal(size=200)
  # Ties, as rounded similarity scores have.
  ties = np.round(y * 2) / 2
  assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
  assert metrics.spearman(x, ties) == pytest.approx(
    scipy.stats.spearmanr(x, ties)[0]
  )
  assert metrics.pearson(x, np.ones(200)) == 0.0


def test_classification_scores_by_hand():
  labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
  predicted = np.array([1, 1, 0, 0, 0, 1, 0, 1])
  # tp=3, fp=1, fn=1, tn=3.
  scores = metrics.classification_scores(predicted, labels, 2)
  assert scores['accuracy'] == 6 / 8
  assert scores['f1'] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
  assert scores['matthews'] == pytest.approx((3 * 3 - 1 * 1) / 16)
  constant = metrics.classification_scores(np.zeros(8, int), labels, 2)
  assert constant['matthews'] == 0.0 and constant['f1'] == 0.0
  # Three classes: macro F1 over the classes.
  three = metrics.classification_scores(
    np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), 3
  )
  assert three['f1'] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


@pytest.mark.parametrize(
  'tags, expected',
  [
    # seqeval's get_entities docstring example.
    (['B-PER', 'I-PER', 'O', 'B-LOC'], {('PER', 0, 1), ('LOC', 3, 3)}),
    # conlleval: I- after O starts an entity; a type change starts another.
    (['I-PER', 'I-PER', 'O'], {('PER', 0, 1)}),
    (['B-PER', 'I-LOC', 'I-LOC'], {('PER', 0, 0), ('LOC', 1, 2)}),
    (['B-ORG', 'B-ORG', 'I-ORG'], {('ORG', 0, 0), ('ORG', 1, 2)}),
    # IOBES.
    (['S-LOC', 'B-PER', 'E-PER', 'O'], {('LOC', 0, 0), ('PER', 1, 2)}),
    (['O', 'O'], set()),
  ],
)
def test_entities_follow_seqeval(tags, expected):
  assert metrics.entities(tags) == expected


def test_tagging_scores_match_seqeval_readme():
  gold = [
    ['O', 'O', 'O', 'B-MISC', 'I-MISC', 'I-MISC', 'O'],
    ['B-PER', 'I-PER', 'O'],
  ]
  predicted = [
    ['O', 'O', 'B-MISC', 'I-MISC', 'I-MISC', 'I-MISC', 'O'],
    ['B-PER', 'I-PER', 'O'],
  ]
  scores = metrics.tagging_scores(predicted, gold)
  # seqeval's README: f1_score(y_true, y_pred) == 0.50.
  assert scores['f1'] == pytest.approx(0.5)
  assert scores['precision'] == pytest.approx(0.5)
  assert scores['accuracy'] == pytest.approx(8 / 10)
