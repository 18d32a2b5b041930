"""Modality name -> its implementation. Adding a modality = one new file + one line here."""
from omni.modalities.audio import Audio
from omni.modalities.image import ImageModality
from omni.modalities.smell import Smell
from omni.modalities.text import Text
from omni.modalities.video import Video

# Order matters once: stems are built in this order, so a later one may share an earlier one's weights.
MODALITIES = {m.name: m for m in (Text(), ImageModality(), Audio(), Video(), Smell())}


def get(name: str):
    try:
        return MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality '{name}' (known: {', '.join(sorted(MODALITIES))})") from None


def masked_objectives() -> dict[str, str]:
    """objective name (config.loss key) -> modality name, e.g. {'mlm': 'text', 'mim': 'image'}."""
    return {m.objective: m.name for m in MODALITIES.values()}


def active_objectives(config) -> dict[str, float]:
    """objective -> weight, for the objectives this config can train: the masked objective of each
    configured modality, and mmm and contrastive when there are at least two modalities."""
    names = list(config.modalities.keys())
    usable = {get(n).objective for n in names} | ({"mmm", "contrastive"} if len(names) >= 2 else set())
    return {k: float(config.loss[k].weight) for k in config.loss
            if k in usable and float(config.loss[k].weight) > 0}
