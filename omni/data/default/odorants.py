"""Smell with captions: the 110 odorants of Hallem & Carlson (2006) as bundled by `drosolf`,
resolved to SMILES offline by `chemicals` (PubChem identifier tables) and given a chemical family by
RDKit SMARTS patterns, each named with its family; and weighted mixtures of 2-3 of them."""
from __future__ import annotations

import csv
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

# Chemical families as SMARTS, checked in this order; the first that matches names the family.
FAMILY_SMARTS = [
    ("lactone", "[#6][CX3;R](=O)[OX2;R][#6;R]"),
    ("ester", "[#6][CX3](=O)[OX2H0][#6]"),
    ("ester", "[CX3H1](=O)[OX2H0][#6]"),  # formates
    ("carboxylic acid", "[CX3](=O)[OX2H1,OX1-]"),
    ("sulfur compound", "[#16]"),
    ("ammonia", "[NX4H4+,NX3H3]"),
    ("amine", "[NX3;!$(N-[#6]=[O,S,N])]"),
    ("aldehyde", "[CX3H1](=O)[#6]"),
    ("ketone", "[#6][CX3](=O)[#6]"),
    ("phenol", "c[OX2H]"),
    ("alcohol", "[CX4][OX2H]"),
    ("ether", "[OD2]([#6])[#6]"),
    ("terpene", "[#6]"),  # only reached by hydrocarbons; all in the table are terpenes (C10/C15)
]
_HETEROATOM = "[!#6;!#1]"

# Table names -> names the `chemicals` tables know (tried before the table's CAS number, several
# of which are wrong or point at a salt or isotopologue in the drosolf table).
_NAME_FIXES = {
    "(1S)-(+)-3-carene": "3-carene", "E2-hexenal": "trans-2-hexenal",
    "E2-hexenol": "trans-2-hexen-1-ol", "Z2-hexenol": "cis-2-hexen-1-ol",
    "E3-hexenol": "trans-3-hexen-1-ol", "Z3-hexenol": "cis-3-hexen-1-ol",
    "E2-hexenyl acetate": "trans-2-hexenyl acetate", "2-propenal": "acrolein",
    "(-)-trans-caryophyllene": "beta-caryophyllene", "methanoic acid": "formic acid",
    "ethyl methanoate": "ethyl formate",
}
_PREFIX_FIXES = {"g-": "gamma-", "d-": "delta-", "a -": "alpha-", "a-": "alpha-", "b -": "beta-",
                 "b-": "beta-"}
# The `chemicals` tables drop the double-bond geometry of these, which makes E/Z pairs (geraniol /
# nerol, E2- / Z2-hexenol) identical; their SMILES with the geometry the table names.
_STEREO_SMILES = {
    "geraniol": "CC(=CCC/C(=C/CO)/C)C", "nerol": "CC(=CCC/C(=C\\CO)/C)C",
    "E2-hexenol": "CCC/C=C/CO", "Z2-hexenol": "CCC/C=C\\CO", "E2-hexenal": "CCC/C=C/C=O",
    "E2-hexenyl acetate": "CCC/C=C/COC(=O)C",
}
ODORANT_PHRASINGS = [
    "the smell of {name}, {a_family}",
    "{name} ({family}): its odour",
    "a whiff of {name}, {a_family}",
    "what {name} smells like; it is {a_family}",
]


def _readable_name(table_name: str) -> str:
    if table_name in _NAME_FIXES:
        return _NAME_FIXES[table_name]
    for old, new in _PREFIX_FIXES.items():
        if table_name.startswith(old):
            return new + table_name[len(old):]
    return table_name


def _article(family: str) -> str:
    noun = {"ammonia": "ammonia solution"}.get(family, family)
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def hallem_carlson_table() -> list[tuple[str, str, list[float]]]:
    """(odorant name, CAS as given, 24 receptor responses in spikes/s) from drosolf's CSV."""
    spec = importlib.util.find_spec("drosolf")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("drosolf is not installed")
    path = Path(spec.submodule_search_locations[0]) / "Hallem_Carlson_2006.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    table = []
    for row in rows[2:]:
        name, cas = row[0].strip(), row[-1].strip()
        if not cas or name == "spontaneous firing rate":
            continue
        table.append((name, cas, [float(v) for v in row[1:-1]]))
    return table


def odorant_family(smiles: str) -> str:
    from rdkit import Chem  # deferred: slow to import
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"odorant_family: invalid SMILES {smiles!r}")
    hydrocarbon = not mol.HasSubstructMatch(Chem.MolFromSmarts(_HETEROATOM))
    for family, smarts in FAMILY_SMARTS:
        if family == "terpene":
            if hydrocarbon:
                return family
            continue
        if mol.HasSubstructMatch(Chem.MolFromSmarts(smarts)):
            return family
    return "other"


def _resolve(name: str, cas: str):
    """-> (SMILES, name) from the `chemicals` tables: by readable name, then by the table's CAS;
    None when neither resolves to a single neutral-looking compound."""
    from chemicals.identifiers import search_chemical  # deferred: slow to import
    from rdkit import Chem  # deferred: slow to import
    for query in (_readable_name(name), name, cas):
        try:
            found = search_chemical(query)
        except Exception:  # chemicals raises ValueError for unknown names / invalid CAS
            continue
        smiles = getattr(found, "smiles", "")
        if not smiles or Chem.MolFromSmiles(smiles) is None:
            continue
        if "." in smiles and not smiles.startswith("[NH4+]"):  # a salt: wrong compound for a smell
            continue
        return smiles, found
    return None


@lru_cache(maxsize=1)
def _odorants() -> tuple[tuple[str, str, str, str], ...]:
    """(table name, readable name, CAS, SMILES) for each odorant that resolves."""
    out = []
    for name, cas, _ in hallem_carlson_table():
        hit = _resolve(name, cas)
        if hit is not None:
            out.append((name, _readable_name(name), cas, _STEREO_SMILES.get(name, hit[0])))
    return tuple(out)


def odorant_records() -> list[dict]:
    """One record per Hallem & Carlson odorant that resolves to a SMILES (id odorant-<CAS as in the
    table>, label = its chemical family, smell = that single compound)."""
    records = []
    for i, (table_name, name, cas, smiles) in enumerate(_odorants()):
        family = odorant_family(smiles)
        caption = ODORANT_PHRASINGS[i % len(ODORANT_PHRASINGS)].format(
            name=name, family=family, a_family=_article(family))
        records.append({
            "id": f"odorant-{cas}", "label": family,
            "source": f"Hallem & Carlson 2006, CAS {cas} ({table_name})",
            "text": caption, "smell": json.dumps({"smiles": [smiles], "weights": [1.0]}),
        })
    return records


MIXTURE_WEIGHTS = {2: [(0.5, 0.5), (0.6, 0.4), (0.7, 0.3), (0.8, 0.2)],
                   3: [(0.4, 0.3, 0.3), (0.5, 0.3, 0.2), (0.6, 0.2, 0.2)]}


def mixture_records(count: int, seed: int = 0) -> list[dict]:
    """`count` bags of 2-3 distinct odorants with weights summing to 1, strongest first
    (id mixture-<i>, label "mixture"). The caption names the components' chemical families, in
    order of strength ("mostly an ester, with an alcohol and a ketone"); their names are in
    `source`. Families, unlike the names of unseen combinations, are something a model can read
    off the molecules' substructures, and one caption fits many mixtures."""
    odorants = _odorants()
    records = []
    for i in range(count):
        rng = np.random.default_rng([seed, 13, i])
        size = int(rng.integers(2, 4))
        picks = rng.choice(len(odorants), size=size, replace=False)
        weights = list(MIXTURE_WEIGHTS[size][rng.integers(len(MIXTURE_WEIGHTS[size]))])
        families = [_article(odorant_family(odorants[p][3])) for p in picks]
        listed = " and ".join(families) if size == 2 else f"{families[0]}, {families[1]} and {families[2]}"
        if weights[0] > weights[1]:
            caption = f"mostly {families[0]}, with {' and '.join(families[1:])}"
        else:
            caption = f"a mix of {listed}"
        names = " + ".join(odorants[p][1] for p in picks)
        records.append({
            "id": f"mixture-{i}", "label": "mixture",
            "source": f"Hallem & Carlson 2006 odorants {names} (CAS " + " + ".join(odorants[p][2] for p in picks) + ")",
            "text": caption,
            "smell": json.dumps({"smiles": [odorants[p][3] for p in picks], "weights": weights}),
        })
    return records
