"""A training batch as sub-batches by modality set (omni.data.pipeline): {set name: {"<modality>/
<array>": ..., "<modality>/present": ..., "example_id": ...}}, and the row plumbing the objectives
need across them: which sub-batches hold a modality, and their rows joined into one array and
split back. Joining is done shard by shard, so that under a mesh no row leaves its device.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def as_sub_batches(batch: dict) -> dict:
    """A batch of sub-batches as it is; a flat batch (every modality's arrays and presence bits in
    one dict, as evaluation builds them: the padded layout) as a single sub-batch, its rows named
    by their index."""
    if all(isinstance(v, dict) for v in batch.values()):
        return batch
    if "example_id" in batch:
        return {"all": batch}
    rows = next(v.shape[0] for k, v in batch.items() if k.endswith("/present"))
    return {"all": {**batch, "example_id": jnp.arange(rows, dtype=jnp.uint32)}}


def holding(batch: dict, *names) -> dict[str, dict]:
    """The sub-batches (by set name) that hold every one of `names`, in the batch's order."""
    return {set_name: sub for set_name, sub in batch.items() if all(f"{n}/present" in sub for n in names)}


def concat_rows(arrays: list, shards: int):
    """Rows of several sub-batches as one array, concatenated shard by shard: each of the
    `shards` batch shards keeps its own rows (no data crosses devices), so the rows of one
    example set are interleaved with the others'. Every consumer below is row-order invariant."""
    if len(arrays) == 1:
        return arrays[0]
    pieces = [a.reshape(shards, a.shape[0] // shards, *a.shape[1:]) for a in arrays]
    joined = jnp.concatenate(pieces, axis=1)
    return joined.reshape(-1, *joined.shape[2:])


def split_rows(x, sizes: list[int], shards: int) -> list:
    """The inverse of `concat_rows`."""
    if len(sizes) == 1:
        return [x]
    x = x.reshape(shards, -1, *x.shape[1:])
    bounds = np.cumsum([0] + [n // shards for n in sizes])
    return [x[:, lo:hi].reshape(-1, *x.shape[2:]) for lo, hi in zip(bounds[:-1], bounds[1:])]


def modality_inputs(subs: list[dict], name: str, shards: int) -> dict:
    """One modality's arrays (and presence, and example ids) from every sub-batch in `subs`. A
    sub-batch whose arrays are shorter (its own text length) is padded with zeros to the longest:
    zero is the text padding id."""
    subs = list(subs)
    keys = [k for k in subs[0] if k.startswith(f"{name}/")] + ["example_id"]

    def padded(a, like):
        return jnp.pad(a, [(0, 0)] + [(0, want - have) for have, want in zip(a.shape[1:], like[1:])])

    out = {}
    for k in keys:
        longest = tuple(max(dims) for dims in zip(*(sub[k].shape for sub in subs)))
        out[k] = concat_rows([padded(sub[k], longest) for sub in subs], shards)
    return out


def same_shapes(subs: dict, name: str) -> list[dict]:
    """`subs` (set name -> sub-batch) grouped by the shapes of `name`'s arrays, so that one pass
    runs over each group without padding any sub-batch to another's length."""
    groups: dict[tuple, dict] = {}
    for set_name, sub in subs.items():
        shapes = tuple(sub[k].shape[1:] for k in sub if k.startswith(f"{name}/"))
        groups.setdefault(shapes, {})[set_name] = sub
    return list(groups.values())
