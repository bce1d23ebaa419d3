"""Tests of data_pipeline.examples: NSP pairs and MLM masking.

Masking runs on real English and Chinese news; pairs on made-up sentence
lengths, example by example, against the original's truncation loop.
"""

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import corpora, examples, tokenizers

import corpus_readers

SEQ_LEN = 128
# Tokens per pair, [CLS] and two [SEP]s included.
PAIR_LEN = 128


@pytest.fixture(scope='module')
def tokenizer():
  return tokenizers.create_tokenizer(corpus_readers.minilm_dir())


@pytest.fixture(scope='module')
def rows(tokenizer):
  """About 125k real tokens as `[CLS] A [SEP] B [SEP]` rows of MiniLM ids.

  English news and People's Daily, cut into examples of the lengths the
  original makes: 90% full length, 10% shorter, down to 3 tokens.

  Returns:
    `(input_ids, input_mask)`, both `[n, SEQ_LEN]` int32.
  """
  texts = (
    corpora.news_documents()[:80]
    + corpus_readers.peoples_daily_paragraphs()[:800]
  )
  stream = np.concatenate(
    [np.array(t, np.int32) for t in tokenizer.encode_batch(texts) if t]
  )
  rng = np.random.default_rng(0)
  rows, masks = [], []
  while len(stream) > SEQ_LEN:
    length = SEQ_LEN if rng.random() < 0.9 else rng.integers(3, SEQ_LEN)
    body, stream = stream[: length - 3], stream[length - 3 :]
    cut = rng.integers(0, len(body) + 1)
    sep, cls = tokenizer.sep_id, tokenizer.cls_id
    ids = np.concatenate([[cls], body[:cut], [sep], body[cut:], [sep]])
    rows.append(np.pad(ids, (0, SEQ_LEN - length)))
    masks.append(np.arange(SEQ_LEN) < length)
  return np.array(rows, np.int32), np.array(masks, np.int32)


def _mask(rows, tokenizer, config=None, seed=0):
  input_ids, input_mask = rows
  config = config or examples.MaskingConfig()
  seeds = np.stack(
    [np.full(len(input_ids), seed), np.arange(len(input_ids))], axis=1
  )
  out = examples.mask_batch(
    input_ids,
    input_mask,
    seeds,
    config=config,
    special_ids=tokenizer.special_ids.tolist(),
    mask_id=tokenizer.mask_id,
    replacement_range=tokenizer.replacement_range,
    word_start_table=tokenizer.word_start_table(),
  )
  return {name: value.numpy() for name, value in out.items()}


def _num_to_predict(input_mask, config):
  """The original's count, in Python (round half to even, as in BERT)."""
  return np.array(
    [
      min(
        config.max_predictions_per_seq,
        max(1, int(round(int(n) * config.masked_lm_prob))),
      )
      for n in input_mask.sum(axis=1)
    ]
  )


def _words(ids, mask, tokenizer):
  """Whole words as lists of positions, in order, for one example."""
  special = np.isin(ids, tokenizer.special_ids) | (mask == 0)
  starts = tokenizer.word_start_table()[ids]
  words = []
  for position in range(len(ids)):
    if special[position]:
      continue
    if starts[position] or special[position - 1] or not words:
      words.append([position])
    else:
      words[-1].append(position)
  return words


@pytest.mark.network
class MaskBatchTest:
  def test_counts_rates_and_replacements(self, rows, tokenizer):
    input_ids, input_mask = rows
    assert input_mask.sum() >= 100_000
    out = _mask(rows, tokenizer)
    weights = out['masked_lm_weights']
    chosen = weights.sum(axis=1).astype(int)
    config = examples.MaskingConfig()
    candidates = (~np.isin(input_ids, tokenizer.special_ids)).sum(axis=1)
    np.testing.assert_array_equal(
      chosen, np.minimum(_num_to_predict(input_mask, config), candidates)
    )
    # At seq 128 the cap of 20 never binds: round(128 * 0.15) = 19.
    assert abs(chosen.sum() / input_mask.sum() - 0.15) < 0.005

    valid = weights > 0
    positions = out['masked_lm_positions']
    original = np.take_along_axis(input_ids, positions, axis=1)[valid]
    np.testing.assert_array_equal(out['masked_lm_ids'][valid], original)
    now = np.take_along_axis(out['input_ids'], positions, axis=1)[valid]
    is_mask = now == tokenizer.mask_id
    is_kept = now == original
    is_random = ~is_mask & ~is_kept
    assert abs(is_mask.mean() - 0.8) < 0.015
    assert abs(is_random.mean() - 0.1) < 0.015
    assert abs(is_kept.mean() - 0.1) < 0.015

  def test_layout_and_untouched_positions(self, rows, tokenizer):
    input_ids, input_mask = rows
    out = _mask(rows, tokenizer)
    positions, weights = out['masked_lm_positions'], out['masked_lm_weights']
    assert positions.shape == weights.shape == (len(input_ids), 20)
    assert positions.dtype == out['masked_lm_ids'].dtype == np.int32
    assert weights.dtype == np.float32
    for row in range(len(input_ids)):
      n = int(weights[row].sum())
      assert (weights[row, :n] == 1).all() and (weights[row, n:] == 0).all()
      assert (np.diff(positions[row, :n]) > 0).all()
      assert (positions[row, n:] == 0).all()
      assert (out['masked_lm_ids'][row, n:] == 0).all()
      untouched = np.ones(SEQ_LEN, bool)
      untouched[positions[row, :n]] = False
      np.testing.assert_array_equal(
        out['input_ids'][row, untouched], input_ids[row, untouched]
      )
    # Never a special token or padding.
    chosen = np.take_along_axis(input_ids, positions, axis=1)[weights > 0]
    assert not np.isin(chosen, tokenizer.special_ids).any()
    assert (
      np.take_along_axis(input_mask, positions, axis=1)[weights > 0]
    ).all()

  def test_random_replacements_are_never_special(self, rows, tokenizer):
    config = examples.MaskingConfig(
      mask_token_prob=0.0, random_token_prob=1.0, keep_token_prob=0.0
    )
    out = _mask(rows, tokenizer, config)
    valid = out['masked_lm_weights'] > 0
    drawn = np.take_along_axis(
      out['input_ids'], out['masked_lm_positions'], axis=1
    )[valid]
    assert len(drawn) > 15_000
    assert not np.isin(drawn, tokenizer.special_ids).any()
    assert drawn.min() >= 0 and drawn.max() < tokenizer.vocab_size
    # Spread over the vocabulary, not stuck in a corner of it.
    assert len(np.unique(drawn)) > 0.3 * len(drawn)

  def test_whole_words_are_never_split(self, rows, tokenizer):
    input_ids, input_mask = rows
    config = examples.MaskingConfig(whole_word_mask=True)
    out = _mask(rows, tokenizer, config)
    weights = out['masked_lm_weights']
    budgets = _num_to_predict(input_mask, config)
    multi_piece_words_chosen = 0
    for row in range(len(input_ids)):
      chosen = set(out['masked_lm_positions'][row][weights[row] > 0].tolist())
      words = _words(input_ids[row], input_mask[row], tokenizer)
      taken = [w for w in words if chosen & set(w)]
      for word in taken:
        assert set(word) <= chosen, (row, word, chosen)
        multi_piece_words_chosen += len(word) > 1
      assert sum(len(w) for w in taken) == len(chosen) <= budgets[row]
      # The original's greedy loop skips a word only when it does not fit,
      # so every word left out is longer than the budget left at the end.
      left = budgets[row] - len(chosen)
      assert all(len(w) > left for w in words if w not in taken)
    assert multi_piece_words_chosen > 100
    assert abs(weights.sum() / input_mask.sum() - 0.15) < 0.005

  def test_an_example_depends_on_its_seed_only(self, rows, tokenizer):
    input_ids, input_mask = rows
    subset = np.arange(0, 200, 3)
    for wwm in (False, True):
      config = examples.MaskingConfig(whole_word_mask=wwm)
      full = _mask((input_ids[:200], input_mask[:200]), tokenizer, config)
      seeds = np.stack([np.zeros_like(subset), subset], axis=1)
      part = examples.mask_batch(
        input_ids[subset][::-1],
        input_mask[subset][::-1],
        seeds[::-1],
        config=config,
        special_ids=tokenizer.special_ids.tolist(),
        mask_id=tokenizer.mask_id,
        replacement_range=tokenizer.replacement_range,
        word_start_table=tokenizer.word_start_table(),
      )
      for name, value in part.items():
        np.testing.assert_array_equal(value.numpy()[::-1], full[name][subset])

  def test_seeds_decide_the_mask(self, rows, tokenizer):
    few = (rows[0][:300], rows[1][:300])
    first, again = _mask(few, tokenizer), _mask(few, tokenizer)
    other = _mask(few, tokenizer, seed=1)
    for name in first:
      np.testing.assert_array_equal(first[name], again[name])
    same = (first['masked_lm_positions'] == other['masked_lm_positions']).all(
      axis=1
    )
    assert same.mean() < 0.01

  def test_chosen_tokens_are_a_uniform_subset(self, tokenizer):
    # [CLS] 4 words [SEP] 6 words [SEP]: 10 candidates around a special
    # token mid-row; 13 tokens * 0.25 rounds to 3 predictions.
    word = tokenizer.encode('hello')[0]
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    row = [cls] + [word] * 4 + [sep] + [word] * 6 + [sep, 0, 0, 0]
    trials = 20_000
    input_ids = np.array([row] * trials, np.int32)
    input_mask = (input_ids != 0).astype(np.int32)
    config = examples.MaskingConfig(masked_lm_prob=0.25)
    for seq_len in (16, None):  # a static and an unknown sequence length
      mask = tf.function(
        lambda a, b, c: examples.mask_batch(
          a,
          b,
          c,
          config=config,
          special_ids=tokenizer.special_ids.tolist(),
          mask_id=tokenizer.mask_id,
          replacement_range=tokenizer.replacement_range,
        ),
        input_signature=[
          tf.TensorSpec([None, seq_len], tf.int32),
          tf.TensorSpec([None, seq_len], tf.int32),
          tf.TensorSpec([None, 2], tf.int64),
        ],
      )
      seeds = np.stack([np.full(trials, 7), np.arange(trials)], axis=1)
      out = mask(input_ids, input_mask, seeds)
      positions = out['masked_lm_positions'].numpy()[:, :3]
      np.testing.assert_array_equal(out['masked_lm_weights'].numpy().sum(1), 3)
      chosen = np.zeros((trials, 16), bool)
      np.put_along_axis(chosen, positions, True, axis=1)
      candidates = [1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
      assert not chosen[:, [0, 5, 12, 13, 14, 15]].any()
      # Each candidate with p = 3/10 and each pair with p = 3*2/(10*9): the
      # law of a uniform 3-subset, to 5 standard deviations.
      singles = chosen[:, candidates].mean(axis=0)
      assert np.abs(singles - 0.3).max() < 5 * np.sqrt(0.3 * 0.7 / trials)
      both = chosen[:, candidates].T.astype(float) @ chosen[:, candidates]
      pairs = both[np.triu_indices(10, 1)] / trials
      p = 1 / 15
      assert np.abs(pairs - p).max() < 5 * np.sqrt(p * (1 - p) / trials)

  def test_many_special_ids(self, rows, tokenizer):
    # More than a handful of scattered specials: the membership table path.
    input_ids, input_mask = (a[:200] for a in rows)
    special = tokenizer.special_ids.tolist() + list(range(2000, 30000, 1000))
    seeds = np.stack([np.zeros(200), np.arange(200)], axis=1)
    out = examples.mask_batch(
      input_ids,
      input_mask,
      seeds,
      config=examples.MaskingConfig(),
      special_ids=special,
      mask_id=tokenizer.mask_id,
      replacement_range=tokenizer.replacement_range,
    )
    weights = out['masked_lm_weights'].numpy() > 0
    chosen = np.take_along_axis(
      input_ids, out['masked_lm_positions'].numpy(), axis=1
    )[weights]
    assert weights.sum() > 2000
    assert not np.isin(chosen, special).any()
    # Special ids in the text are there to be avoided.
    assert np.isin(input_ids[input_mask > 0], special[5:]).sum() > 0

  def test_short_and_empty_rows(self, tokenizer):
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    word = tokenizer.encode('hello')[0]
    input_ids = np.array(
      [[cls, word, sep, 0, 0, 0], [0] * 6, [cls, sep, sep, 0, 0, 0]], np.int32
    )
    input_mask = (input_ids != 0).astype(np.int32)
    for wwm in (False, True):
      # seq_len 6 < max_predictions_per_seq 20: outputs are still 20 wide.
      config = examples.MaskingConfig(whole_word_mask=wwm)
      out = _mask((input_ids, input_mask), tokenizer, config)
      np.testing.assert_array_equal(out['masked_lm_weights'].sum(1), [1, 0, 0])
      assert out['masked_lm_positions'][0, 0] == 1
      assert out['masked_lm_ids'][0, 0] == word
      assert out['masked_lm_positions'].shape == (3, 20)

  def test_graph_and_eager_agree_for_int64_inputs(self, rows, tokenizer):
    input_ids, input_mask = (a[:64].astype(np.int64) for a in rows)
    seeds = np.stack([np.full(64, 2**40 + 5), np.arange(64) - 3], axis=1)
    kwargs = dict(
      config=examples.MaskingConfig(),
      special_ids=tokenizer.special_ids.tolist(),
      mask_id=tokenizer.mask_id,
      replacement_range=tokenizer.replacement_range,
    )
    eager = examples.mask_batch(input_ids, input_mask, seeds, **kwargs)
    graph = tf.function(lambda a, b, c: examples.mask_batch(a, b, c, **kwargs))(
      input_ids, input_mask, seeds
    )
    for name in eager:
      np.testing.assert_array_equal(eager[name], graph[name])

  def test_short_empty_and_special_only_rows(self, tokenizer):
    cls, sep, mask = tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id
    word = tokenizer.encode('hello')[0]
    input_ids = np.array(
      [
        [word, word, sep, 0, 0, 0],  # a candidate at position 0
        [0] * 6,
        [cls, sep, sep, 0, 0, 0],
        [cls, mask, word, word, word, sep],
      ],
      np.int32,
    )
    input_mask = (input_ids != 0).astype(np.int32)
    config = examples.MaskingConfig(
      masked_lm_prob=0.5,
      mask_token_prob=1.0,
      random_token_prob=0.0,
      keep_token_prob=0.0,
    )
    seeds = np.stack([np.zeros(4), np.arange(4)], axis=1).astype(np.int64)
    out = examples.mask_batch(
      input_ids,
      input_mask,
      seeds,
      config=config,
      **examples.vocab_kwargs(tokenizer, whole_word_mask=False),
    )
    out = {k: v.numpy() for k, v in out.items()}
    # round(0.5 * length) predictions, at most the candidates: 2 of 3
    # tokens, none of nothing, none of specials only, all 3 ordinary words.
    np.testing.assert_array_equal(out['masked_lm_weights'].sum(1), [2, 0, 0, 3])
    np.testing.assert_array_equal(out['masked_lm_positions'][0, :2], [0, 1])
    np.testing.assert_array_equal(out['masked_lm_positions'][3, :3], [2, 3, 4])
    np.testing.assert_array_equal(out['masked_lm_ids'][3, :3], [word] * 3)
    expected = input_ids.copy()
    expected[0, :2] = mask
    expected[3, 2:5] = mask
    np.testing.assert_array_equal(out['input_ids'], expected)


class MaskingConfigTest:
  def test_rejects_bad_options(self):
    with pytest.raises(ValueError, match='sum to 1'):
      examples.MaskingConfig(mask_token_prob=0.9)
    with pytest.raises(ValueError, match='masked_lm_prob'):
      examples.MaskingConfig(masked_lm_prob=1.5)
    with pytest.raises(ValueError, match='max_predictions_per_seq'):
      examples.MaskingConfig(max_predictions_per_seq=0)

  def test_whole_word_needs_a_table(self):
    config = examples.MaskingConfig(whole_word_mask=True)
    with pytest.raises(ValueError, match='word_start_table'):
      examples.mask_batch(
        np.zeros([1, 4], np.int32),
        np.ones([1, 4], np.int32),
        np.zeros([1, 2], np.int32),
        config=config,
        special_ids=[0],
        mask_id=1,
        replacement_range=(0, 10),
      )


class TruncationTest:
  def test_matches_original_loop(self):
    """Counts equal those of the original `truncate_seq_pair` loop."""

    def original(len_a, len_b, max_num_tokens):
      a, b = list(range(len_a)), list(range(len_b))
      while len(a) + len(b) > max_num_tokens:
        (a if len(a) > len(b) else b).pop()
      return len_a - len(a), len_b - len(b)

    for len_a in range(1, 25):
      for len_b in range(1, 25):
        for max_num_tokens in range(2, 40):
          assert examples.compute_truncation(
            len_a, len_b, max_num_tokens
          ) == original(len_a, len_b, max_num_tokens)
    # Whole arrays at once, as pair creation calls it.
    len_a, len_b = np.meshgrid(np.arange(1, 25), np.arange(1, 25))
    cut_a, cut_b = examples.compute_truncation(len_a.ravel(), len_b.ravel(), 30)
    expected = [
      original(a, b, 30) for a, b in zip(len_a.ravel(), len_b.ravel())
    ]
    assert list(zip(cut_a.tolist(), cut_b.tolist())) == expected


class DocumentPairsTest:
  """create_document_pairs on made-up sentence lengths, example by example."""

  @staticmethod
  def _bounds(rng, num_docs):
    bounds, offset = [], 0
    for _ in range(num_docs):
      lengths = rng.integers(1, 40, rng.integers(1, 30))
      bounds.append([offset] + (offset + np.cumsum(lengths)).tolist())
      offset = bounds[-1][-1] + 1  # the [SEP] between documents
    return bounds

  def test_ranges_labels_and_lengths(self):
    rng = np.random.default_rng(0)
    bounds = self._bounds(rng, 60)
    doc_of = np.full(bounds[-1][-1] + 1, -1)
    for d, edges in enumerate(bounds):
      doc_of[edges[0] : edges[-1]] = d
    pairs = examples.PairBuilder()
    dropped = examples.create_document_pairs(
      bounds, PAIR_LEN, 0.1, rng, 3, pairs
    )
    assert dropped == 0 and len(pairs) > 500
    a0, a1 = pairs.a_start, pairs.a_start + pairs.a_len
    b0, b1 = pairs.b_start, pairs.b_start + pairs.b_len
    assert (pairs.a_len >= 1).all() and (pairs.b_len >= 1).all()
    assert (pairs.a_len + pairs.b_len <= PAIR_LEN - 3).all()
    # Each segment lies within one document.
    assert (doc_of[a0] == doc_of[a1 - 1]).all() and (doc_of[a0] >= 0).all()
    assert (doc_of[b0] == doc_of[b1 - 1]).all() and (doc_of[b0] >= 0).all()
    same_doc = doc_of[a0] == doc_of[b0]
    random_next = pairs.labels == 1
    # IsNext: B follows A in its document; random: B from another one.
    assert (same_doc & (b0 >= a1))[~random_next].all()
    assert (~same_doc)[random_next].all()
    assert 0.45 < random_next.mean() < 0.55
    # Untruncated true continuations start right where A ends.
    fits = pairs.a_len + pairs.b_len < PAIR_LEN - 3
    assert (b0 == a1)[fits & ~random_next].all()

  def test_copies_are_independent_walks(self):
    bounds = self._bounds(np.random.default_rng(1), 40)
    once, thrice = examples.PairBuilder(), examples.PairBuilder()
    examples.create_document_pairs(
      bounds, PAIR_LEN, 0.1, np.random.default_rng(2), 1, once
    )
    examples.create_document_pairs(
      bounds, PAIR_LEN, 0.1, np.random.default_rng(2), 3, thrice
    )
    assert len(thrice) == pytest.approx(3 * len(once), rel=0.1)
    ranges = set(zip(thrice.a_start.tolist(), thrice.a_len.tolist()))
    assert len(ranges) > 1.5 * len(once)  # not three copies of one walk

  def test_one_document_has_no_random_next(self):
    (edges,) = self._bounds(np.random.default_rng(3), 1)
    pairs = examples.PairBuilder()
    dropped = examples.create_document_pairs(
      [edges + [edges[-1] + 5]],
      PAIR_LEN,
      0.1,
      np.random.default_rng(4),
      2,
      pairs,
    )
    assert len(pairs) > 0 and (pairs.labels == 0).all() and dropped == 0
    # A single sentence: no continuation and no other document.
    lone = examples.PairBuilder()
    dropped = examples.create_document_pairs(
      [[0, 9]], PAIR_LEN, 0.1, np.random.default_rng(4), 3, lone
    )
    assert len(lone) == 0 and dropped == 3
