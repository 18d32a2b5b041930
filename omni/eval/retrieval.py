"""Cross-modal retrieval: R@1/5/10 between two modalities (several correct targets per query),
with the expected R@K of a random ranking alongside."""
from __future__ import annotations

import numpy as np

from omni.eval.embedding import check_modality, embed_all

RECALL_AT = (1, 5, 10)


def recall_at_k(similarity: np.ndarray, correct: np.ndarray, ks=RECALL_AT) -> dict[str, float]:
    """similarity [Q, T]; correct [Q, T] bool (several correct targets per query allowed).
    R@K = fraction of queries with at least one correct target among their K most similar."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(correct, order, axis=1)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), np.inf)
    return {f"R@{k}": float(np.mean(first_hit < k)) for k in ks}


def chance_recall(correct: np.ndarray, ks=RECALL_AT) -> dict[str, float]:
    """Expected R@K of a random ranking, R@K_chance: a query with c correct targets among N
    misses all of them in its top K with probability C(N-c, K) / C(N, K)."""
    n = correct.shape[1]
    counts = correct.sum(axis=1)
    out = {}
    for k in ks:
        miss = np.ones(len(counts))
        for j in range(min(k, n)):  # C(N-c, K)/C(N, K) = prod_j (N-c-j)/(N-j)
            miss *= np.clip(n - counts - j, 0, None) / (n - j)
        out[f"R@{k}_chance"] = float(np.mean(1.0 - miss))
    return out


def retrieval(setup, params, source, config, assets, query: str, target: str, max_examples=None) -> dict:
    """R@1/5/10 for query -> target over the examples that hold both modalities. A target counts as
    correct if it is the query's own pair or has exactly the same content (e.g. a repeated caption),
    since no model can tell identical inputs apart."""
    for name in (query, target):
        check_modality(config, name)
    embedded = embed_all(setup, params, source, config, assets, [query, target], max_examples)
    return retrieval_scores(*embedded[query], *embedded[target], target)


def paired_rows(rq, rt, target: str):
    """The queries whose example also holds the target (rows into rq), their targets (cols into
    rt), and correct [n, n]: target j is correct for query i if it is i's own pair or has exactly
    the same content (e.g. a repeated caption)."""
    target_ids = {r["id"] for r in rt}
    pairs = [i for i, r in enumerate(rq) if r["id"] in target_ids]
    index_of = {r["id"]: j for j, r in enumerate(rt)}
    rows = np.array(pairs, dtype=np.int64)
    cols = np.array([index_of[rq[i]["id"]] for i in pairs], dtype=np.int64)
    content_ids: dict = {}
    keys = np.array([content_ids.setdefault(rt[j].get(target), len(content_ids)) for j in cols])
    return rows, cols, keys[:, None] == keys[None, :]


def retrieval_scores(zq, rq, zt, rt, target: str) -> dict:
    """retrieval() on embeddings already computed: query (zq, records rq) -> target (zt, rt)."""
    rows, cols, correct = paired_rows(rq, rt, target)
    if len(rows) == 0:
        return {**{f"R@{k}": 0.0 for k in RECALL_AT}, **{f"R@{k}_chance": 0.0 for k in RECALL_AT}, "n": 0}
    return {**recall_at_k(zq[rows] @ zt[cols].T, correct), **chance_recall(correct), "n": int(len(rows))}


def retrieval_during_training(setup, params, source, config, assets) -> dict:
    """R@K on the held-out split for every ordered pair of configured modalities that the split
    holds together (e.g. image->text, audio->text, smell->text), as eval/... metrics."""
    names = list(config.modalities.keys())
    embedded = embed_all(setup, params, source, config, assets, names, config.eval.max_examples)
    results = {}
    for a in names:
        for b in names:
            if a == b:
                continue
            metrics = retrieval_scores(*embedded[a], *embedded[b], b)
            if metrics.pop("n") == 0:
                continue
            for key, value in metrics.items():
                results[f"eval/retrieval/{a}->{b}/{key}"] = value
    return results
