"""Embeddings of dataset records for evaluation: each modality's unimodal pass (the same
`Omni.embed` that the contrastive loss trains), in fixed-shape batches through one jitted function
per modality, cached on the run's Setup."""
from __future__ import annotations

import numpy as np

from omni.data import pipeline
from omni.modalities import registry


class ListSource:
    """A list of records that reads like a dataset split."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def check_modality(config, name: str) -> None:
    """Raise unless `name` is a known modality that this run's config holds."""
    registry.get(name)
    if name not in config.modalities:
        raise ValueError(f"modality '{name}' is not in this run's config.modalities")


def modality_embed_fn(setup, modality: str):
    """The jitted unimodal embedding function of `modality` (params, numpy batch -> [B, E] numpy),
    compiled once per Setup."""
    cache = setup.__dict__.setdefault("_embed_fns", {})
    if modality not in cache:
        cache[modality] = setup.embed_fn(modality)
    return cache[modality]


def embed_records(setup, params, source, config, assets, modality: str, max_examples=None):
    """Embeddings [N, E] of every record (in order) that holds `modality`, and those records."""
    return embed_all(setup, params, source, config, assets, [modality], max_examples)[modality]


def embed_all(setup, params, source, config, assets, modalities, max_examples=None) -> dict:
    """modality -> (embeddings [N, E], records holding it), all from ONE pass over the records
    (each record is decoded once, however many modalities it holds)."""
    embeds = {m: modality_embed_fn(setup, m) for m in modalities}
    vectors = {m: [] for m in modalities}
    kept = {m: [] for m in modalities}
    batch_size = int(config.eval.batch_size)
    for batch, count, records in pipeline.eval_batches(source, config, assets, batch_size, max_examples,
                                                       modalities=modalities):
        for m in modalities:
            present = batch[f"{m}/present"][:count]
            if not present.any():
                continue
            z = embeds[m](params, batch)[:count]
            vectors[m].append(z[present])
            kept[m].extend(r for r, p in zip(records, present) if p)
    width = config.model.embed_dim
    return {m: (np.concatenate(vectors[m]) if vectors[m] else np.zeros((0, width), np.float32), kept[m])
            for m in modalities}


def labelled(z, records):
    """The rows of embeddings z whose records carry a label, and those labels."""
    rows = [i for i, r in enumerate(records) if r.get("label")]
    return z[rows], [records[i]["label"] for i in rows]
