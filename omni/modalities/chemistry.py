"""The chemistry behind the smell modality: compounds (SMILES, common names or CAS numbers,
resolved offline with RDKit and the `chemicals` tables), their representations (RDKit Morgan
count fingerprints, or the 24 fruit-fly receptor responses of Hallem & Carlson 2006), a bag of
compounds summed by weight into one vector (`smell_vector`), and the stored record format
(`parse_smell`, `stored_smell`). omni.modalities.smell turns those vectors into tokens."""
from __future__ import annotations

import csv
import functools
import importlib.util
import json
import re
from pathlib import Path

import numpy as np

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
