"""The matching objective (omni.matching): its loss against the formula written out, the hard
negative sampler (never the positive or a duplicate; frequencies follow softmax of the
similarities), and a trained step in which an absent pair scores nothing. Mesh invariance is in
tests/test_parallel.py (the mesh runs train with matching on)."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from omni import matching


def test_loss_is_binary_cross_entropy_written_out():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(size=6).astype(np.float32), rng.normal(size=10).astype(np.float32)
    pos_w = np.array([1, 1, 0, 1, 1, 0], np.float32)
    neg_w = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1, 1], np.float32)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    want = (-(np.log(sigmoid(pos)) * pos_w).sum() - (np.log(1 - sigmoid(neg)) * neg_w).sum()) / (pos_w.sum() + neg_w.sum())
    got = matching.binary_cross_entropy(pos, pos_w, neg, neg_w)
    assert abs(float(got) - want) <= 1e-6 * abs(want)
    assert float(matching.binary_cross_entropy(pos, 0 * pos_w, neg, 0 * neg_w)) == 0.0


def draw(key, za, zb, fp, ok, scale=1.0):
    """The sampler with each candidate's 'tokens' = its own index, so the draw can be read back."""
    n = za.shape[0]
    tokens = jnp.arange(n, dtype=jnp.float32).reshape(n, 1, 1)
    token_valid = jnp.ones((n, 1), bool)
    ids = jnp.arange(n, dtype=jnp.int32)
    out_tokens, _, found, chosen = matching.sample_negatives(
        matching.Queries(za, fp, ok, ids), matching.Candidates(zb, fp, ok, tokens, token_valid, ids), scale, key)
    assert np.array_equal(np.asarray(out_tokens[:, 0, 0]).astype(int)[np.asarray(found)],
                          np.asarray(chosen)[np.asarray(found)])
    return np.asarray(chosen), np.asarray(found)


def test_sampler_never_returns_the_positive_or_a_duplicate_and_follows_softmax():
    # 6 candidates; 2 and 4 carry the same content (say an identical caption), 5 is absent.
    za = jnp.eye(6, 4)
    zb = jnp.array([[1, 0, 0, 0], [0.8, 0.6, 0, 0], [0, 1, 0, 0], [0.6, 0, 0.8, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
                   jnp.float32)
    fp = jnp.array([10, 11, 12, 13, 12, 15], jnp.int32)
    ok = jnp.array([True, True, True, True, True, False])
    def chosen(key):
        ids = jnp.arange(6, dtype=jnp.int32)
        return matching.sample_negatives(matching.Queries(za, fp, ok, ids),
                                         matching.Candidates(zb, fp, ok, jnp.zeros((6, 1, 1)), jnp.ones((6, 1), bool), ids),
                                         2.0, key)[3]
    sample = jax.jit(jax.vmap(chosen))
    draws = np.asarray(sample(jax.random.split(jax.random.key(0), 4000)))   # [4000, 6]
    for i in range(5):
        assert i not in draws[:, i] and 5 not in draws[:, i]
    assert not np.isin(draws[:, 2], [2, 4]).any() and not np.isin(draws[:, 4], [2, 4]).any()
    # Row 0: candidates 1..4, p_j = softmax(2 * za_0 . zb_j).
    logits = 2.0 * np.asarray(za[0] @ zb[1:5].T, np.float64)
    expected = np.exp(logits) / np.exp(logits).sum() * len(draws)
    observed = np.array([(draws[:, 0] == j).sum() for j in range(1, 5)])
    assert observed.sum() == len(draws)
    assert stats.chisquare(observed, expected).pvalue > 1e-3, (observed, expected)
    # ... and the hardest candidate is drawn more often than the easiest.
    assert observed[0] > observed[1]


def test_a_row_without_candidates_draws_nothing():
    za = zb = jnp.eye(3, 2)
    fp = jnp.array([7, 7, 7], jnp.int32)   # every candidate duplicates the positive
    ok = jnp.ones(3, bool)
    chosen, found = draw(jax.random.key(1), za, zb, fp, ok)
    assert not found.any()


def test_fingerprint_matches_equal_contents_only():
    batch = {"text/tokens": jnp.array([[5, 6, 7], [5, 6, 7], [7, 6, 5]], jnp.int32),
             "text/present": jnp.ones(3, bool),
             "image/pixels": jnp.array([[0.5, 1.0], [0.5, 1.0], [0.5, 1.0 + 1e-7]], jnp.float32),
             "image/present": jnp.ones(3, bool)}
    text = np.asarray(matching.content_fingerprint(batch, "text"))
    image = np.asarray(matching.content_fingerprint(batch, "image"))
    assert text[0] == text[1] != text[2]          # same tokens in another order differ
    assert image[0] == image[1] != image[2]       # one ulp differs


def test_albef_score_adds_the_cosine_to_the_matching_logit():
    from omni.eval.rerank import albef_score, reranked_similarity, top_k_scores
    similarity = np.array([[0.9, 0.5, 0.1, 0.0]])           # one query, four targets
    logits = {0: 0.0, 1: 0.3, 2: 5.0, 3: 9.0}                # target 3 is outside the top 3
    top, matching = top_k_scores(similarity, 3, lambda rows, cols: [logits[c] for c in cols])
    assert top.tolist() == [[0, 1, 2]] and matching.tolist() == [[0.0, 0.3, 5.0]]
    score = albef_score(similarity, top, matching)
    assert np.allclose(score, [[0.9, 0.8, 5.1]])
    # 0.9 + 0.0 beats 0.5 + 0.3: the cosine breaks what the matching logit alone would reverse.
    order = np.argsort(-reranked_similarity(similarity, top, score), axis=1)[0].tolist()
    assert order == [2, 0, 1, 3]


def test_reranking_with_an_oracle_puts_the_right_target_first():
    from omni.eval.rerank import albef_score, reranked_similarity, top_k_scores
    from omni.eval.retrieval import recall_at_k
    rng = np.random.default_rng(0)
    n = 12
    correct = np.eye(n, dtype=bool)
    similarity = rng.normal(size=(n, n))
    for i in range(n):  # the right target ranks third by the contrastive score
        similarity[i, i] = np.sort(np.delete(similarity[i], i))[-2] - 1e-3
    oracle = lambda rows, cols: correct[rows, cols].astype(float)  # noqa: E731
    rerank = lambda k: reranked_similarity(similarity, *top_k_scores(similarity, k, oracle))  # noqa: E731
    assert recall_at_k(similarity, correct)["R@1"] == 0.0
    assert recall_at_k(rerank(3), correct)["R@1"] == 1.0
    assert recall_at_k(rerank(2), correct)["R@1"] == 0.0  # not in the top 2
    # ALBEF's score too, with cosines (in [-1, 1], same order) and a confident oracle logit.
    cosine = np.tanh(similarity)
    top, matching = top_k_scores(cosine, 3, lambda rows, cols: 10.0 * oracle(rows, cols))
    assert recall_at_k(reranked_similarity(cosine, top, albef_score(cosine, top, matching)), correct)["R@1"] == 1.0
    # Beyond the top k the contrastive order stays.
    reranked = rerank(3)
    rest = np.argsort(-reranked, axis=1, kind="stable")[:, 3:]
    assert np.array_equal(rest, np.argsort(-similarity, axis=1, kind="stable")[:, 3:])


def test_packing_keeps_the_first_rows_holding_both_and_marks_the_filler():
    both = jnp.array([False, True, False, True, True, False, True, False])
    values = jnp.arange(8) * 10
    (packed,), kept = matching.pack_rows((values,), both, 3)
    assert np.asarray(packed).tolist() == [10, 30, 40] and np.asarray(kept).all()
    (packed,), kept = matching.pack_rows((values,), both, 6)   # 4 rows hold both: 2 fillers, not kept
    assert np.asarray(packed)[:4].tolist() == [10, 30, 40, 60]
    assert np.asarray(kept).tolist() == [True] * 4 + [False] * 2
    (packed,), kept = matching.pack_rows((values,), both, 0)   # 0: the whole batch, as it is
    assert np.asarray(packed).tolist() == np.asarray(values).tolist() and np.array_equal(kept, both)
