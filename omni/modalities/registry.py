"""Modality name -> its implementation.

A modality is one class (see omni.modalities.base.Modality). The five built-in ones are listed
here; any other installed package can add more through the entry-point group `omni.modalities`
(as pytest and Beam load their plugins), e.g. in its pyproject:

    [project.entry-points."omni.modalities"]
    imu = "my_package.imu:IMU"

and a script or test can call `register(IMU())`. The record format, the manifest, the batch and
the model all read the registry, so a new modality needs no edit anywhere in omni.
"""
from __future__ import annotations

import itertools

from importlib.metadata import entry_points

from omni.modalities.audio import Audio
from omni.modalities.base import Modality
from omni.modalities.image import ImageModality
from omni.modalities.smell import Smell
from omni.modalities.text import Text
from omni.modalities.video import Video

ENTRY_POINT_GROUP = "omni.modalities"


def _plugins() -> list[Modality]:
    """Modalities of other installed packages, in name order (a stable stem order across hosts)."""
    found = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        loaded = entry.load()
        modality = loaded() if isinstance(loaded, type) else loaded
        if not isinstance(modality, Modality) or modality.name != entry.name:
            raise TypeError(f"entry point {ENTRY_POINT_GROUP}:{entry.name} = {entry.value} must give a "
                            f"Modality whose name is '{entry.name}'")
        found.append(modality)
    return found


# Order matters once: stems are built in this order, so a later one may share an earlier one's
# weights (video shares image's patch embedding). Plugins come after the built-in modalities.
MODALITIES: dict[str, Modality] = {m.name: m for m in (Text(), ImageModality(), Audio(), Video(), Smell())}
MODALITIES.update({m.name: m for m in _plugins() if m.name not in MODALITIES})


def register(modality: Modality) -> None:
    """Add a modality at run time (the programmatic form of the entry point)."""
    if not modality.name or not modality.objective:
        raise ValueError(f"{type(modality).__name__}: a modality needs a `name` and an `objective`")
    known = MODALITIES.get(modality.name)
    if known is not None and type(known) is not type(modality):
        raise ValueError(f"modality '{modality.name}' is already registered ({type(known).__name__})")
    MODALITIES[modality.name] = modality


def get(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality '{name}' (known: {', '.join(sorted(MODALITIES))})") from None


def file_fields() -> tuple[str, ...]:
    """Names of the modalities whose records hold a file's bytes (image, audio, video, ...)."""
    return tuple(name for name, m in MODALITIES.items() if m.file_field)


def masked_objectives() -> dict[str, str]:
    """objective name (config.loss key) -> modality name, e.g. {'mlm': 'text', 'mim': 'image'}."""
    return {m.objective: m.name for m in MODALITIES.values()}


def itm_pairs(config, names) -> list[tuple[str, str]]:
    """The pairs the matching objective trains (omni.matching), each (a, b) in the order of
    `names`: loss.itm.pairs ("image-text,audio-text", either order), or every pair when empty."""
    every = list(itertools.combinations(names, 2))
    wanted = str(config.loss.get("itm", {}).get("pairs", "") or "").strip()
    if not wanted:
        return every
    chosen = {tuple(p.strip().split("-")) for p in wanted.split(",") if p.strip()}
    return [(a, b) for a, b in every if (a, b) in chosen or (b, a) in chosen]


def active_objectives(config) -> dict[str, float]:
    """objective -> weight, for the objectives this config can train: the masked objective of each
    configured modality, and mmm, contrastive and itm when there are at least two modalities."""
    names = list(config.modalities.keys())
    usable = {get(n).objective for n in names} | ({"mmm", "contrastive", "itm"} if len(names) >= 2 else set())
    return {k: float(config.loss[k].weight) for k in config.loss
            if k in usable and float(config.loss[k].weight) > 0}
