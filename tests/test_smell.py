import csv
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rdkit import Chem

from omni.modalities.smell import (
    Smell, fit_svd, num_masked, parse_smell, resolve_compound, smell_vector, stored_smell, vector_dim)
from tests.conftest import REPO

R_CARVONE, S_CARVONE = "CC1=CC[C@H](CC1=O)C(=C)C", "CC1=CC[C@@H](CC1=O)C(=C)C"
# Small odorants, for random bags.
POOL = ["CCO", "CCCO", "CC(C)O", "CCOC(C)=O", "CC(=O)O", "CCCC(=O)O", "CC(C)=O", "O=Cc1ccccc1",
        "CCCCCC=O", "CC1=CCC(CC1)C(C)=C", "C=CC(C)(O)CCC=C(C)C", "COC(=O)c1ccccc1O", "CSC", "NCCCCN",
        "OCCc1ccccc1", "CCCCCCCCO", "CC(=O)OCCC(C)C", "CCCCOC(C)=O", R_CARVONE, S_CARVONE,
        "CC(=O)C(C)=O", "O=Cc1ccco1", "CCCCCCCC(=O)OCC", "COc1cc(CC=C)ccc1O"]


def small_config(*overrides):
    from omni.config import load_config
    return load_config(None, ["--config.model.width=32", "--config.model.heads=2", *overrides])


def random_bags(count, seed=0):
    rng = np.random.default_rng(seed)
    bags = []
    for _ in range(count):
        size = int(rng.integers(1, 5))
        compounds = [POOL[i] for i in rng.choice(len(POOL), size, replace=False)]
        weights = [float(w) for w in rng.uniform(0.1, 2.0, size)]
        bags.append(stored_smell([resolve_compound(c) for c in compounds], weights))
    return bags


def hallem_carlson_row(key):
    """The 24 responses of the row whose odorant name or CAS number is `key`."""
    import importlib.util
    from pathlib import Path
    path = Path(importlib.util.find_spec("drosolf").submodule_search_locations[0]) / "Hallem_Carlson_2006.csv"
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if key in (row[0], row[-1]):
                return np.array([float(v) for v in row[1:25]])
    raise AssertionError(key)


# ---------------------------------------------------------------------------------------------
# Vectors
# ---------------------------------------------------------------------------------------------

def test_deterministic_within_and_across_processes():
    bag, weights = ["CCOC(C)=O", "ethanol", R_CARVONE], [0.3, 1.0, 2.5]
    first = smell_vector(bag, weights)
    assert first.dtype == np.float32 and first.shape == (2048,) and first.sum() > 0
    np.testing.assert_array_equal(first, smell_vector(bag, weights))
    code = ("from omni.modalities.smell import smell_vector; "
            f"print(smell_vector({bag!r}, {weights!r}).tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == first.tobytes().hex()


def test_isomers_differ():
    assert not np.array_equal(smell_vector(["CCCO"]), smell_vector(["CC(C)O"]))
    # (R)- and (S)-carvone: enantiomers (spearmint vs caraway), same stereo-free skeleton.
    centres = [Chem.FindMolChiralCenters(Chem.MolFromSmiles(s)) for s in (R_CARVONE, S_CARVONE)]
    assert centres == [[(4, "R")], [(4, "S")]]
    assert not np.array_equal(smell_vector([R_CARVONE]), smell_vector([S_CARVONE]))


def test_weights_are_a_linear_sum():
    a, b = "CCOC(C)=O", "O=Cc1ccccc1"
    va, vb = smell_vector([a], [1.0]), smell_vector([b], [1.0])
    np.testing.assert_array_equal(smell_vector([a, b], [1.0, 0.0]), va)
    np.testing.assert_array_equal(smell_vector([a]), va)
    np.testing.assert_allclose(smell_vector([a, b], [2.0, 0.25]), 2.0 * va + 0.25 * vb, rtol=1e-6)
    np.testing.assert_allclose(smell_vector([a, b]), 0.5 * va + 0.5 * vb, rtol=1e-6)


@pytest.mark.parametrize("compounds, weights, reason", [
    ([], None, "non-empty list"),
    (["CCO", "CCCO"], [1.0], "2 weights|1 weights"),
    (["CCO"], [-1.0], "negative"),
    (["CCO"], [float("nan")], "finite"),
    (["CCO"], [float("inf")], "finite"),
    (["CCO"], [0.0], "all zero"),
])
def test_bad_vectors_are_value_errors(compounds, weights, reason):
    with pytest.raises(ValueError, match=reason):
        smell_vector(compounds, weights)


def test_names_and_cas_numbers_resolve():
    canonical = resolve_compound("CCOC(C)=O")
    assert resolve_compound("ethyl acetate") == canonical
    assert resolve_compound("141-78-6") == canonical
    assert resolve_compound("CC(=O)OCC") == canonical  # another spelling of the same SMILES
    np.testing.assert_array_equal(smell_vector(["ethyl acetate"]), smell_vector(["CCOC(C)=O"]))
    for text, kind in [("zorblaxine hydroxyfoo", "unknown compound"), ("C1CC(", "invalid SMILES")]:
        with pytest.raises(ValueError, match=re.escape(f"{kind} '{text}'")):
            resolve_compound(text)


# ---------------------------------------------------------------------------------------------
# Receptors
# ---------------------------------------------------------------------------------------------

def test_receptor_responses_are_hallem_carlson_rows():
    ethyl_acetate, butanol = hallem_carlson_row("141-78-6"), hallem_carlson_row("1-butanol")
    got = smell_vector(["ethyl acetate"], [1.0], representation="receptors")
    assert got.shape == (24,)
    np.testing.assert_array_equal(got, ethyl_acetate)
    np.testing.assert_allclose(smell_vector(["CCOC(C)=O", "CCCCO"], [2.0, 0.5], representation="receptors"),
                               2.0 * ethyl_acetate + 0.5 * butanol, rtol=1e-6)
    # The table's limonene has no stereo: (R)-limonene is that row.
    np.testing.assert_array_equal(smell_vector(["C=C(C)[C@@H]1CC=C(C)CC1"], [1.0], representation="receptors"),
                                  hallem_carlson_row("limonene"))
    with pytest.raises(ValueError, match=re.escape("O=C1CCCCC1")):  # cyclohexanone: not in the table
        smell_vector(["O=C1CCCCC1"], representation="receptors")


def test_receptor_encoding_is_scaled_and_24_long():
    cfg = small_config("--config.modalities.smell.representation=receptors")
    modality = Smell()
    assert vector_dim(cfg) == 24 and modality.array_spec(cfg) == {"smell/vector": ((24,), np.float32)}
    out = modality.encode(stored_smell(["CCOC(C)=O"]), cfg, {})["smell/vector"]
    np.testing.assert_allclose(out, hallem_carlson_row("141-78-6") / 100.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Stored records
# ---------------------------------------------------------------------------------------------

def test_parse_and_prepare():
    smiles, weights = parse_smell({"names": ["ethyl acetate", "benzaldehyde"], "weights": [1, 3]})
    assert smiles == [resolve_compound("CCOC(C)=O"), resolve_compound("O=Cc1ccccc1")] and weights == [1.0, 3.0]
    stored = Smell().prepare({"smiles": ["CC(=O)OCC"]}, root=".")
    assert json.loads(stored) == {"smiles": ["CCOC(C)=O"]}
    assert parse_smell(stored) == (["CCOC(C)=O"], None)
    assert parse_smell(Smell().prepare({"names": ["ethanol"], "weights": [2]}, ".")) == (["CCO"], [2.0])


@pytest.mark.parametrize("value, reason", [
    ("not json", "not valid JSON"),
    ([1, 2], "must be an object"),
    ({"weights": [1]}, "exactly one of"),
    ({"smiles": ["CCO"], "names": ["ethanol"]}, "exactly one of"),
    ({"smiles": ["CCO"], "weight": [1]}, "unknown key"),
    ({"smiles": "CCO"}, "non-empty list"),
    ({"smiles": []}, "non-empty list"),
    ({"smiles": ["C1CC("]}, "invalid SMILES 'C1CC\\('"),
    ({"names": ["zorblaxine hydroxyfoo"]}, "unknown compound 'zorblaxine hydroxyfoo'"),
    ({"smiles": ["CCO", "CCCO"], "weights": [1]}, "weights"),
])
def test_bad_records_are_value_errors(value, reason):
    with pytest.raises(ValueError, match=reason):
        parse_smell(value)
    with pytest.raises(ValueError):
        Smell().prepare(value, ".")


def test_validate_names_the_key():
    from omni.config import ConfigError
    modality = Smell()
    modality.validate(small_config())
    for override, key in [("--config.modalities.smell.representation=odour", "representation"),
                          ("--config.modalities.smell.tokens=0", "tokens"),
                          ("--config.modalities.smell.svd_dim=-1", "svd_dim"),
                          ("--config.loss.msm.mask_ratio=1.0", "mask_ratio")]:
        with pytest.raises(ConfigError, match=key):
            modality.validate(small_config(override))


# ---------------------------------------------------------------------------------------------
# SVD asset
# ---------------------------------------------------------------------------------------------

def test_svd_asset_projection():
    cfg = small_config()
    modality = Smell()
    bags = random_bags(30)
    asset = modality.fit_asset(iter(bags + ["broken", '{"smiles": ["C1CC("]}']), cfg)
    assert asset["examples"] == 30
    mean, components = np.asarray(asset["mean"], np.float32), np.asarray(asset["components"], np.float32)
    assert mean.shape == (2048,) and components.shape == (64, 2048)
    # 30 examples: at most 29 axes of variance; the rest are zero rows, so the dim is still 64.
    assert np.all(components[29:] == 0) and np.linalg.matrix_rank(components) == 29
    np.testing.assert_allclose(components[:29] @ components[:29].T, np.eye(29), atol=1e-5)
    for bag in bags[:3]:
        out = modality.encode(bag, cfg, {"smell": asset})["smell/vector"]
        assert out.shape == (64,) and out.dtype == np.float32
        smiles, weights = parse_smell(bag)
        v = np.log1p(smell_vector(smiles, weights))
        np.testing.assert_allclose(out, (v - mean) @ components.T / asset["scale"], rtol=1e-4, atol=1e-5)
    # Whitened: every kept axis has unit RMS over the training bags (they are centred on them).
    coords = np.stack([modality.encode(b, cfg, {"smell": asset})["smell/vector"] for b in bags])
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(coords[:, :29]), axis=0)), 1.0, rtol=1e-3)
    # Saved as JSON with the checkpoint: the round trip encodes identically.
    restored = json.loads(json.dumps(asset))
    np.testing.assert_array_equal(modality.encode(bags[0], cfg, {"smell": restored})["smell/vector"],
                                  modality.encode(bags[0], cfg, {"smell": asset})["smell/vector"])


def test_svd_with_few_examples_and_missing_asset():
    cfg = small_config()
    modality = Smell()
    asset = modality.fit_asset(random_bags(3, seed=1), cfg)
    assert np.asarray(asset["components"]).shape == (64, 2048)
    assert modality.encode(random_bags(1, seed=2)[0], cfg, {"smell": asset})["smell/vector"].shape == (64,)
    empty = modality.fit_asset(iter([]), cfg)  # a dataset without smells: zeros, still 64 long
    assert empty["examples"] == 0 and modality.encode(random_bags(1)[0], cfg, {"smell": empty})["smell/vector"].shape == (64,)
    with pytest.raises(RuntimeError, match="'smell'"):
        modality.encode(random_bags(1)[0], cfg, {})
    assert modality.fit_asset(random_bags(3), small_config("--config.modalities.smell.svd_dim=0")) is None
    unreduced = modality.encode(random_bags(1)[0], small_config("--config.modalities.smell.svd_dim=0"), {})
    smiles, weights = parse_smell(random_bags(1)[0])
    np.testing.assert_allclose(unreduced["smell/vector"], np.log1p(smell_vector(smiles, weights)), rtol=1e-6)


def test_svd_gram_path_matches_direct_svd():
    """Past `dim` examples the axes come from the Gram matrix; they must equal the direct SVD's,
    signs included (each axis' largest entry is positive)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 16)) * np.linspace(3.0, 0.1, 16) + 5.0
    direct = fit_svd(iter(x), 6, 16, chunk=1000)   # one block of 100 rows: SVD
    gram = fit_svd(iter(x), 6, 16, chunk=8)        # folded 8 rows at a time: Gram + eigh
    np.testing.assert_allclose(gram["components"], direct["components"], atol=1e-5)
    np.testing.assert_allclose(gram["mean"], direct["mean"], rtol=1e-6)
    np.testing.assert_allclose(gram["scale"], direct["scale"], rtol=1e-5)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(direct["components"]), np.abs(vt[:6]), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Stem
# ---------------------------------------------------------------------------------------------

def test_num_masked():
    assert num_masked(0.5, 4) == 2 and num_masked(0.1, 4) == 1 and num_masked(0.3, 1) == 1
    assert num_masked(0.0, 4) == 0


def test_stem_shapes_masking_and_no_leak():
    cfg = small_config()
    stem = Smell().make_stem(cfg, nnx.Rngs(0))
    vector = jax.random.normal(jax.random.key(1), (3, 64))
    tokens, valid = stem.embed({"smell/vector": vector}, jnp.float32)
    assert tokens.shape == (3, 4, 32) and bool(valid.all())
    rng = jax.random.key(2)
    tokens, valid, target, picked = stem.masked_embed({"smell/vector": vector}, rng, jnp.float32)
    assert tokens.shape == (3, 4, 32) and target.shape == (3, 4, 16) and bool(valid.all())
    np.testing.assert_array_equal(target, vector.reshape(3, 4, 16))  # groups are contiguous features
    np.testing.assert_array_equal(picked.sum(-1), [2, 2, 2])
    # Changing a masked group's features changes none of that example's tokens (nothing leaks);
    # changing a visible group changes its own token only.
    hidden_group, shown_group = int(np.argmax(picked[0])), int(np.argmin(picked[0]))
    for group, changes in [(hidden_group, False), (shown_group, True)]:
        other = vector.at[0, group * 16:(group + 1) * 16].add(3.0)
        again, _, _, picked_again = stem.masked_embed({"smell/vector": other}, rng, jnp.float32)
        np.testing.assert_array_equal(picked_again, picked)
        differs = np.any(np.asarray(again != tokens), axis=-1)
        assert differs[0, group] == changes and not differs[0, np.arange(4) != group].any()
        assert not differs[1:].any()


def test_stem_loss_and_gradient():
    cfg = small_config("--config.modalities.smell.representation=receptors",
                       "--config.modalities.smell.tokens=5")  # 24 features in 5 groups of 5: 1 padding
    stem = Smell().make_stem(cfg, nnx.Rngs(0))
    vector = jax.random.normal(jax.random.key(1), (2, 24))
    _, _, target, picked = stem.masked_embed({"smell/vector": vector}, jax.random.key(3), jnp.float32)
    assert target.shape == (2, 5, 5) and picked.sum() == 2 * 2  # round(0.5 * 5) = 2 per example
    hidden = jax.random.normal(jax.random.key(4), (2, 5, 32))
    loss = stem.reconstruction_loss(hidden, target, jnp.float32)
    assert loss.shape == (2, 5)
    # The padding feature (the last group's 5th) is not scored.
    np.testing.assert_array_equal(stem.reconstruction_loss(hidden, target.at[:, 4, 4].add(7.0), jnp.float32), loss)

    def objective(stem, masked_only):
        tokens, _, target, picked = stem.masked_embed({"smell/vector": vector}, jax.random.key(3), jnp.float32)
        per_token = stem.reconstruction_loss(tokens, target, jnp.float32)
        return jnp.sum(per_token * picked) if masked_only else jnp.sum(per_token)

    grads = nnx.grad(objective)(stem, False)
    leaves = jax.tree.leaves(nnx.state(grads))
    assert leaves and all(bool(jnp.isfinite(g).all()) for g in leaves)
    assert float(jnp.abs(grads.proj[...]).sum()) > 0 and float(jnp.abs(grads.head.kernel[...]).sum()) > 0
    # With the stem's tokens as the hidden states, the masked tokens' loss cannot reach the
    # projection: a masked token holds nothing of its group's features.
    grads = nnx.grad(objective)(stem, True)
    assert float(jnp.abs(grads.proj[...]).sum()) == 0 and float(jnp.abs(grads.mask_token[...]).sum()) > 0
