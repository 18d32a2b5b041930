"""Re-ranking retrieval with the matching head (ALBEF / BLIP's retrieval recipe): the contrastive
embeddings pick each query's top-K candidates cheaply, and the fused matching pass (which sees
query and candidate together) re-orders those K. Candidates beyond K keep their contrastive order.

The re-ranking score is ALBEF's: the matching logit PLUS the contrastive cosine of the pair
(ALBEF's Retrieval.py, `score_matrix_i2t[i, topk_idx] = score + topk_sim`; BLIP's likewise), so
the head refines the contrastive ranking rather than replacing it. The result keeps the
contrastive R@1/5/10 and adds R@1_rerank, R@5_rerank, R@10_rerank (that sum) and
R@1_matching, R@5_matching, R@10_matching (the matching logit alone, for comparison)."""
from __future__ import annotations

import numpy as np

from omni.data import pipeline
from omni.eval.embedding import ListSource, check_modality, embed_all
from omni.eval.retrieval import RECALL_AT, chance_recall, paired_rows, recall_at_k
from omni.modalities.registry import itm_pairs


def top_k_scores(similarity: np.ndarray, k: int, match_scores) -> tuple[np.ndarray, np.ndarray]:
    """Each query's contrastive top-k targets [Q, k] and their matching scores [Q, k], from
    match_scores(query_rows, target_cols) -> scores of those pairs."""
    k = min(k, similarity.shape[1])
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(similarity.shape[0]), k)
    return top, np.asarray(match_scores(rows, top.reshape(-1)), np.float64).reshape(top.shape)


def albef_score(similarity: np.ndarray, top: np.ndarray, matching: np.ndarray) -> np.ndarray:
    """ALBEF's re-ranking score of each query's top targets: matching logit + contrastive cosine."""
    return matching + np.take_along_axis(similarity, top, axis=1)


def reranked_similarity(similarity: np.ndarray, top: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """A [Q, T] score whose ranking puts each query's `top` targets first, ordered by `scores`
    [Q, k], then every other target in its contrastive order."""
    # Below every top-k entry: the rest keep their contrastive order.
    out = similarity.astype(np.float64) - (np.abs(similarity).max() * 2 + 1)
    span = np.abs(scores).max() + 1
    np.put_along_axis(out, top, scores + 2 * span + np.abs(out).max(), axis=1)
    return out


def modality_inputs(source_records, config, assets, modality: str) -> dict[str, np.ndarray]:
    """The model inputs (`modality/...` arrays) of each record, in order."""
    arrays: dict[str, list] = {}
    size = int(config.eval.batch_size)
    for batch, count, _ in pipeline.eval_batches(ListSource(source_records), config, assets, size,
                                                 modalities=[modality]):
        for key, value in batch.items():
            if key.startswith(f"{modality}/"):
                arrays.setdefault(key, []).append(value[:count])
    return {key: np.concatenate(values) for key, values in arrays.items()}


def pair_scorer(setup, params, config, query, target, query_inputs, target_inputs):
    """match_scores(rows, cols): matching logits of (query row, target col) pairs."""
    names = list(config.modalities.keys())
    a, b = sorted((query, target), key=names.index)   # the trained order (Setup.match_fn)
    cache = setup.__dict__.setdefault("_match_fns", {})  # one compile per pair and Setup
    if (a, b) not in cache:
        cache[(a, b)] = setup.match_fn(a, b)
    score = cache[(a, b)]
    size = int(config.eval.batch_size)

    def match_scores(rows, cols):
        out = []
        for start in range(0, len(rows), size):
            r, c = rows[start:start + size], cols[start:start + size]
            count = len(r)
            pad = lambda x: np.concatenate([x, np.repeat(x[-1:], size - count, axis=0)]) if count < size else x  # noqa: E731
            batch = {k: pad(v[r]) for k, v in query_inputs.items()}
            batch.update({k: pad(v[c]) for k, v in target_inputs.items()})
            out.append(score(params, batch)[:count])
        return np.concatenate(out)

    return match_scores


def retrieval_with_rerank(setup, params, source, config, assets, query: str, target: str, k: int,
                          max_examples=None) -> dict:
    """R@1/5/10 of the contrastive ranking and of the top-k re-ranked by the matching head."""
    if "itm_head" not in params:
        raise ValueError("--rerank needs a run trained with the matching head (loss.itm.weight > 0)")
    for name in (query, target):
        check_modality(config, name)
    trained = itm_pairs(config, list(config.modalities.keys()))
    if not any({query, target} == set(pair) for pair in trained):
        raise ValueError(f"--rerank: the matching head was not trained on {query}-{target} "
                         f"(trained: {', '.join('-'.join(p) for p in trained)}; see loss.itm.pairs)")
    embedded = embed_all(setup, params, source, config, assets, [query, target], max_examples)
    (zq, rq), (zt, rt) = embedded[query], embedded[target]
    rows, cols, correct = paired_rows(rq, rt, target)
    if len(rows) == 0:
        return {**{f"R@{n}": 0.0 for n in RECALL_AT}, **{f"R@{n}_rerank": 0.0 for n in RECALL_AT}, "n": 0}
    similarity = zq[rows] @ zt[cols].T
    query_inputs = modality_inputs([rq[i] for i in rows], config, assets, query)
    target_inputs = modality_inputs([rt[j] for j in cols], config, assets, target)
    scorer = pair_scorer(setup, params, config, query, target, query_inputs, target_inputs)
    top, matching = top_k_scores(similarity, k, scorer)
    reranked = recall_at_k(reranked_similarity(similarity, top, albef_score(similarity, top, matching)), correct)
    matching_only = recall_at_k(reranked_similarity(similarity, top, matching), correct)
    return {**recall_at_k(similarity, correct), **{f"{key}_rerank": v for key, v in reranked.items()},
            **{f"{key}_matching": v for key, v in matching_only.items()},
            **chance_recall(correct), "n": int(len(rows)), "rerank_k": int(k)}
