"""Media stored already decoded: the expensive host work done once, at build time.

`omni data build ... --preprocess-for CONFIG` runs each media field (image, audio, video: the
modalities whose field is a file) through its modality's own `encode` for that config, and stores
the arrays it returns instead of the file's bytes. Training then reads them back (`encode`
below) and decodes, resizes and resamples nothing; raw files keep working beside them, so a
dataset may hold both.

Because the stored arrays *are* what `encode` returns, a preprocessed example trains exactly as
its raw file does (tests/test_stored_media.py). The arrays hold one config's shapes: a run whose
shapes differ is refused with the key and both shapes, never silently resized again.
"""
from __future__ import annotations

import io
import json

import numpy as np

from omni.modalities import registry

# Prefix of a stored field; no image, audio or video container starts with it.
MAGIC = b"OMNI-ARRAYS-1\n"
# Beside dataset_info.json: the array shapes the build stored, checked when a run starts.
STORED_SPEC = "stored_arrays.json"


def is_stored(value) -> bool:
    return isinstance(value, (bytes, bytearray)) and bytes(value[:len(MAGIC)]) == MAGIC


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """arrays -> bytes: MAGIC, then an uncompressed .npz (the arrays are small and already
    decoded; compressing them would put back the decode cost that storing them removes)."""
    buffer = io.BytesIO()
    buffer.write(MAGIC)
    np.savez(buffer, **{key.replace("/", "."): value for key, value in arrays.items()})
    return buffer.getvalue()


def unpack(value: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(bytes(value[len(MAGIC):]))) as stored:
        return {key.replace(".", "/"): stored[key] for key in stored.files}


def media_modalities(config) -> list[str]:
    """The configured modalities whose record field is a file: what preprocessing stores."""
    return [name for name in config.modalities if registry.get(name).file_field]


def spec_of(config) -> dict:
    """{modality: {array key: [shape, dtype]}}: what a build for `config` stores."""
    return {name: {key: [list(shape), np.dtype(dtype).str]
                   for key, (shape, dtype) in registry.get(name).array_spec(config).items()}
            for name in media_modalities(config)}


def preprocess_record(record: dict, config, assets=None) -> dict:
    """A record with each present media field replaced by its stored arrays for `config`. A
    field that does not decode raises ValueError, as `encode` does (the build rejects it)."""
    out = dict(record)
    for name in media_modalities(config):
        value = record.get(name)
        if value not in (None, b"", "") and not is_stored(value):
            out[name] = pack(registry.get(name).encode(value, config, assets or {}))
    return out


def encode(modality, value, config, assets) -> dict[str, np.ndarray]:
    """modality.encode(value), or the arrays stored for it, checked against this config's shapes."""
    if not is_stored(value):
        return modality.encode(value, config, assets)
    arrays = unpack(value)
    for key, (shape, dtype) in modality.array_spec(config).items():
        got = arrays.get(key)
        if got is None or got.shape != tuple(shape) or got.dtype != np.dtype(dtype):
            found = "missing" if got is None else f"{got.shape} {got.dtype}"
            raise ValueError(f"stored arrays were preprocessed for other shapes: {key} is {found}, this "
                             f"config wants {tuple(shape)} {np.dtype(dtype)} (modalities.{modality.name}); "
                             "rebuild with --preprocess-for this config, or from the raw files")
    return arrays


def write_spec(version_dir, config) -> None:
    (version_dir / STORED_SPEC).write_text(json.dumps(spec_of(config), indent=1, sort_keys=True))


def check_spec(version_dir, config) -> None:
    """Refuse, before the first step, a run whose media shapes differ from the ones a
    preprocessed dataset stored (one line: the modality, both shapes, and what to do)."""
    path = version_dir / STORED_SPEC
    if not path.exists():
        return
    stored, wanted = json.loads(path.read_text()), spec_of(config)
    for name, arrays in wanted.items():
        if name in stored and stored[name] != arrays:
            raise ValueError(f"{path}: the dataset stores {name} preprocessed as {stored[name]}, but this config "
                             f"wants {arrays} (modalities.{name}); rebuild it with --preprocess-for this "
                             "config, or from the raw files")
