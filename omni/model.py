"""The single early-fusion transformer.

Every modality's stem turns its arrays into tokens; the model prepends that modality's CLS token,
adds its modality-type embedding, and runs ONE shared pre-norm transformer, in two ways:

  * unimodal: each modality's block on its own (same weights). This equals a block-diagonal
    mask over the concatenation, without paying for the masked-out blocks.
    The CLS outputs, projected and L2-normalised, feed the contrastive losses and `embed`.
  * fused: all modalities concatenated, full attention over every present, non-padding token.
    Used on masked inputs for the masked-modelling losses.

A training step runs all its passes, of both kinds, as one call of the transformer
(omni.transformer.Transformer.run, from omni.objectives); `embed` and `fused` run one.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from omni import mae, mup
from omni.modalities import registry
from omni.nn import Dense, LayerNorm, param
from omni.transformer import Transformer


def build_stems(config, rngs) -> dict:
    """Every configured modality's stem, made in registry order so that a stem may share weights
    with one made before it (video frames reuse the image patchifier)."""
    built = {}
    for name in registry.MODALITIES:
        if name in config.modalities:
            built[name] = registry.get(name).make_stem(config, rngs, built=dict(built))
    return {name: built[name] for name in config.modalities}


class Omni(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        width = config.model.width
        self.modality_names = tuple(config.modalities.keys())
        self.stems = nnx.Dict(build_stems(config, rngs))
        count = len(self.modality_names)
        self.cls = param(rngs, (count, width), ("modality", "embed"))
        self.type_embed = param(rngs, (count, width), ("modality", "embed"))
        self.encoder = Transformer(config, rngs)
        self.final_norm = LayerNorm(rngs, width)
        self.projections = nnx.Dict({
            n: Dense(rngs, width, config.model.embed_dim, names=("embed", "proj"),
                     scale=mup.readout_init_scale(config, width)) for n in self.modality_names})
        # Contrastive temperature t (logits scale exp(t)) and bias b, learned.
        # SigLIP starts at t = log 10, InfoNCE (CLIP) at t = log(1/0.07) with no bias.
        siglip = config.loss.contrastive.kind == "siglip"
        self.logit_scale = param(rngs, (), (), init=math.log(10.0) if siglip else math.log(1 / 0.07))
        self.logit_bias = param(rngs, (), (), init=siglip_initial_bias(config) if siglip else 0.0)
        self.dtype = jnp.dtype(config.model.dtype)
        self.output_multiplier = mup.output_multiplier(config)
        if "itm" in registry.active_objectives(config):
            # The matching head (omni.matching): fused [a, b] pass, CLS of a -> "belong together" logit.
            self.itm_head = Dense(rngs, width, 1, names=("embed", "logit"), scale=mup.readout_init_scale(config, width))
        if mae.mae_modalities(config):
            # MAE (omni.mae): a light decoder per image-like modality, its layers the encoder's kind
            # at the decoder's width. Built last, so the other parameters start as they do without.
            self.decoders = nnx.Dict({
                n: mae.Decoder(config, rngs, self.stems[n], Transformer(mae.decoder_config(config), rngs))
                for n in mae.mae_modalities(config)})

    def sequence(self, name, tokens, valid, present):
        """Prepend CLS, add the modality-type embedding; valid = token valid AND modality present."""
        i = self.modality_names.index(name)
        batch = tokens.shape[0]
        cls = jnp.broadcast_to(self.cls[...][i], (batch, 1, tokens.shape[-1]))
        x = jnp.concatenate([cls, tokens], axis=1) + self.type_embed[...][i]
        valid = jnp.concatenate([jnp.ones((batch, 1), bool), valid], axis=1) & present[:, None]
        return x, valid

    def embed(self, name, inputs):
        """Unimodal pass on clean inputs -> L2-normalised embedding [B, embed_dim] (f32)."""
        return self.embedding(name, self.encoder(*self.unimodal_sequence(name, inputs)))

    def unimodal_sequence(self, name, inputs):
        """A modality's clean inputs as the unimodal pass's (x, valid): CLS first."""
        tokens, valid = self.stems[name].embed(inputs, self.dtype)
        return self.sequence(name, tokens, valid, jnp.ones(tokens.shape[0], bool))

    def embedding(self, name, hidden):
        """The unimodal pass's hidden states -> the L2-normalised projection of its CLS."""
        z = self.projections[name](self.final_norm(hidden[:, 0]), self.dtype) * self.output_multiplier
        return z * jax.lax.rsqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)

    def fused(self, blocks):
        """blocks: name -> (tokens [B, L, D], valid [B, L] incl. presence), for the modalities of
        one sub-batch. One pass over their concatenation (in model order); returns name -> hidden
        states of that modality's tokens (CLS dropped)."""
        x, valid = self.fused_sequence(blocks)
        return self.fused_states(blocks, self.encoder(x, valid))

    def fused_sequence(self, blocks):
        """The fused pass's (x, valid): the blocks concatenated in model order."""
        names = [name for name in self.modality_names if name in blocks]
        return (jnp.concatenate([blocks[n][0] for n in names], axis=1),
                jnp.concatenate([blocks[n][1] for n in names], axis=1))

    def fused_states(self, blocks, hidden):
        """The fused pass's hidden states, final-normed, split back into name -> that modality's
        tokens (CLS dropped)."""
        h = self.final_norm(hidden)
        out, start = {}, 0
        for name in [name for name in self.modality_names if name in blocks]:
            length = blocks[name][0].shape[1]
            out[name] = h[:, start + 1: start + length]
            start += length
        return out


def siglip_initial_bias(config) -> float:
    """b = -log(batch size): the prior log-odds that a pair is a positive (1 pair in B per row).
    SigLIP's b = -10 is this prior at its 32k batch (log 32768 = 10.4). At a small batch, b = -10
    starts positives at a loss of ~10 and negatives at ~0, and Adam moves a scalar by at most ~lr
    per step, so b is still about -10 after a short run: the cheapest way left to raise the
    positives' logits is to pull every embedding together, and smell and its captions did exactly
    that in the default run. docs/evaluation.md has the measurements."""
    return -math.log(max(int(config.train.batch_size), 2))


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
