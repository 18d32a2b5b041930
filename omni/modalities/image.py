"""Images: decoded and resized/padded to the config's square resolution on the host, cut into ViT
patches (einops) with 2-D (row + column) position embeddings in the model, and masked image
modelling in the MAE style (a fixed ratio of patches masked, per-patch normalised pixel targets,
loss on masked patches only). The masked patches reach the encoder in one of two ways: as a learned
mask token (`masked_embed`, FLAVA/BEiT, the default) or not at all (`visible_embed`: MAE's
visible-only encoder, with the decoder of omni/mae.py; `model.mae`)."""
from __future__ import annotations

import io
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx
from PIL import Image

from omni.errors import ConfigError
from omni.modalities.base import Modality, ReconstructingStem, random_token_mask
from omni.modalities.positions import position_params
from omni.nn import Dense

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25  # inputs are scaled to roughly unit variance before the stem


class VisiblePatches(NamedTuple):
    """What `ImageStem.visible_embed` gives MAE's encoder and decoder, per row of the batch
    (keep = num patches - round(mask_ratio * num patches), static)."""
    tokens: jax.Array       # [B, keep, D] the visible patches' tokens, their positions added
    valid: jax.Array        # [B, keep] bool: those tokens are valid (their frame is present)
    order: jax.Array        # [B, N] int: patch indices, the keep visible ones first, then the masked
    target: jax.Array       # [B, N, P] every patch's normalised pixels
    picked: jax.Array       # [B, N] float: 1 at the masked patches (the ones scored)
    patch_valid: jax.Array  # [B, N] bool: every patch's validity


def patchify(images, patch: int):
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
    return rearrange(images, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=patch, p2=patch)


def unpatchify(patches, patch: int, height: int, width: int):
    """Inverse of patchify."""
    return rearrange(patches, "b (h w) (p1 p2 c) -> b (h p1) (w p2) c",
                     h=height // patch, w=width // patch, p1=patch, p2=patch)


def normalized_patch_targets(patches, eps: float = 1e-6):
    """MAE's targets: each patch's pixels standardised by that patch's own mean and variance."""
    mean = patches.mean(-1, keepdims=True)
    var = patches.var(-1, keepdims=True)
    return (patches - mean) / jnp.sqrt(var + eps)


def load_image(data: bytes | str, size: int) -> np.ndarray:
    """Decode (bytes or a path), convert any mode (L, RGBA, I;16, CMYK, P) to RGB, resize so the
    longer side is `size` (aspect kept), pad to size x size at the top-left. -> uint8 [size, size, 3]."""
    try:
        img = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        # A JPEG can decode at 1/2, 1/4 or 1/8 of its size in the DCT itself, for a fraction of
        # the work; draft keeps both sides at least `size`, and fit_square resizes the rest.
        img.draft(None, (size, size))
        img.load()
    except Exception as e:  # PIL raises many types for truncated/corrupt files
        raise ValueError(f"cannot decode image: {e}") from None
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((255 * arr / max(arr.max(), 1)).astype(np.uint8))
    if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return fit_square(img.convert("RGB"), size)


def fit_square(img: Image.Image, size: int) -> np.ndarray:
    """An RGB image -> uint8 [size, size, 3]: the longer side resized to `size` (aspect kept),
    padded with zeros at the bottom/right. Video frames go through the same."""
    scale = size / max(img.size)
    new_w, new_h = max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    out = np.zeros((size, size, 3), np.uint8)
    out[:new_h, :new_w] = np.asarray(img)
    return out


class ImageStem(ReconstructingStem):
    def __init__(self, config, rngs: nnx.Rngs):
        cfg = config.modalities.image
        width = config.model.width
        self.patch = cfg.patch
        self.mask_ratio = float(config.loss.mim.mask_ratio)
        grid = cfg.size // cfg.patch
        patch_dim = cfg.patch * cfg.patch * 3
        self.proj = Dense(rngs, patch_dim, width, names=("patch", "embed"))
        self.rows, self.cols = position_params(rngs, config, (grid, grid), width)
        self.init_reconstruction(rngs, config, patch_dim)

    def _patches(self, inputs):
        pixels = inputs["image/pixels"].astype(jnp.float32) / 255.0
        return patchify(pixels, self.patch)

    def _positions(self):
        grid = self.rows.shape[0]
        pos = self.rows[...][:, None, :] + self.cols[...][None, :, :]
        return pos.reshape(grid * grid, -1)

    def _valid(self, inputs):
        """Every patch of an image is a valid token."""
        return jnp.ones((inputs["image/pixels"].shape[0], self.rows.shape[0] ** 2), bool)

    def embed(self, inputs, dtype):
        patches = self._patches(inputs)
        tokens = self.proj((patches - PIXEL_MEAN) / PIXEL_STD, dtype) + self._positions()[None]
        return tokens, self._valid(inputs)

    def _mask(self, rng, batch: int, num: int):
        """bool [batch, num], True at the round(mask_ratio * num) masked patches of every row (a
        static count). One place for both ways of masking, so they mask the same patches."""
        return random_token_mask(rng, batch, num, int(round(self.mask_ratio * num)))

    def masked_embed(self, inputs, rng, dtype):
        """Mask exactly round(mask_ratio * num_patches) patches per example (static count)."""
        patches = self._patches(inputs)
        batch, num = patches.shape[:2]
        masked = self._mask(rng, batch, num)
        tokens = self.proj((patches - PIXEL_MEAN) / PIXEL_STD, dtype)
        tokens = jnp.where(masked[..., None], self.mask_token[...], tokens) + self._positions()[None]
        target = normalized_patch_targets(patches)
        return tokens, self._valid(inputs), target, masked.astype(jnp.float32)

    def visible_embed(self, inputs, rng, dtype) -> VisiblePatches:
        """MAE's encoder input (He et al. 2022): the tokens of the visible patches only, the same
        patches that `masked_embed` leaves unmasked for the same keys. The masked patches' pixels
        never enter (they are dropped before the projection), so the encoder cannot depend on them
        and pays for the visible share alone (a quarter at mask_ratio 0.75); the decoder
        (omni.mae) puts the patches back in place with `order`."""
        patches = self._patches(inputs)
        batch, num = patches.shape[:2]
        masked = self._mask(rng, batch, num)
        keep = num - int(round(self.mask_ratio * num))
        order = jnp.argsort(masked, axis=1, stable=True)  # visible first (False < True), each in patch order
        visible = order[:, :keep]
        shown = jnp.take_along_axis(patches, visible[..., None], axis=1)
        tokens = self.proj((shown - PIXEL_MEAN) / PIXEL_STD, dtype) + self._positions()[visible]
        patch_valid = self._valid(inputs)
        return VisiblePatches(tokens=tokens, valid=jnp.take_along_axis(patch_valid, visible, axis=1),
                              order=order, target=normalized_patch_targets(patches),
                              picked=masked.astype(jnp.float32), patch_valid=patch_valid)

    def patch_axes(self) -> tuple[int, ...]:
        """The axes of the patch order, outermost first: (rows, columns) of an image, and frames
        before those when the stem has a time table (video). The MAE decoder's position tables
        follow them."""
        time = getattr(self, "time", None)
        return ((time.shape[0],) if time is not None else ()) + (self.rows.shape[0], self.cols.shape[0])


class ImageModality(Modality):
    name = "image"
    objective = "mim"
    file_field = True

    def validate(self, config):
        cfg = config.modalities.image
        if cfg.size % cfg.patch:
            raise ConfigError(f"modalities.image.size={cfg.size} is not divisible by modalities.image.patch={cfg.patch}")
        if not 0.0 <= config.loss.mim.mask_ratio < 1.0:
            raise ConfigError(f"loss.mim.mask_ratio={config.loss.mim.mask_ratio} must be in [0, 1)")

    def num_tokens(self, config):
        return (config.modalities.image.size // config.modalities.image.patch) ** 2

    def array_spec(self, config):
        size = config.modalities.image.size
        return {"image/pixels": ((size, size, 3), np.uint8)}

    def stem_flops(self, config):
        patch_dim = config.modalities.image.patch ** 2 * 3
        per_pass = 2 * self.num_tokens(config) * patch_dim * config.model.width
        return per_pass, per_pass  # patch projection in, pixel head out

    def check_bytes(self, data):
        if not data:
            raise ValueError("is empty (0 bytes)")
        load_image(data, 8)  # decodes, or raises ValueError with the reason
        return data

    def encode(self, value, config, assets):
        return {"image/pixels": load_image(value, config.modalities.image.size)}

    def make_stem(self, config, rngs, built=None):
        return ImageStem(config, rngs)
