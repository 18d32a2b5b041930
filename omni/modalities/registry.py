"""Modality name -> its implementation. Adding a modality = one new file + one line here."""
from omni.modalities.image import ImageModality
from omni.modalities.text import Text

MODALITIES = {m.name: m for m in (Text(), ImageModality())}


def get(name: str):
    try:
        return MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality '{name}' (known: {', '.join(sorted(MODALITIES))})") from None


def masked_objectives() -> dict[str, str]:
    """objective name (config.loss key) -> modality name, e.g. {'mlm': 'text', 'mim': 'image'}."""
    return {m.objective: m.name for m in MODALITIES.values()}
