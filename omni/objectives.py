"""Masked and contrastive objectives, and their weighted mixture.

Objectives (config.loss.<name>.weight each):
  * contrastive: InfoNCE or SigLIP (omni.contrastive) between the unimodal CLS embeddings of
    every pair of modalities, over the rows where both are present;
  * per-modality masked modelling (mlm for text, mim for image, ...): reconstruct the masked tokens
    of examples in which that modality is the ONLY one present;
  * mmm, masked multimodal modelling: the same reconstruction for examples with two or more
    modalities present, where the fused pass lets each masked token use the other modalities;
  * itm, matching: does this b belong to this a? One fused pass per pair, hard negatives mined
    from the contrastive similarities (omni.matching).
The batch is a dict of sub-batches, one per modality set (omni.data.pipeline), each holding only
its own modalities. Both masked kinds come from ONE fused pass per sub-batch over masked inputs;
an example belongs to exactly one. A modality's unimodal pass runs over the rows that hold it, and
a contrastive term exists only for a pair that some sub-batch holds together. A modality switched
off in a row (modality dropout, an undecodable file) adds no loss and no gradient; an objective
with nothing to score adds exactly 0.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from omni import matching
from omni.contrastive import infonce_loss_sharded, siglip_loss_sharded
from omni.modalities import registry
from omni.parallel import batch_shards
from omni.sub_batches import as_sub_batches, concat_rows, holding, modality_inputs, same_shapes, split_rows


def safe_mean(values, weights):
    """sum(w * v) / sum(w), and exactly 0 (with zero gradient) when every weight is 0."""
    total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0))
    count = jnp.sum(weights)
    return total / jnp.maximum(count, 1.0)


def cooccurring_pairs(model, batch) -> list[tuple[str, str]]:
    """The modality pairs (in model order) that some sub-batch holds together."""
    return [(a, b) for a, b in itertools.combinations(model.modality_names, 2) if holding(batch, a, b)]


class UnimodalPass(NamedTuple):
    """One modality's unimodal pass over the rows of the sub-batches in `sizes` (set name -> rows)."""
    name: str
    sizes: dict
    sequence: tuple


def unimodal_passes(model, batch) -> list[UnimodalPass]:
    """The unimodal pass of a modality runs over the rows of every sub-batch that has it, and on
    no other row (once per distinct shape: text has a length per set)."""
    shards = batch_shards()
    passes = []
    for name in model.modality_names:
        for subs in same_shapes(holding(batch, name), name):
            sequence = model.unimodal_sequence(name, modality_inputs(subs.values(), name, shards))
            passes.append(UnimodalPass(name, {s: sub[f"{name}/present"].shape[0] for s, sub in subs.items()},
                                       sequence))
    return passes


def embeddings_of(model, passes: list[UnimodalPass], hiddens) -> dict[str, dict]:
    """name -> {set name: embeddings of that sub-batch's rows}, from the passes' hidden states."""
    shards = batch_shards()
    out = {}
    for one, hidden in zip(passes, hiddens):
        z = model.embedding(one.name, hidden)
        out.setdefault(one.name, {}).update(zip(one.sizes, split_rows(z, list(one.sizes.values()), shards)))
    return out


def unimodal_embeddings(model, batch) -> dict[str, dict]:
    """name -> {set name: embeddings of that sub-batch's rows} (`unimodal_passes`, run together)."""
    passes = unimodal_passes(model, batch)
    return embeddings_of(model, passes, model.encoder.run([p.sequence for p in passes]))


def pair_rows(batch, embeddings, a, b, shards):
    """The rows where a and b co-occur: (za, zb, both present)."""
    subs = holding(batch, a, b)
    za = concat_rows([embeddings[a][s] for s in subs], shards)
    zb = concat_rows([embeddings[b][s] for s in subs], shards)
    valid = concat_rows([sub[f"{a}/present"] & sub[f"{b}/present"] for sub in subs.values()], shards)
    return za, zb, valid


def contrastive_losses(model, batch, config, embeddings=None):
    """One contrastive term per pair (a, b) that co-occurs in the batch's sub-batches, over the
    rows where both are present (`unimodal_embeddings` unless `embeddings` are given)."""
    embeddings = embeddings or unimodal_embeddings(model, batch)
    kind = config.loss.contrastive.kind
    shards = batch_shards()
    losses = {}
    for a, b in cooccurring_pairs(model, batch):
        za, zb, valid = pair_rows(batch, embeddings, a, b, shards)
        if kind == "siglip":
            loss = siglip_loss_sharded(za, zb, model.logit_scale[...], model.logit_bias[...], valid)
        else:
            loss = infonce_loss_sharded(za, zb, model.logit_scale[...], valid)
        losses[f"{a}-{b}"] = (loss, jnp.any(valid))
    return losses


def row_keys(rng, sub: dict, modality_index: int):
    """One key per row from (step key, example id, modality): an example's masks do not depend
    on the rows it shares a batch with, nor on the mesh."""
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(rng, i), modality_index))(sub["example_id"])


def masked_block(model, name, sub, keys, present):
    """One modality's masked input to the fused pass, and how its output is scored -> (block,
    score, weight): `score(hidden)` gives the loss per position [B, N], `weight` [B, N] is 1 at
    the masked positions of valid tokens in present rows.

    The mask-token way (every stem; FLAVA/BEiT): masked tokens enter as the stem's mask token,
    and the stem's head scores the encoder's states. The MAE way (image and video under
    model.mae, omni.mae): only the visible patches enter, and the modality's decoder scores all
    N patches from the encoder's states of the visible ones."""
    decoders = getattr(model, "decoders", {})
    if name in decoders:
        patches = model.stems[name].visible_embed(sub, keys, model.dtype)
        block = model.sequence(name, patches.tokens, patches.valid, present)
        weight = patches.picked * patches.patch_valid * present[:, None]
        return block, lambda h: decoders[name].reconstruction_loss(h, patches, present, model.dtype), weight
    tokens, valid, target, picked = model.stems[name].masked_embed(sub, keys, model.dtype)
    weight = picked * valid * present[:, None]
    return (model.sequence(name, tokens, valid, present),
            lambda h: model.stems[name].reconstruction_loss(h, target, model.dtype), weight)


class MaskedPass(NamedTuple):
    """One sub-batch's fused pass: its blocks, how each modality's output is scored
    (`masked_block`), and which rows hold two or more modalities (scored by mmm)."""
    blocks: dict
    scores: dict
    multimodal: jax.Array
    sequence: tuple


def masked_passes(model, batch, rng) -> list[MaskedPass]:
    """One fused pass per sub-batch, over masked inputs of that sub-batch's modalities only.
    Under model.mae the image and video blocks hold their visible patches only (`masked_block`)."""
    names = model.modality_names
    passes = []
    for sub in batch.values():
        held = [n for n in names if f"{n}/present" in sub]
        present = {n: sub[f"{n}/present"] for n in held}
        blocks, scores = {}, {}
        for name in held:
            keys = row_keys(rng, sub, names.index(name))
            block, score, weight = masked_block(model, name, sub, keys, present[name])
            blocks[name], scores[name] = block, (score, weight)
        multimodal = sum(p.astype(jnp.int32) for p in present.values()) >= 2
        passes.append(MaskedPass(blocks, scores, multimodal, model.fused_sequence(blocks)))
    return passes


def masked_losses_of(model, passes: list[MaskedPass], hiddens) -> dict:
    """{objective: loss} for each masked objective and mmm, from the fused passes' hidden states.
    An example whose present modalities are one scores that modality's objective, one with two
    or more scores mmm; each objective is the mean over all its masked positions in the batch."""
    objectives = [registry.get(n).objective for n in model.modality_names] + ["mmm"]
    sums, counts = dict.fromkeys(objectives, 0.0), dict.fromkeys(objectives, 0.0)
    for one, hidden in zip(passes, hiddens):
        states = model.fused_states(one.blocks, hidden)
        for name, (score, weight) in one.scores.items():
            per_position = score(states[name])
            for objective, w in ((registry.get(name).objective, weight * (~one.multimodal)[:, None]),
                                 ("mmm", weight * one.multimodal[:, None])):
                sums[objective] = sums[objective] + jnp.sum(jnp.where(w > 0, per_position * w, 0.0))
                counts[objective] = counts[objective] + jnp.sum(w)
    return {obj: sums[obj] / jnp.maximum(counts[obj], 1.0) for obj in sums}


def step_passes(model, batch, rng, config) -> tuple[list[MaskedPass], list[UnimodalPass]]:
    """The passes a step runs: one fused pass per sub-batch when a masked objective weighs, and
    the unimodal passes when the contrastive or matching objective does."""
    weights = registry.active_objectives(config)
    masked = any(name not in ("contrastive", "itm") for name in weights)
    unimodal = weights.get("contrastive", 0.0) > 0 or weights.get("itm", 0.0) > 0
    return (masked_passes(model, batch, rng) if masked else [],
            unimodal_passes(model, batch) if unimodal else [])


def run_passes(model, batch, rng, config):
    """The step's fused and unimodal passes (`step_passes`) as ONE encoder call
    (omni.transformer.Transformer.run) -> (masked losses, unimodal embeddings, the encoder's
    token counts); a kind of pass the step does not run gives {} and None."""
    fused, single = step_passes(model, batch, rng, config)
    if not fused + single:
        return {}, None, {}
    hiddens, counts = model.encoder.run([p.sequence for p in fused + single], counts=True)
    return (masked_losses_of(model, fused, hiddens[:len(fused)]) if fused else {},
            embeddings_of(model, single, hiddens[len(fused):]) if single else None, counts)


def total_loss(model, batch, rng, config):
    """Weighted sum of every enabled objective -> (loss, metrics), over a batch of sub-batches
    (omni.data.pipeline) or a flat batch (`as_sub_batches`). Zero-weight objectives are not
    computed at all, so they cost nothing."""
    weights = registry.active_objectives(config)
    batch = as_sub_batches(batch)
    metrics = {}
    total = 0.0
    losses, embeddings, counts = run_passes(model, batch, rng, config)
    metrics.update(counts)  # the token rows the encoder computed, and how many were real
    for name, loss in losses.items():
        metrics[f"loss/{name}"] = loss
        total = total + weights.get(name, 0.0) * loss
    if weights.get("contrastive", 0.0) > 0:
        pairs = contrastive_losses(model, batch, config, embeddings)
        # Summed, not averaged: every pair is its own objective, so a fifth modality does not
        # dilute the image-text signal (averaged over 4 pairs, audio- and smell-text did not learn
        # in the default run). A pair with no valid row in this batch adds exactly zero.
        contrastive = sum((loss for loss, _ in pairs.values()), 0.0)
        for pair, (loss, _) in pairs.items():
            metrics[f"loss/contrastive/{pair}"] = loss
        metrics["loss/contrastive"] = contrastive
        total = total + weights["contrastive"] * contrastive
    if weights.get("itm", 0.0) > 0:
        pairs = matching_losses(model, batch, embeddings, jax.random.fold_in(rng, 7919), config)
        for pair, loss in pairs.items():
            metrics[f"loss/itm/{pair}"] = loss
        metrics["loss/itm"] = sum(pairs.values(), 0.0)  # summed over pairs, as the contrastive terms are
        total = total + weights["itm"] * metrics["loss/itm"]
    metrics["loss"] = total
    return total, metrics


def matching_losses(model, batch, embeddings, rng, config) -> dict:
    """The matching objective (omni.matching) for each trained pair that co-occurs in the batch,
    over the rows of the sub-batches that hold both."""
    shards = batch_shards()
    trained = registry.itm_pairs(config, model.modality_names)
    losses = {}
    for index, (a, b) in enumerate(trained):
        subs = holding(batch, a, b)
        if not subs:
            continue
        flat = {**modality_inputs(subs.values(), a, shards), **modality_inputs(subs.values(), b, shards)}
        za, zb, _ = pair_rows(batch, embeddings, a, b, shards)
        losses.update(matching.matching_losses(model, flat, {a: za, b: zb}, rng, config,
                                               pairs=[(index, a, b)]))
    return losses
