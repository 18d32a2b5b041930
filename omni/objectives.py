"""Masked and contrastive objectives, and their weighted mixture.

Objectives (config.loss.<name>.weight each):
  * contrastive: SigLIP sigmoid loss (default) or InfoNCE between the unimodal CLS embeddings of
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
from jax.sharding import PartitionSpec as P

from omni import matching
from omni.modalities import registry
from omni.parallel import batch_mesh_axes


def safe_mean(values, weights):
    """sum(w * v) / sum(w), and exactly 0 (with zero gradient) when every weight is 0."""
    total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0))
    count = jnp.sum(weights)
    return total / jnp.maximum(count, 1.0)


def siglip_loss(za, zb, logit_scale, logit_bias, valid):
    """Sigmoid loss of Zhai et al. (2023): every (i, j) is a binary pair-or-not decision.
    loss = -1/n * sum_ij log sigmoid(label_ij * (exp(t) za_i.zb_j + b)), label = +1 on the diagonal,
    -1 elsewhere, over rows and columns that are valid; n = number of valid rows."""
    logits = jnp.exp(logit_scale) * (za @ zb.T) + logit_bias
    labels = 2.0 * jnp.eye(za.shape[0]) - 1.0
    pair_valid = valid[:, None] & valid[None, :]
    per_pair = jnp.where(pair_valid, jax.nn.log_sigmoid(labels * logits), 0.0)
    return -jnp.sum(per_pair) / jnp.maximum(jnp.sum(valid), 1)


def _siglip_block_sum(za, zb, logit_scale, logit_bias, valid_a, valid_b, diagonal: bool):
    """sum of log sigmoid(label * logit) over valid pairs of one block of the similarity matrix."""
    logits = jnp.exp(logit_scale) * (za @ zb.T) + logit_bias
    labels = 2.0 * jnp.eye(za.shape[0]) - 1.0 if diagonal else -jnp.ones_like(logits)
    pair_valid = valid_a[:, None] & valid_b[None, :]
    return jnp.sum(jnp.where(pair_valid, jax.nn.log_sigmoid(labels * logits), 0.0))


def siglip_loss_chunked(za, zb, logit_scale, logit_bias, valid):
    """SigLIP over a batch sharded across devices, without gathering the global similarity matrix
    (the SigLIP paper's chunked scheme). Each device scores its own rows against its own columns
    (the positives), then passes its text-side chunk around the ring with ppermute n-1 times and
    scores the negatives of each visiting chunk. Memory per device stays O(b_local^2); the result
    equals `siglip_loss` on the gathered batch."""
    axes = batch_mesh_axes()
    if not axes:
        return siglip_loss(za, zb, logit_scale, logit_bias, valid)
    mesh = jax.sharding.get_abstract_mesh()
    shards = 1
    for a in axes:
        shards *= mesh.shape[a]
    ring = [(i, (i + 1) % shards) for i in range(shards)]

    def local(za, zb, valid_a, valid_b, t, b):
        total = _siglip_block_sum(za, zb, t, b, valid_a, valid_b, diagonal=True)
        for _ in range(shards - 1):
            zb, valid_b = jax.lax.ppermute((zb, valid_b), axes, ring)
            total += _siglip_block_sum(za, zb, t, b, valid_a, valid_b, diagonal=False)
        total = jax.lax.psum(total, axes)
        count = jax.lax.psum(jnp.sum(valid_a), axes)
        return -total / jnp.maximum(count, 1)

    rows = P(axes)
    return jax.shard_map(local, in_specs=(rows, rows, rows, rows, P(), P()), out_specs=P(),
                         check_vma=False)(za, zb, valid, valid, logit_scale, logit_bias)


def infonce_loss(za, zb, logit_scale, valid):
    """CLIP's symmetric softmax cross-entropy over valid rows/columns, averaged over both directions."""
    logits = jnp.exp(logit_scale) * (za @ zb.T)
    logits = jnp.where(valid[:, None] & valid[None, :], logits, -1e9)
    diagonal = jnp.diagonal(logits)
    a_to_b = jax.nn.logsumexp(logits, axis=1) - diagonal
    b_to_a = jax.nn.logsumexp(logits, axis=0) - diagonal
    return safe_mean(0.5 * (a_to_b + b_to_a), valid.astype(jnp.float32))


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
            loss = infonce_loss(embeddings[a], embeddings[b], model.logit_scale[...], valid)
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
