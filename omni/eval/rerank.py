"""Re-ranking retrieval with the matching head (ALBEF / BLIP's retrieval recipe): the contrastive
embeddings pick each query's top-K candidates cheaply, and the fused matching pass (which sees
query and candidate together) re-orders those K. Candidates beyond K keep their contrastive order.
The result keeps the contrastive R@1/5/10 and adds R@1_rerank, R@5_rerank, R@10_rerank."""
from __future__ import annotations

import numpy as np

from omni.data import pipeline
from omni.eval.embedding import ListSource, check_modality, embed_all
from omni.eval.retrieval import RECALL_AT, chance_recall, paired_rows, recall_at_k
from omni.modalities.registry import itm_pairs


def reranked_similarity(similarity: np.ndarray, k: int, match_scores) -> np.ndarray:
    """similarity [Q, T]; match_scores(query_rows, target_cols) -> scores of those pairs. Returns
    a [Q, T] score whose ranking puts each query's contrastive top-k first, ordered by the
    matching score, then every other target in its contrastive order."""
    k = min(k, similarity.shape[1])
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    rows = np.repeat(np.arange(similarity.shape[0]), k)
    scores = np.asarray(match_scores(rows, top.reshape(-1)), np.float64).reshape(top.shape)
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
    reranked = recall_at_k(reranked_similarity(similarity, k, scorer), correct)
    return {**recall_at_k(similarity, correct), **{f"{key}_rerank": v for key, v in reranked.items()},
            **chance_recall(correct), "n": int(len(rows)), "rerank_k": int(k)}
