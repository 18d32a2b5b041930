"""Smells: a smell is a bag of chemical compounds (SMILES, common names or CAS numbers) with
optional weights (concentrations), stored as `{"smiles": [...], "weights": [...]}`. On the host it
becomes one vector: RDKit Morgan count fingerprints summed by weight and reduced by a truncated
SVD fitted on the training split (the bag-of-compounds + SVD of Kiela, Bulat & Clark 2015), or the
24 fruit-fly olfactory receptor responses of Hallem & Carlson (2006) summed by weight. In the model
the vector is cut into `tokens` contiguous feature groups, each projected to one token, with a
learned position embedding; masked smell modelling masks whole groups and reconstructs their
features (loss on masked groups only)."""
from __future__ import annotations


import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni.errors import ConfigError
from omni.modalities.base import Modality, ReconstructingStem, random_token_mask
from omni.modalities.chemistry import (  # noqa: F401  (smell_vector, resolve_compound: public here too)
    NUM_RECEPTORS, REPRESENTATIONS, input_features, parse_smell, resolve_compound, smell_vector, stored_smell)
from omni.nn import matmul, param

# ==============================================================================================
# SVD reduction (Kiela et al. 2015), fitted on the training split
# ==============================================================================================

def vector_dim(config) -> int:
    """D, the size of the encoded vector the stem sees."""
    cfg = config.modalities.smell
    if uses_svd(config):
        return int(cfg.svd_dim)
    return int(cfg.fingerprint_bits) if cfg.representation == "morgan" else NUM_RECEPTORS


def uses_svd(config) -> bool:
    cfg = config.modalities.smell
    return cfg.representation == "morgan" and int(cfg.svd_dim) > 0


def _features_of_stored(values, config):
    """Input features of every stored value that parses and featurises; others are skipped (the
    encoder reports them when it meets them)."""
    cfg = config.modalities.smell
    for value in values:
        try:
            smiles, weights = parse_smell(value)
            vector = smell_vector(smiles, weights, cfg.representation, cfg.fingerprint_bits, cfg.radius)
        except ValueError:
            continue
        yield input_features(vector.astype(np.float64), cfg.representation)


def _principal_axes(features, dim: int, chunk: int = 512):
    """One pass over feature vectors -> (count, mean [dim], axes [r, dim] by decreasing variance,
    their sums of squares [r]). Up to `dim` examples: SVD of the centred examples. Beyond: they
    are folded, `chunk` rows at a time, into the Gram matrix X^T X (memory dim^2 whatever the
    count), whose eigenvectors are the same axes."""
    rows, gram, total, count = [], None, np.zeros(dim), 0
    for x in features:
        rows.append(x)
        total += x
        count += 1
        if len(rows) >= chunk and (gram is not None or count > dim):
            block = np.stack(rows)
            gram = block.T @ block if gram is None else gram + block.T @ block
            rows = []
    mean = total / max(count, 1)
    if gram is None:
        if count == 0:
            return 0, mean, np.zeros((0, dim)), np.zeros(0)
        _, singular, axes = np.linalg.svd(np.stack(rows) - mean, full_matrices=False)
        return count, mean, axes, singular ** 2
    if rows:
        block = np.stack(rows)
        gram = gram + block.T @ block
    variance, vectors = np.linalg.eigh(gram - count * np.outer(mean, mean))
    order = np.argsort(variance)[::-1]
    return count, mean, vectors[:, order].T, np.maximum(variance[order], 0.0)


def fit_svd(features, svd_dim: int, dim: int, chunk: int = 512) -> dict:
    """Truncated SVD of the feature vectors -> the asset {"mean", "components" [svd_dim, dim],
    "scale" [svd_dim], "examples"}. Axes with no variance (fewer examples than svd_dim) are zero rows, so
    the projection is always svd_dim long (static shapes)."""
    count, mean, axes, energy = _principal_axes(features, dim, chunk)
    keep = int(np.sum(energy > 1e-10 * max(float(energy.max(initial=0.0)), 1e-30)))
    keep = min(keep, svd_dim)
    axes = axes[:keep]
    # An axis's sign is arbitrary (LAPACK builds differ): make its largest entry positive.
    signs = np.sign(axes[np.arange(keep), np.argmax(np.abs(axes), axis=1)])
    components = np.zeros((svd_dim, dim), np.float32)
    components[:keep] = axes * signs[:, None]
    # Whitened: each coordinate divided by its training standard deviation. With one common
    # scale the first axes (std ~3x the rest) dominate every token's direction, and the token
    # LayerNorms then erase most of what the other axes say: training did not learn smell<->text.
    scale = np.ones(svd_dim, np.float64)
    scale[:keep] = np.sqrt(energy[:keep] / max(count, 1))
    scale[scale < 1e-8] = 1.0
    return {"mean": mean.astype(np.float32).tolist(), "components": components.tolist(),
            "scale": scale.astype(np.float32).tolist(), "examples": int(count)}


_last_basis: list = [None, None]  # [the asset's components object, its arrays]: see _basis


def _basis(asset: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The asset's (mean, components, scale) as float32 arrays. An asset read from assets.json
    holds lists, and turning svd_dim x 2048 of them into an array took 9 ms per example, nearly
    all of a smell's encoding; so the arrays of the last asset seen are kept (the cache holds that
    asset's list, so no other list can take its place)."""
    if _last_basis[0] is not asset["components"]:
        arrays = tuple(np.asarray(asset[key], np.float32) for key in ("mean", "components", "scale"))
        _last_basis[:] = [asset["components"], arrays]
    return _last_basis[1]


def project(features: np.ndarray, asset: dict, svd_dim: int) -> np.ndarray:
    """(features - mean) @ components.T / scale (per axis), float32 [svd_dim]."""
    mean, components, scale = _basis(asset)
    if components.shape != (svd_dim, features.shape[0]) or mean.shape != features.shape:
        raise RuntimeError(
            f"the smell SVD asset has components {components.shape} and mean {mean.shape}, but the "
            f"config needs ({svd_dim}, {features.shape[0]}): it was fitted under another smell config")
    centred = features.astype(np.float32) - mean
    return (centred @ components.T / scale).astype(np.float32)


# ==============================================================================================
# The stem
# ==============================================================================================

def num_masked(mask_ratio: float, tokens: int) -> int:
    """round(mask_ratio * tokens), and at least 1 when mask_ratio > 0 (so that few tokens still
    give the objective something to score)."""
    count = int(round(mask_ratio * tokens))
    return max(count, 1) if mask_ratio > 0 else 0


class SmellStem(ReconstructingStem):
    """The smell vector [B, D] -> K tokens. Token k is the projection of the k-th of K contiguous
    groups of the vector's features (D padded with zeros to K * ceil(D/K)), plus a learned position
    embedding. Why groups and not one Dense D -> K*width: with the whole vector behind every token,
    a visible token would carry the masked ones' content and masked modelling would be trivial.
    With groups, a masked token (the mask token + its position) holds nothing of its features, and
    its target is exactly those features, already on a fixed scale by the encoder (log1p / the
    SVD's scale / spikes per 100), not normalised per example. The loss is per token: the MSE over
    the group's real (not padding) features."""

    def __init__(self, config, rngs: nnx.Rngs):
        width = config.model.width
        self.dim = vector_dim(config)
        self.tokens = int(config.modalities.smell.tokens)
        self.group = -(-self.dim // self.tokens)  # ceil(D / K)
        self.mask_ratio = float(config.loss.msm.mask_ratio)
        self.proj = param(rngs, (self.tokens, self.group, width), ("length", "patch", "embed"),
                          scale=self.group ** -0.5)
        # No per-group bias: the position embedding already is one.
        self.positions = param(rngs, (self.tokens, width), ("length", "embed"))
        self.init_reconstruction(rngs, config, self.group)

    def _groups(self, inputs):
        """[B, D] -> [B, K, ceil(D/K)], zero-padded."""
        vector = inputs["smell/vector"].astype(jnp.float32)
        padded = jnp.pad(vector, ((0, 0), (0, self.tokens * self.group - self.dim)))
        return padded.reshape(vector.shape[0], self.tokens, self.group)

    def _project(self, groups, dtype):
        # Always f32: a negligible share of the FLOPs, and XLA CPU has no BF16 x BF16 = F32 kernel
        # for this product batched over groups ("Unsupported element type for DotThunk").
        del dtype
        return matmul(groups, self.proj[...], jnp.float32, "bkg,kgw->bkw")

    def embed(self, inputs, dtype):
        groups = self._groups(inputs)
        tokens = self._project(groups, dtype) + self.positions[...][None]
        return tokens, jnp.ones(groups.shape[:2], bool)

    def masked_embed(self, inputs, rng, dtype):
        """Mask exactly num_masked(mask_ratio, K) groups per example (static count)."""
        groups = self._groups(inputs)
        batch = groups.shape[0]
        masked = random_token_mask(rng, batch, self.tokens, num_masked(self.mask_ratio, self.tokens))
        tokens = jnp.where(masked[..., None], self.mask_token[...], self._project(groups, dtype))
        tokens = tokens + self.positions[...][None]
        return tokens, jnp.ones((batch, self.tokens), bool), groups, masked.astype(jnp.float32)

    def reconstruction_loss(self, hidden, target, dtype):
        """Mean squared error per token over its group's real features -> [B, K]."""
        prediction = self.predict(hidden, dtype)
        real = (jnp.arange(self.tokens * self.group) < self.dim).reshape(self.tokens, self.group)
        squared = jnp.where(real, jnp.square(prediction - target), 0.0)
        return squared.sum(-1) / real.sum(-1)


class Smell(Modality):
    name = "smell"
    objective = "msm"

    def validate(self, config):
        cfg = config.modalities.smell
        if cfg.representation not in REPRESENTATIONS:
            raise ConfigError(f"modalities.smell.representation='{cfg.representation}' must be one of "
                              f"{', '.join(REPRESENTATIONS)}")
        if cfg.tokens < 1:
            raise ConfigError(f"modalities.smell.tokens={cfg.tokens} must be at least 1")
        if cfg.svd_dim < 0:
            raise ConfigError(f"modalities.smell.svd_dim={cfg.svd_dim} must be >= 0 (0: no SVD)")
        if cfg.representation == "morgan" and (cfg.fingerprint_bits < 1 or cfg.radius < 0):
            raise ConfigError(f"modalities.smell.fingerprint_bits={cfg.fingerprint_bits} must be >= 1 "
                              f"and modalities.smell.radius={cfg.radius} >= 0")
        if not 0.0 <= config.loss.msm.mask_ratio < 1.0:
            raise ConfigError(f"loss.msm.mask_ratio={config.loss.msm.mask_ratio} must be in [0, 1)")

    def num_tokens(self, config):
        return int(config.modalities.smell.tokens)

    def array_spec(self, config):
        return {"smell/vector": ((vector_dim(config),), np.float32)}

    def export_constants(self, config):
        cfg = config.modalities.smell
        return {"representation": cfg.representation, "fingerprint_bits": int(cfg.fingerprint_bits),
                "radius": int(cfg.radius), "svd_dim": int(cfg.svd_dim), "tokens": int(cfg.tokens),
                "vector_dim": int(vector_dim(config)), "assets": "assets.json (key 'smell': the SVD basis)",
                "recipe": "compounds -> canonical SMILES (RDKit; names via chemicals' PubChem tables); "
                          "Morgan count fingerprints (or Hallem & Carlson receptor responses / 100) summed by "
                          "weight; morgan: log1p, then (v - mean) @ components.T / scale when svd_dim > 0"}

    def stem_flops(self, config):
        cfg = config.modalities.smell
        group = -(-vector_dim(config) // cfg.tokens)
        per_pass = 2 * cfg.tokens * group * config.model.width
        return per_pass, per_pass  # per-group projection in, feature head out

    def prepare(self, value, root):
        smiles, weights = parse_smell(value)
        # Every compound must featurise; the Morgan fingerprint applies to any molecule. (Receptor
        # responses exist for 110 odorants only, so they cannot be required of a dataset.)
        smell_vector(smiles, weights, "morgan")
        return stored_smell(smiles, weights)

    def encode(self, value, config, assets):
        cfg = config.modalities.smell
        smiles, weights = parse_smell(value)
        raw = smell_vector(smiles, weights, cfg.representation, cfg.fingerprint_bits, cfg.radius)
        features = input_features(raw, cfg.representation).astype(np.float32)
        if uses_svd(config):
            asset = (assets or {}).get("smell")
            if asset is None:
                # Not a ValueError: that would skip every smell record instead of stopping the run.
                raise RuntimeError("modalities.smell.svd_dim > 0 but assets has no 'smell' SVD basis "
                                   "(fit it with Smell().fit_asset on the training split)")
            features = project(features, asset, int(cfg.svd_dim))
        return {"smell/vector": features}

    def fit_asset(self, values, config):
        cfg = config.modalities.smell
        if not uses_svd(config):
            return None
        return fit_svd(_features_of_stored(values, config), int(cfg.svd_dim), int(cfg.fingerprint_bits))

    def make_stem(self, config, rngs, built=None):
        return SmellStem(config, rngs)
