"""Evaluation: cross-modal retrieval (R@K) and zero-shot classification from class names.

Embeddings come from each modality's unimodal pass (the same `Omni.embed` that the contrastive
loss trains), in fixed-shape batches through one jitted function per modality.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from omni.data import pipeline
from omni.modalities import registry

RECALL_AT = (1, 5, 10)


def recall_at_k(similarity: np.ndarray, correct: np.ndarray, ks=RECALL_AT) -> dict[str, float]:
    """similarity [Q, T]; correct [Q, T] bool (several correct targets per query allowed).
    R@K = fraction of queries with at least one correct target among their K most similar."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(correct, order, axis=1)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), np.inf)
    return {f"R@{k}": float(np.mean(first_hit < k)) for k in ks}


def embed_records(setup, params, source, config, assets, modality: str, max_examples=None):
    """Embeddings [N, E] of every record (in order) that holds `modality`, and those records."""
    embed = _embed_fn(setup, modality)
    batch_size = int(config.eval.batch_size)
    vectors, kept = [], []
    for batch, count, records in pipeline.eval_batches(source, config, assets, batch_size, max_examples):
        z = embed(params, batch)[:count]
        present = batch[f"{modality}/present"][:count]
        vectors.append(z[present])
        kept.extend(r for r, p in zip(records, present) if p)
    width = config.model.embed_dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, width), np.float32)), kept


def _embed_fn(setup, modality):
    cache = setup.__dict__.setdefault("_embed_fns", {})
    if modality not in cache:
        cache[modality] = setup.embed_fn(modality)
    return cache[modality]


def retrieval(setup, params, source, config, assets, query: str, target: str, max_examples=None) -> dict:
    """R@1/5/10 for query -> target over the examples that hold both modalities. A target counts as
    correct if it is the query's own pair or has exactly the same content (e.g. a repeated caption),
    since no model can tell identical inputs apart."""
    for name in (query, target):
        registry.get(name)
        if name not in config.modalities:
            raise ValueError(f"modality '{name}' is not in this run's config.modalities")
    zq, rq = embed_records(setup, params, source, config, assets, query, max_examples)
    zt, rt = embed_records(setup, params, source, config, assets, target, max_examples)
    target_ids = {r["id"] for r in rt}
    pairs = [i for i, r in enumerate(rq) if r["id"] in target_ids]
    index_of = {r["id"]: j for j, r in enumerate(rt)}
    rows = np.array(pairs, dtype=np.int64)
    cols = np.array([index_of[rq[i]["id"]] for i in pairs], dtype=np.int64)
    if len(rows) == 0:
        return {**{f"R@{k}": 0.0 for k in RECALL_AT}, "n": 0}
    zq, zt = zq[rows], zt[cols]
    content_ids: dict = {}
    keys = np.array([content_ids.setdefault(rt[j].get(target), len(content_ids)) for j in cols])
    correct = keys[:, None] == keys[None, :]
    return {**recall_at_k(zq @ zt.T, correct), "n": int(len(rows))}


def zeroshot(setup, params, source, config, assets, modality: str, template: str = "a photo of a {}",
             max_examples=None) -> dict:
    """Classify each example of `modality` by its most similar class text: the classes are the
    distinct labels of the split, each turned into text by the template."""
    z, records = embed_records(setup, params, source, config, assets, modality, max_examples)
    labelled = [(i, r["label"]) for i, r in enumerate(records) if r.get("label")]
    classes = sorted({label for _, label in labelled})
    if len(classes) < 2:
        raise ValueError(f"zero-shot needs at least 2 distinct labels in the split, found {len(classes)}")
    class_records = [{"id": f"class-{c}", "text": template.format(c)} for c in classes]
    class_z, _ = embed_records(setup, params, _ListSource(class_records), config, assets, "text")
    rows = np.array([i for i, _ in labelled])
    truth = np.array([classes.index(label) for _, label in labelled])
    predicted = np.argmax(z[rows] @ class_z.T, axis=1)
    return {"accuracy": float(np.mean(predicted == truth)), "n": int(len(rows)), "classes": len(classes)}


class _ListSource:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def retrieval_during_training(setup, params, source, config, assets) -> dict:
    """image<->text (or every configured pair) R@K on the held-out split, as eval/... metrics."""
    names = list(config.modalities.keys())
    results = {}
    for a in names:
        for b in names:
            if a != b:
                metrics = retrieval(setup, params, source, config, assets, a, b, config.eval.max_examples)
                for key, value in metrics.items():
                    if key != "n":
                        results[f"eval/retrieval/{a}->{b}/{key}"] = value
    return results


def load_run(workdir: str | Path):
    """A finished (or running) workdir -> (config, setup, params, assets, step) of its newest checkpoint."""
    import jax.numpy as jnp  # noqa: F401

    from omni import config as config_lib, parallel
    from omni.checkpoint import Checkpoints
    from omni.modalities.text import BPETokenizer
    from omni.train import build_setup

    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: not found; is {workdir} an omni workdir?")
    config = config_lib.from_json_file(config_path)
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    checkpoints = Checkpoints(workdir / "checkpoints", keep=1000, async_save=False)
    step = checkpoints.latest_step()
    if step is None:
        raise FileNotFoundError(f"{workdir}/checkpoints: no complete checkpoint")
    setup = build_setup(config, mesh)
    with jax.set_mesh(mesh):
        state = checkpoints.restore_state(step, setup.abstract_state)
    assets = {"tokenizer": BPETokenizer.from_json(checkpoints.restore_assets(step)["tokenizer"])}
    checkpoints.close()
    return config, setup, state["params"], assets, step
