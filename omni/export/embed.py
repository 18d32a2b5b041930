"""`omni embed`: embeddings from a bundle alone. Host preprocessing with the bundle's constants,
then the exported programs through `jax.export.deserialize(...).call`; no flax module is built
and no training code runs. Batches are cut into chunks of at most `batch_size` and each chunk is
padded to the next power of two, so a program compiles at most log2(batch_size)+1 times."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from omni.run.bundle import Bundle, load_bundle

def _bucket(count: int, batch_size: int) -> int:
    size = 1
    while size < count:
        size *= 2
    return min(size, batch_size)


def embed_files(bundle, modality: str, inputs, batch_size: int = 64) -> np.ndarray:
    """Normalised embeddings [N, embed_dim] (f32) of `inputs` (strings for text; file paths or
    encoded bytes otherwise), computed by the bundle's exported program for `modality`."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if modality not in bundle.modalities:
        raise ValueError(f"modality '{modality}' is not in this bundle (it has: {', '.join(bundle.modalities)})")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    inputs = list(inputs)
    rows = []
    for i, value in enumerate(inputs):
        try:
            rows.append(bundle.preprocess(modality, value))
        except (ValueError, OSError) as e:
            where = value if isinstance(value, (str, Path)) and modality != "text" else f"input {i}"
            raise ValueError(f"{where}: {e}") from None
    if not rows:
        return np.zeros((0, bundle.embed_dim), np.float32)
    program, weights = bundle.program(modality), bundle.device_weights()
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        size = _bucket(len(chunk), batch_size)
        batch = {key: np.stack([r[key] for r in chunk] + [np.zeros_like(chunk[0][key])] * (size - len(chunk)))
                 for key in chunk[0]}
        out.append(np.asarray(program(weights, batch), np.float32)[: len(chunk)])
    return np.concatenate(out)




def smell_input(spec: str) -> str:
    """A smell given on the command line or in a file: the manifest's JSON object
    ({"smiles": [...]} or {"names": [...]}, optional "weights"), or compounds (SMILES, names or
    CAS numbers) separated by ';' (names may hold commas, as in 2,3-butanedione)."""
    spec = spec.strip()
    if spec.startswith("{"):
        return spec
    return json.dumps({"names": [c.strip() for c in spec.split(";") if c.strip()]})


def cli_embed(bundle, modality: str, files=(), texts=(), out=None) -> dict:
    """`omni embed BUNDLE --modality M (FILE ... | --text "..." ...) --out OUT.npy` -> the JSON
    printed on stdout. For text, each FILE holds one text (UTF-8, surrounding whitespace dropped);
    for smell, each FILE or --text holds one smell (see `smell_input`); image, audio and video
    FILEs are media files."""
    files, texts = list(files or []), list(texts or [])
    if bool(files) == bool(texts):
        raise ValueError("give either input FILEs or --text, not both and not neither")
    if texts and modality not in ("text", "smell"):
        raise ValueError(f"--text applies to --modality text (a caption) or smell (compounds), not '{modality}'")
    if out is None:
        raise ValueError("--out OUT.npy is required")
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"{f}: input file not found")
    opened = load_bundle(bundle)
    if modality == "text":
        inputs = texts or [Path(f).read_text(encoding="utf-8").strip() for f in files]
    elif modality == "smell":
        inputs = [smell_input(t) for t in texts or [Path(f).read_text(encoding="utf-8") for f in files]]
    else:
        inputs = [str(f) for f in files]
    vectors = embed_files(opened, modality, inputs)
    out = Path(out)
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")  # what np.save would write; report the real path
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, vectors, allow_pickle=False)
    return {"out": str(out), "modality": modality, "count": int(vectors.shape[0]),
            "shape": list(vectors.shape), "bundle": str(bundle), "step": opened.metadata["step"]}
