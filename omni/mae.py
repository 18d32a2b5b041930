"""MAE's visible-only encoder and light decoder (He et al. 2022, "Masked Autoencoders Are Scalable
Vision Learners"), an opt-in alternative (`model.mae`) to the mask token for images and video.

The default way (FLAVA, BEiT) replaces each masked patch by the stem's learned mask token and runs
every patch through the encoder. With `model.mae` on, an image's or a video's masked patches never
enter the encoder: the fused pass sees only the visible ones (`ImageStem.visible_embed`, a quarter
of the patches at mask_ratio 0.75), and a decoder of its own reconstructs every patch. Two things
follow: the encoder pays for the visible patches alone, and it never sees a mask token, which no
input at inference carries either.

The decoder, one per image-like modality (`Decoder`): the encoder's hidden states of the visible
patches, projected from the model width to `model.decoder_width`, go back to their places among
the patches; every masked place gets a learned decoder mask token; decoder position tables are
added; `model.decoder_depth` pre-norm layers of omni.model.Transformer run at the decoder's width
(`decoder_config`); a final norm and a linear head predict each patch's normalised pixels, scored
by the mean squared error per patch as the stems score theirs (loss on the masked patches only,
weighted in omni.objectives).

omni.model builds the decoders and so sits above this file: it hands each decoder its layers
(a Transformer built from `decoder_config`) rather than this file importing omni.model.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from omni.modalities import registry
from omni.modalities.image import VisiblePatches
from omni.modalities.positions import position_params
from omni.nn import Dense, LayerNorm, param

# The modalities whose stems provide `visible_embed` (omni.modalities.image.ImageStem and the
# video stem that subclasses it).
MAE_MODALITIES = ("image", "video")


def mae_modalities(config) -> list[str]:
    """The configured modalities that run the MAE way: image and video when model.mae is on."""
    if not config.model.get("mae", False):
        return []
    return [name for name in config.modalities if name in MAE_MODALITIES]


def decoder_dims(config) -> tuple[int, int, int]:
    """(width, depth, heads) of the decoder: model.decoder_width (0 = the model width),
    model.decoder_depth, and as many heads as both model.heads and the width allow (their
    greatest common divisor: model.heads itself when it divides the width)."""
    m = config.model
    width = int(m.get("decoder_width", 0)) or int(m.width)
    return width, int(m.get("decoder_depth", 1)), math.gcd(width, int(m.heads))


def decoder_config(config):
    """A copy of `config` whose model.width, depth and heads are the decoder's, for building the
    decoder's layers with omni.model.Transformer (every other model setting shared)."""
    width, depth, heads = decoder_dims(config)
    copy = config.copy_and_resolve_references()
    with copy.unlocked():
        copy.model.update(dict(width=width, depth=depth, heads=heads))
    return copy


def visible_count(config, name: str) -> int:
    """Tokens of modality `name` the encoder sees under MAE: all but the round(mask_ratio * N)
    masked ones, as ImageStem masks them."""
    modality = registry.get(name)
    num = modality.num_tokens(config)
    return num - int(round(float(config.loss[modality.objective].mask_ratio) * num))


def axial_positions(tables) -> jax.Array:
    """[N, width]: one table per axis ([length, width], outermost axis first) summed at every point
    of their grid, flattened row-major, as the stems order their patches."""
    lengths = [table.shape[0] for table in tables]
    width = tables[0].shape[1]
    total = jnp.zeros((*lengths, width), jnp.float32)
    for axis, table in enumerate(tables):
        shape = [1] * len(lengths) + [width]
        shape[axis] = lengths[axis]
        total = total + table[...].reshape(shape)
    return total.reshape(-1, width)


class Decoder(nnx.Module):
    """MAE's decoder for one patch modality (its stem gives the patch axes and the target size).
    `blocks`: the decoder's layers, an omni.model.Transformer built from `decoder_config(config)`.
    Standard-parametrised: its width is its own, fixed unless model.decoder_width is 0."""

    def __init__(self, config, rngs: nnx.Rngs, stem, blocks: nnx.Module):
        width = decoder_dims(config)[0]
        target_dim = stem.head.kernel.shape[1]  # the stem's own head predicts the same pixels
        self.embed = Dense(rngs, config.model.width, width, names=("embed", "embed"))
        self.mask_token = param(rngs, (width,), ("embed",))
        self.positions = nnx.List(position_params(rngs, config, stem.patch_axes(), width))
        self.blocks = blocks
        self.norm = LayerNorm(rngs, width)
        self.head = Dense(rngs, width, target_dim, names=("embed", "patch"))

    def predict(self, hidden, patches: VisiblePatches, present, dtype):
        """hidden [B, keep, model width]: the encoder's (final-normed) states of the visible
        patches, in `patches.order`; present [B] bool -> predictions [B, N, P] of every patch."""
        x = self.embed(hidden, dtype)
        batch, keep, width = x.shape
        num = patches.order.shape[1]
        masks = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (batch, num - keep, width))
        restore = jnp.argsort(patches.order, axis=1)  # back to patch order
        x = jnp.take_along_axis(jnp.concatenate([x, masks], axis=1), restore[..., None], axis=1)
        x = x + axial_positions(self.positions)[None]
        h = self.blocks(x, patches.patch_valid & present[:, None])
        return self.head(self.norm(h), dtype)

    def reconstruction_loss(self, hidden, patches: VisiblePatches, present, dtype):
        """Mean squared error per patch [B, N] against the normalised pixels (as
        ReconstructingStem.reconstruction_loss); the caller weights it by the masked patches."""
        prediction = self.predict(hidden, patches, present, dtype)
        return jnp.mean(jnp.square(prediction - patches.target), axis=-1)
