"""Paired compositional test in Winoground form (Thrush et al. 2022): text, image and group scores
over user-given pairs of captions with the same words in a different order.

Pairs file (JSON lines, one group per line; paths relative to the file):

    {"id": "g1", "caption_0": "a red square on black", "caption_1": "a black square on red",
     "image_0": "img/red_on_black.png", "image_1": "img/black_on_red.png"}

caption_i describes input_i. The second modality is the one named by the `<modality>_0` /
`<modality>_1` keys (image here; audio_0/audio_1 etc. for other modalities); every line must use
the same one. A string value is a file path (its bytes are decoded like a dataset's files); any
other JSON value is handed to the modality's encoder as it is. `id` is optional.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omni.data.manifest import json_lines
from omni.eval.embedding import ListSource, check_modality, embed_records
from omni.eval.rerank import modality_inputs, pair_scorer
from omni.modalities import registry

WINOGROUND_CHANCE = {"text_score": 0.25, "image_score": 0.25, "group_score": 1 / 6}


def winoground_scores(similarity: np.ndarray) -> dict:
    """similarity [G, 2, 2] with similarity[g, i, j] = s(caption_i, input_j) of group g (caption_i
    describes input_i). Thrush et al. 2022:
      text score:  for both inputs, the right caption is the more similar one
                   s(C0, I0) > s(C1, I0) and s(C1, I1) > s(C0, I1)
      image score: for both captions, the right input is the more similar one
                   s(C0, I0) > s(C0, I1) and s(C1, I1) > s(C1, I0)
      group score: both. Ties count as failures. Chance: 1/4, 1/4, 1/6."""
    s = np.asarray(similarity, np.float64)
    if s.ndim != 3 or s.shape[1:] != (2, 2):
        raise ValueError(f"similarity must be [groups, 2, 2], got {s.shape}")
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    group = text & image
    n = len(s)
    mean = lambda x: float(np.mean(x)) if n else 0.0  # noqa: E731
    return {"text_score": mean(text), "image_score": mean(image), "group_score": mean(group), "n": int(n),
            "chance": dict(WINOGROUND_CHANCE)}


def read_pairs(path) -> tuple[str, list[dict]]:
    """Parse a pairs file (format in the module docstring) -> (modality, groups); each group is
    {"id", "caption_0", "caption_1", "input_0", "input_1", "source_0", "source_1"}. Errors name the
    file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file not found")
    root, modality, groups = path.parent, None, []
    for where, entry in json_lines(path):
        for key in ("caption_0", "caption_1"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ValueError(f"{where}: '{key}' must be a non-empty string")
        others = sorted(set(entry) - {"id", "caption_0", "caption_1"})
        names = sorted({k[:-2] for k in others if k.endswith(("_0", "_1"))})
        if len(names) != 1 or others != [f"{names[0]}_0", f"{names[0]}_1"]:
            raise ValueError(f"{where}: besides id, caption_0 and caption_1 a line holds exactly two keys "
                             f"<modality>_0 and <modality>_1 (e.g. image_0, image_1); got {others}")
        name = names[0]
        if name == "text":
            raise ValueError(f"{where}: the paired inputs must be of a modality other than text")
        registry.get(name)
        if modality not in (None, name):
            raise ValueError(f"{where}: this line pairs captions with '{name}', earlier lines with '{modality}'")
        modality = name
        group = {"id": str(entry.get("id", f"line-{where.rsplit(':', 1)[1]}")),
                 "caption_0": entry["caption_0"], "caption_1": entry["caption_1"]}
        for i in (0, 1):
            value = entry[f"{name}_{i}"]
            if isinstance(value, str):
                file = root / value
                if not file.is_file():
                    raise ValueError(f"{where}: {name}_{i} file {file} does not exist")
                group[f"input_{i}"], group[f"source_{i}"] = file.read_bytes(), str(file)
            else:
                group[f"input_{i}"], group[f"source_{i}"] = value, where
        groups.append(group)
    if not groups:
        raise ValueError(f"{path}: the pairs file holds no groups")
    return modality, groups


def paired_compositional(setup, params, config, assets, pairs_path) -> dict:
    """Winoground-form scores of the run on the groups of a pairs file:
    {"text_score", "image_score", "group_score", "n", "chance", "modality"} from the contrastive
    similarities, and for a run with a matching head the same scores from its logits under
    "matching"."""
    modality, groups = read_pairs(pairs_path)
    check_modality(config, "text")
    check_modality(config, modality)
    captions = [{"id": f"{g['id']}/caption_{i}", "text": g[f"caption_{i}"]} for g in groups for i in (0, 1)]
    inputs = [{"id": f"{g['id']}/{modality}_{i}", modality: g[f"input_{i}"], "source": g[f"source_{i}"]}
              for g in groups for i in (0, 1)]
    zc, kept_c = embed_records(setup, params, ListSource(captions), config, assets, "text")
    zi, kept_i = embed_records(setup, params, ListSource(inputs), config, assets, modality)
    for wanted, kept in ((captions, kept_c), (inputs, kept_i)):
        if len(kept) != len(wanted):
            missing = sorted({r["id"] for r in wanted} - {r["id"] for r in kept})
            bad = next(r for r in wanted if r["id"] == missing[0])
            raise ValueError(f"{pairs_path}: cannot encode {bad.get('source') or bad['id']} ({len(missing)} failed)")
    zc = zc.reshape(len(groups), 2, -1)
    zi = zi.reshape(len(groups), 2, -1)
    similarity = np.einsum("gie,gje->gij", zc, zi)
    result = {**winoground_scores(similarity), "modality": modality}
    if "itm_head" in params:
        # A fusion model is scored by its matching head (what Winoground scored for fusion models).
        result["matching"] = winoground_scores(matching_similarity(setup, params, config, assets, kept_c,
                                                                   kept_i, modality, len(groups)))
    return result


def matching_similarity(setup, params, config, assets, captions, inputs, modality, groups) -> np.ndarray:
    """[G, 2, 2] matching logits of (caption_i, input_j) for every group (records in group order)."""
    scorer = pair_scorer(setup, params, config, "text", modality, modality_inputs(captions, config, assets, "text"),
                         modality_inputs(inputs, config, assets, modality))
    first = 2 * np.arange(groups)[:, None, None]
    rows = np.broadcast_to(first + np.arange(2)[None, :, None], (groups, 2, 2))
    cols = np.broadcast_to(first + np.arange(2)[None, None, :], (groups, 2, 2))
    return scorer(rows.reshape(-1), cols.reshape(-1)).reshape(groups, 2, 2)
