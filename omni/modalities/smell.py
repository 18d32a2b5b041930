"""Smells: a smell is a bag of chemical compounds (SMILES, common names or CAS numbers) with
optional weights (concentrations), stored as `{"smiles": [...], "weights": [...]}`. On the host it
becomes one vector: RDKit Morgan count fingerprints summed by weight and reduced by a truncated
SVD fitted on the training split (the bag-of-compounds + SVD of Kiela, Bulat & Clark 2015), or the
24 fruit-fly olfactory receptor responses of Hallem & Carlson (2006) summed by weight. In the model
the vector is cut into `tokens` contiguous feature groups, each projected to one token, with a
learned position embedding; masked smell modelling masks whole groups and reconstructs their
features (loss on masked groups only)."""
from __future__ import annotations

import csv
import functools
import importlib.util
import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni.errors import ConfigError
from omni.modalities.base import Modality, ReconstructingStem, matmul, param, random_token_mask

REPRESENTATIONS = ("morgan", "receptors")
NUM_RECEPTORS = 24
RECEPTOR_SCALE = 100.0  # Hallem & Carlson responses are spikes/s changes, about -70..+300

# Hallem & Carlson rows whose drosolf CAS number is missing from (or wrong in) the offline PubChem
# tables, or whose record there drops the E/Z stereo that tells two rows of the table apart.
HALLEM_CARLSON_SMILES = {
    "geraniol": "CC(C)=CCC/C(C)=C/CO",
    "nerol": "CC(C)=CCC/C(C)=C\\CO",
    "E2-hexenol": "CCC/C=C/CO",
    "Z2-hexenol": "CCC/C=C\\CO",
    "E3-hexenol": "CC/C=C/CCO",
    "Z3-hexenol": "CC/C=C\\CCO",
    "(1S)-(+)-3-carene": "CC1=CCC2C(C1)C2(C)C",  # the only 3-carene row: stereo not needed
    "isobutyric acid": "CC(C)C(=O)O",  # its CAS number resolves to the potassium salt
    "2-methylphenol": "Cc1ccccc1O",     # likewise
}


# ==============================================================================================
# Compounds
# ==============================================================================================

@functools.lru_cache(maxsize=None)
def _chem():
    """RDKit's Chem module, imported on first use (a run without smells needs no RDKit)."""
    from rdkit import Chem, RDLogger
    # A failed parse is an expected outcome here (a name is tried as SMILES first); RDKit would
    # print a warning to stderr for each one.
    RDLogger.DisableLog("rdApp.*")
    return Chem


@functools.lru_cache(maxsize=65536)
def _canonical(smiles: str) -> str | None:
    Chem = _chem()
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def _looks_like_smiles(text: str) -> bool:
    """Whether a string that neither parses nor is a known name was meant as SMILES (for the error
    message): no spaces, not a CAS number, and no lowercase letter outside brackets other than the
    aromatic atoms b c n o p s (names have words like 'ethyl')."""
    if re.search(r"\s", text) or re.fullmatch(r"\d{2,7}-\d\d-\d", text):
        return False
    return not re.search(r"[ad-mqrt-z]", re.sub(r"\[[^\]]*\]", "", text))


@functools.lru_cache(maxsize=65536)
def resolve_compound(name_or_smiles: str) -> str:
    """A SMILES string, a common name or a CAS number -> RDKit canonical SMILES. SMILES is tried
    first; otherwise the offline PubChem tables of `chemicals` are searched. ValueError otherwise."""
    text = name_or_smiles.strip() if isinstance(name_or_smiles, str) else ""
    if not text:
        raise ValueError(f"a compound must be a non-empty string, got {name_or_smiles!r}")
    smiles = _canonical(text)
    if smiles is not None:
        return smiles
    from chemicals.identifiers import search_chemical
    try:
        found = search_chemical(text).smiles
    except Exception:  # chemicals raises ValueError, KeyError, ... for names it does not know
        found = None
    smiles = _canonical(found) if found else None
    if smiles is not None:
        return smiles
    if _looks_like_smiles(text):
        raise ValueError(f"invalid SMILES '{text}'")
    raise ValueError(f"unknown compound '{text}'")


def _stereo_free(smiles: str) -> str:
    Chem = _chem()
    mol = Chem.MolFromSmiles(smiles)
    Chem.RemoveStereochemistry(mol)
    return Chem.MolToSmiles(mol)


# ==============================================================================================
# Representations
# ==============================================================================================

@functools.lru_cache(maxsize=16)
def _morgan_generator(radius: int, bits: int):
    # includeChirality: (R)- and (S)-carvone smell different (spearmint vs caraway), so their
    # fingerprints must differ too.
    _chem()
    from rdkit.Chem import rdFingerprintGenerator
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits, includeChirality=True)


@functools.lru_cache(maxsize=4096)  # 8 KiB each at 2048 bits
def morgan_counts(smiles: str, bits: int = 2048, radius: int = 2) -> np.ndarray:
    """Morgan count fingerprint of one compound (counts, not bits: how many of a substructure,
    e.g. the length of a carbon chain, is part of the smell). Read-only float32 [bits] (exact
    for counts)."""
    mol = _chem().MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES '{smiles}'")
    counts = _morgan_generator(radius, bits).GetCountFingerprintAsNumPy(mol).astype(np.float32)
    counts.flags.writeable = False  # cached: callers must not change it
    return counts


def _hallem_carlson_csv() -> Path:
    spec = importlib.util.find_spec("drosolf")  # locates the bundled file without importing pandas
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the 'receptors' smell representation needs the drosolf package")
    return Path(spec.submodule_search_locations[0]) / "Hallem_Carlson_2006.csv"


def _odorant_smiles(name: str, cas: str) -> str | None:
    for query in (HALLEM_CARLSON_SMILES.get(name), cas, name):
        if query:
            try:
                return resolve_compound(query)
            except ValueError:
                continue
    return None


@functools.lru_cache(maxsize=1)
def receptor_table() -> tuple[tuple[str, ...], dict[str, tuple[str, np.ndarray]]]:
    """Hallem & Carlson (2006), as bundled by drosolf: (the 24 receptor names, {canonical SMILES:
    (odorant name, float64 [24] responses)}). The responses are changes from each receptor's
    spontaneous firing rate, in spikes/s. Odorants are matched through their CAS numbers (or names)
    in the offline PubChem tables."""
    with open(_hallem_carlson_csv(), newline="") as f:
        rows = list(csv.reader(f))
    receptors = tuple(rows[1][1:1 + NUM_RECEPTORS])  # row 0: glomeruli, row 1: receptor names
    table = {}
    for row in rows[2:]:
        name, values, cas = row[0], row[1:1 + NUM_RECEPTORS], row[1 + NUM_RECEPTORS]
        if name == "spontaneous firing rate":
            continue
        smiles = _odorant_smiles(name, cas)
        if smiles is None:
            continue
        responses = np.array([float(v) for v in values])
        responses.flags.writeable = False
        table[smiles] = (name, responses)
    return receptors, table


@functools.lru_cache(maxsize=1)
def _by_skeleton() -> dict[str, list[str]]:
    """stereo-free SMILES -> the receptor table's keys with that skeleton."""
    groups = {}
    for key in receptor_table()[1]:
        groups.setdefault(_stereo_free(key), []).append(key)
    return groups


def receptor_responses(smiles: str) -> np.ndarray:
    """One compound's 24 receptor responses. The table's stereo is often unspecified (limonene):
    an exact match wins, else the one row of the same skeleton whose stereo does not contradict
    the compound's. ValueError naming the compound when no row (or several) match."""
    _, table = receptor_table()
    if smiles in table:
        return table[smiles][1]
    skeleton = _stereo_free(smiles)
    flat_query = skeleton == smiles
    matches = [key for key in _by_skeleton().get(skeleton, []) if flat_query or key == skeleton]
    if len(matches) == 1:
        return table[matches[0]][1]
    if matches:
        names = ", ".join(table[k][0] for k in matches)
        raise ValueError(f"compound '{smiles}' matches several Hallem & Carlson odorants ({names}); "
                         "give its stereochemistry")
    raise ValueError(f"compound '{smiles}' is not one of the {len(table)} Hallem & Carlson odorants")


def _check_weights(weights, count: int) -> np.ndarray:
    if weights is None:
        return np.full(count, 1.0 / count)
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise ValueError(f"weights must be a list of numbers, got {weights!r}")
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} compounds")
    if any(isinstance(w, bool) or not isinstance(w, (int, float, np.number)) for w in weights):
        raise ValueError(f"weights must be numbers, got {list(weights)!r}")
    array = np.asarray(weights, np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"weights must be finite, got {list(weights)!r}")
    if np.any(array < 0):
        raise ValueError(f"weights must not be negative, got {list(weights)!r}")
    if not np.any(array > 0):
        raise ValueError("weights are all zero: the smell would be empty")
    return array


def smell_vector(compounds: list[str], weights: list[float] | None = None,
                 representation: str = "morgan", bits: int = 2048, radius: int = 2) -> np.ndarray:
    """A bag of compounds (SMILES, names or CAS numbers) -> sum_i weight_i * vector(compound_i),
    float32 [bits] (morgan: count fingerprints) or [24] (receptors: spikes/s). Weights default to
    1/len each. Unscaled: `input_features` makes the model's input of it."""
    if isinstance(compounds, str) or not isinstance(compounds, (list, tuple)) or not compounds:
        raise ValueError(f"a smell needs a non-empty list of compounds, got {compounds!r}")
    if not all(isinstance(c, str) for c in compounds):
        raise ValueError(f"compounds must be strings, got {compounds!r}")
    w = _check_weights(weights, len(compounds))
    if representation == "morgan":
        vectors = [morgan_counts(resolve_compound(c), bits, radius) for c in compounds]
    elif representation == "receptors":
        vectors = [receptor_responses(resolve_compound(c)) for c in compounds]
    else:
        raise ValueError(f"unknown smell representation '{representation}' (known: {', '.join(REPRESENTATIONS)})")
    total = np.zeros(vectors[0].shape, np.float64)
    for weight, vector in zip(w, vectors):  # fixed order: the same bag gives the same float sums
        total += weight * vector
    return total.astype(np.float32)


def input_features(vector: np.ndarray, representation: str) -> np.ndarray:
    """The scaling a raw smell vector gets before the model (and before the SVD):
      * morgan: log1p, so that a substructure seen 12 times (a long chain's CH2) does not outweigh
        rarer, more telling ones by 12x, and the inputs stay O(1);
      * receptors: / 100, spikes/s changes of about -70..+300 -> about -0.7..3."""
    if representation == "morgan":
        return np.log1p(vector)
    return vector / RECEPTOR_SCALE


# ==============================================================================================
# The stored record
# ==============================================================================================

def parse_smell(value) -> tuple[list[str], list[float] | None]:
    """A stored smell (the JSON string `{"smiles": [...], "weights": [...]}`) or a manifest dict
    (`{"smiles": [...]}` or `{"names": [...]}`, names being common names, CAS numbers or SMILES,
    plus optional "weights") -> (canonical SMILES, weights or None). ValueError with the reason."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"smell is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"smell must be an object with 'smiles' or 'names', got {type(value).__name__}")
    unknown = set(value) - {"smiles", "names", "weights"}
    if unknown:
        raise ValueError(f"smell has unknown key(s) {', '.join(sorted(unknown))} (known: smiles, names, weights)")
    if ("smiles" in value) == ("names" in value):
        raise ValueError("smell needs exactly one of 'smiles' and 'names'")
    key = "smiles" if "smiles" in value else "names"
    compounds = value[key]
    if not isinstance(compounds, list) or not compounds or not all(isinstance(c, str) and c for c in compounds):
        raise ValueError(f"smell '{key}' must be a non-empty list of non-empty strings, got {compounds!r}")
    if key == "smiles":
        smiles = []
        for c in compounds:
            canonical = _canonical(c)
            if canonical is None:
                raise ValueError(f"invalid SMILES '{c}'")
            smiles.append(canonical)
    else:
        smiles = [resolve_compound(c) for c in compounds]
    weights = value.get("weights")
    if weights is not None:
        weights = [float(w) for w in _check_weights(weights, len(smiles))]
    return smiles, weights


def stored_smell(smiles: list[str], weights: list[float] | None = None) -> str:
    """The stored record value: compact JSON, key order fixed."""
    record = {"smiles": list(smiles)} if weights is None else {"smiles": list(smiles), "weights": list(weights)}
    return json.dumps(record, separators=(",", ":"))


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


def project(features: np.ndarray, asset: dict, svd_dim: int) -> np.ndarray:
    """(features - mean) @ components.T / scale (per axis), float32 [svd_dim]."""
    mean = np.asarray(asset["mean"], np.float32)
    components = np.asarray(asset["components"], np.float32)
    if components.shape != (svd_dim, features.shape[0]) or mean.shape != features.shape:
        raise RuntimeError(
            f"the smell SVD asset has components {components.shape} and mean {mean.shape}, but the "
            f"config needs ({svd_dim}, {features.shape[0]}): it was fitted under another smell config")
    centred = features.astype(np.float32) - mean
    return (centred @ components.T / np.asarray(asset["scale"], np.float32)).astype(np.float32)


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
