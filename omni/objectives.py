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
Both masked kinds come from ONE fused pass over masked inputs; an example belongs to exactly one.
An absent modality adds no loss and no gradient; an objective with nothing to score adds exactly 0.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from omni import matching
from omni.contrastive import infonce_loss_chunked, siglip_loss_chunked
from omni.modalities import registry


def safe_mean(values, weights):
    """sum(w * v) / sum(w), and exactly 0 (with zero gradient) when every weight is 0."""
    total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0))
    count = jnp.sum(weights)
    return total / jnp.maximum(count, 1.0)


def contrastive_losses(model, batch, config, embeddings=None):
    """Unimodal pass per modality (unless `embeddings` are given), then one contrastive term per
    present pair (a, b)."""
    names = model.modality_names
    embeddings = embeddings or {n: model.embed(n, batch) for n in names}
    kind = config.loss.contrastive.kind
    losses = {}
    for a, b in itertools.combinations(names, 2):
        valid = batch[f"{a}/present"] & batch[f"{b}/present"]
        if kind == "siglip":
            loss = siglip_loss_chunked(embeddings[a], embeddings[b], model.logit_scale[...],
                                       model.logit_bias[...], valid)
        else:
            loss = infonce_loss_chunked(embeddings[a], embeddings[b], model.logit_scale[...], valid)
        losses[f"{a}-{b}"] = (loss, jnp.any(valid))
    return losses


def masked_losses(model, batch, rng, config):
    """One fused pass over masked inputs -> {objective: loss} for each masked objective and mmm."""
    names = model.modality_names
    present = {n: batch[f"{n}/present"] for n in names}
    multimodal = sum(p.astype(jnp.int32) for p in present.values()) >= 2
    blocks, targets = {}, {}
    for i, name in enumerate(names):
        stem = model.stems[name]
        tokens, valid, target, picked = stem.masked_embed(batch, jax.random.fold_in(rng, i), model.dtype)
        blocks[name] = model.sequence(name, tokens, valid, present[name])
        targets[name] = (target, picked * valid * present[name][:, None])
    hidden = model.fused(blocks)
    losses = {}
    mmm_values, mmm_weights = [], []
    for name in names:
        target, weight = targets[name]
        per_position = model.stems[name].reconstruction_loss(hidden[name], target, model.dtype)
        alone = weight * (~multimodal)[:, None]
        losses[registry.get(name).objective] = safe_mean(per_position, alone)
        mmm_values.append(per_position.reshape(-1))
        mmm_weights.append((weight * multimodal[:, None]).reshape(-1))
    losses["mmm"] = safe_mean(jnp.concatenate(mmm_values), jnp.concatenate(mmm_weights))
    return losses


def total_loss(model, batch, rng, config):
    """Weighted sum of every enabled objective -> (loss, metrics). Zero-weight objectives are not
    computed at all, so they cost nothing."""
    weights = registry.active_objectives(config)
    metrics = {}
    total = 0.0
    if any(name != "contrastive" for name in weights):
        for name, loss in masked_losses(model, batch, rng, config).items():
            metrics[f"loss/{name}"] = loss
            total = total + weights.get(name, 0.0) * loss
    embeddings = None
    if weights.get("contrastive", 0.0) > 0 or weights.get("itm", 0.0) > 0:
        embeddings = {n: model.embed(n, batch) for n in model.modality_names}
    if weights.get("contrastive", 0.0) > 0:
        pairs = contrastive_losses(model, batch, config, embeddings)
        # Summed, not averaged: every pair is its own objective, so a fifth modality does not
        # dilute the image-text signal (averaged over 4 pairs, audio- and smell-text did not learn
        # in the default run). A pair with no valid row in this batch adds exactly zero.
        contrastive = sum(loss for loss, _ in pairs.values())
        for pair, (loss, _) in pairs.items():
            metrics[f"loss/contrastive/{pair}"] = loss
        metrics["loss/contrastive"] = contrastive
        total = total + weights["contrastive"] * contrastive
    if weights.get("itm", 0.0) > 0:
        pairs = matching.matching_losses(model, batch, embeddings, jax.random.fold_in(rng, 7919), config)
        for pair, loss in pairs.items():
            metrics[f"loss/itm/{pair}"] = loss
        metrics["loss/itm"] = sum(pairs.values())  # summed over pairs, as the contrastive terms are
        total = total + weights["itm"] * metrics["loss/itm"]
    metrics["loss"] = total
    return total, metrics
