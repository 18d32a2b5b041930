"""`omni match`: a bundle's matching program on one pair of inputs, "do these belong together?".
Like `omni embed`, it needs nothing but the bundle (host preprocessing with its constants, then
the exported program); the run must have been trained with matching (loss.itm.weight > 0)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from omni.export.embed import smell_input
from omni.run.bundle import Bundle, load_bundle


def pair_program(bundle: Bundle, a: str, b: str):
    """The exported matching program of the pair (a, b) in either order, and that order."""
    for first, second in ((a, b), (b, a)):
        if f"match:{first}-{second}" in bundle.metadata["programs"]:
            return bundle.program(f"match:{first}-{second}"), (first, second)
    trained = [k.removeprefix("match:") for k in bundle.metadata["programs"] if k.startswith("match:")]
    raise ValueError(f"bundle {bundle.path} has no matching program for {a}-{b} (it has: "
                     f"{', '.join(trained) or 'none; export a run trained with loss.itm.weight > 0'})")


def match_scores(bundle, pairs: list[tuple[tuple[str, object], tuple[str, object]]]) -> np.ndarray:
    """Matching logits [N] for pairs ((modality_a, input_a), (modality_b, input_b)), all of one
    modality pair; inputs as `omni embed` takes them (text strings, file paths or bytes)."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    (a, _), (b, _) = pairs[0]
    program, _ = pair_program(bundle, a, b)
    rows = []
    for (ma, va), (mb, vb) in pairs:
        if {ma, mb} != {a, b}:
            raise ValueError(f"every pair must be {a}-{b}; got {ma}-{mb}")
        rows.append({**bundle.preprocess(ma, va), **bundle.preprocess(mb, vb)})
    batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    return np.asarray(program(bundle.device_weights(), batch), np.float32)


def _read(modality: str, value: str):
    """A command-line input: text as given (or a file's text), smell as `omni embed` reads it, else a file."""
    path = Path(value)
    if modality == "text":
        return path.read_text(encoding="utf-8").strip() if path.is_file() else value
    if modality == "smell":
        return smell_input(path.read_text(encoding="utf-8") if path.is_file() else value)
    if not path.is_file():
        raise FileNotFoundError(f"{value}: input file not found (--{modality} input)")
    return str(path)


def cli_match(bundle, a_modality: str, a_input: str, b_modality: str, b_input: str) -> dict:
    """`omni match BUNDLE --a-modality M1 A --b-modality M2 B` -> {"logit", "probability", ...}."""
    opened = load_bundle(bundle)
    for name in (a_modality, b_modality):
        if name not in opened.modalities:
            raise ValueError(f"modality '{name}' is not in this bundle (it has: {', '.join(opened.modalities)})")
    pair = ((a_modality, _read(a_modality, a_input)), (b_modality, _read(b_modality, b_input)))
    logit = float(match_scores(opened, [pair])[0])
    return {"logit": logit, "probability": 1 / (1 + math.exp(-logit)), "a": a_modality, "b": b_modality,
            "bundle": str(bundle), "step": opened.metadata["step"]}
