"""FLOPs: the model's analytic training FLOPs per step, the numerator of MFU (model FLOPs
utilisation; the device's measured peak, the denominator, is omni.peak). Used by the trainer's
logs and by `omni bench`."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from omni import mae
from omni.modalities import registry


def layer_flops(tokens, width: int, hidden: int):
    """Forward FLOPs of one transformer layer over a sequence of `tokens` (a number or an array):
    projections 2*T*(4*D^2) (q, k, v, out) + MLP 2*T*(2*D*F) + attention scores and mixing 2*2*T^2*D."""
    return 2 * tokens * (4 * width ** 2 + 2 * width * hidden) + 4 * tokens ** 2 * width


class StepWork:
    """The step's forward FLOPs, written once for two counts: every token slot the step computes
    (`slot_flops`, a number from the config and the mixture: the padded count) and the present,
    non-padding tokens of a real batch (`real_work`, arrays inside the step).

    Training FLOPs = 3 x forward (backward costs twice the forward). The step runs the transformer
    once per modality on its own tokens (unimodal pass, when the contrastive loss is on) and once
    per sub-batch on the concatenation of its modalities (fused pass, when a masked objective is
    on); plus each modality's stem (in every pass) and reconstruction head (`stem_flops`: e.g. the
    image patch projection and pixel head, the text output layer), and the contrastive
    projections. With matching (loss.itm), three fused passes per trained pair on loss.itm.rows of
    the rows that hold both (omni.matching). Under model.mae (omni.mae), image and video enter the
    fused pass with their visible patches only, and their decoders are counted instead of their
    stems' heads.
    """

    def __init__(self, config):
        m = config.model
        self.config = config
        self.width, self.hidden = float(m.width), float(m.width * m.mlp_ratio)
        self.depth, self.embed_dim = float(m.depth), float(m.embed_dim)
        self.lengths = {n: registry.get(n).num_tokens(config) for n in config.modalities}
        # floats: inside the step a Python int past 2^31 would not fit JAX's int32 constants
        self.stems = {n: tuple(float(f) for f in registry.get(n).stem_flops(config)) for n in config.modalities}
        weights = registry.active_objectives(config)
        self.unimodal = "contrastive" in weights or "itm" in weights
        self.masked = any(name not in ("contrastive", "itm") for name in weights)
        self.itm_pairs = registry.itm_pairs(config, list(config.modalities.keys())) if "itm" in weights else []
        self.itm_rows = int(config.loss.get("itm", {}).get("rows", 0))
        # MAE (omni.mae): these modalities enter the fused pass with their visible patches only,
        # and a decoder of their own reconstructs every patch
        self.visible = {n: mae.visible_count(config, n) for n in mae.mae_modalities(config)}
        width, depth, _ = mae.decoder_dims(config)
        self.decoder_width, self.decoder_depth = float(width), float(depth)
        self.mlp_ratio = m.mlp_ratio

    def transformer(self, tokens):
        return self.depth * layer_flops(tokens, self.width, self.hidden)

    def token_wise_per_row(self) -> float:
        """Training FLOPs of one token row through every layer's norms, projections and MLP:
        what a row that token compaction leaves out (model.token_capacity) does not cost."""
        return 3.0 * self.depth * 2 * (4 * self.width ** 2 + 2 * self.width * self.hidden)

    def fused_tokens(self, name, tokens, present):
        """A modality's tokens in the fused pass: all its `tokens` (CLS included), or under MAE
        its CLS and the visible share of its patches."""
        if name not in self.visible:
            return tokens
        return present + (tokens - present) * self.visible[name] / self.lengths[name]

    def masked_stem(self, name, patches):
        """Forward FLOPs of a modality's stem and reconstruction in the fused pass, over `patches`
        of its tokens (CLS not included): the stem's embedding and head; under MAE the embedding
        of the visible share, and the decoder (projection in, layers and head over every patch)."""
        embed, head = self.stems[name]
        share = patches / max(self.lengths[name], 1)  # of the stem's slots
        if name not in self.visible:
            return share * (embed + head)
        visible_share = self.visible[name] / self.lengths[name]
        width, depth = self.decoder_width, self.decoder_depth
        return (share * visible_share * embed + 2 * patches * visible_share * self.width * width
                + depth * layer_flops(patches, width, width * self.mlp_ratio)
                + share * head * width / self.width)  # the stem's head, at the decoder's width

    def rows_forward(self, tokens: dict, present: dict):
        """Forward FLOPs of each row of one sub-batch: tokens[name] = its tokens in each row, CLS
        included (0 where absent); present[name] = 1 where present. Arrays or numbers."""
        names = list(tokens)
        forward = 0.0
        for name in names:
            embed = self.stems[name][0]
            share = (tokens[name] - present[name]) / max(self.lengths[name], 1)  # of the stem's slots
            if self.unimodal:
                forward += self.transformer(tokens[name]) + present[name] * 2 * self.width * self.embed_dim
                forward += share * embed
            if self.masked:
                forward += self.masked_stem(name, tokens[name] - present[name])
        if self.masked:
            forward += self.transformer(sum(self.fused_tokens(n, tokens[n], present[n]) for n in names))
        return forward

    def matched_forward(self, tokens_a, tokens_b, share_a, share_b, a, b):
        """Forward FLOPs of the matching passes of one row of pair (a, b): the positive and two
        hard-negative fused passes, the head, and the clean tokens' stems."""
        return 3 * (self.transformer(tokens_a + tokens_b) + 2 * self.width) + \
            share_a * self.stems[a][0] + share_b * self.stems[b][0]

    def slot_flops(self, sub_batches) -> float:
        """Training FLOPs of a step that counts every token slot as work: `sub_batches` is
        [(modalities, rows)] or [(modalities, rows, {modality: tokens})] for a sub-batch whose
        modality holds fewer tokens than the config's (a set's own text length), every slot of
        every held modality full."""
        total = 0.0
        for modalities, rows, *own in sub_batches:
            full = {n: (own[0] if own else {}).get(n, self.lengths[n]) + 1 for n in modalities}
            total += rows * self.rows_forward(full, dict.fromkeys(modalities, 1))
            for a, b in self.itm_pairs:
                if a in modalities and b in modalities:
                    matched = min(rows, self.itm_rows) if self.itm_rows else rows
                    total += matched * self.matched_forward(full[a], full[b], 1, 1, a, b)
        return 3.0 * total


def model_flops_per_step(config, sub_batches=None) -> float:
    """Training FLOPs per step counting every token slot (the padded count). `sub_batches`:
    [(modalities, rows)]; default: every configured modality in every row of the batch."""
    if sub_batches is None:
        sub_batches = [(tuple(config.modalities.keys()), int(config.train.batch_size))]
    return StepWork(config).slot_flops(sub_batches)


def computed_flops(config, slot_flops: float, counts: dict) -> float:
    """Training FLOPs a step computed: `slot_flops` (every token slot, `model_flops_per_step`)
    less the token-wise work of the rows that token compaction left out (`counts`: the encoder's
    "encoder_slots" and "encoder_rows", omni.transformer.Transformer.run)."""
    left_out = counts["encoder_slots"] - counts["encoder_rows"]
    return slot_flops - StepWork(config).token_wise_per_row() * left_out


def real_work(model, batch, config) -> dict:
    """Inside the step, on a batch of sub-batches (omni.sub_batches.as_sub_batches):
    {"real_flops": training FLOPs on present, non-padding tokens, "real_tokens": those tokens
    (CLS included)}, summed over the sub-batches of `batch`. A token is real when its modality is
    present in the row and its stem calls it valid (text: not padding); the stem's tokens
    themselves are dead code here and compile away. (The token rows the encoder computed, and how
    many held real tokens, come from the loss: omni.objectives.run_passes.)"""
    work = StepWork(config)
    flops = tokens = 0.0
    for sub in batch.values():
        names = [n for n in model.modality_names if f"{n}/present" in sub]
        present = {n: sub[f"{n}/present"].astype(jnp.float32) for n in names}
        counts = {}
        for name in names:
            valid = model.stems[name].embed(sub, model.dtype)[1]
            counts[name] = present[name] * (1.0 + jnp.sum(valid, axis=1, dtype=jnp.float32))
        flops += jnp.sum(work.rows_forward(counts, present))
        tokens += sum(jnp.sum(c) for c in counts.values())
        for a, b in work.itm_pairs:
            if a in names and b in names:
                both = present[a] * present[b]
                per_row = work.matched_forward(counts[a], counts[b], 1.0, 1.0, a, b) * both
                # matching scores at most loss.itm.rows of the pair's rows (omni.matching.pack_rows)
                fraction = 1.0 if not work.itm_rows else \
                    jnp.minimum(1.0, work.itm_rows / jnp.maximum(jnp.sum(both), 1.0))
                flops += jnp.sum(per_row) * fraction
    return {"real_flops": 3.0 * flops, "real_tokens": tokens}


def token_slots_per_step(config, sub_batches) -> int:
    """Token slots a step computes, CLS included: [(modalities, rows[, {modality: tokens}])] of
    the mixture, as `StepWork.slot_flops` takes them."""
    return sum(rows * sum((own[0] if own else {}).get(n, registry.get(n).num_tokens(config)) + 1 for n in modalities)
               for modalities, rows, *own in sub_batches)
