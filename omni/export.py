"""Bundles: a trained run as a folder anyone can use, and `omni embed` on top of it.

`omni export --workdir DIR --out BUNDLE` writes (no pickle anywhere):

    weights.safetensors      every parameter, flat keys like "stems/text/tokens" (f32)
    config.json              the run's config, as the run wrote it
    tokenizer.json           the BPE tokenizer (HF `tokenizers` JSON) of the checkpoint
    assets.json              the run's fitted modality assets (e.g. the smell SVD basis), JSON
    preprocessing.json       every host preprocessing constant, per modality: text max_len and
                             special token ids; image size, patch, pixel mean/std; and the exact
                             arrays each program takes (name, shape with "b" for the batch, dtype)
    bundle.json              format version, step, modalities, embedding width, and per program:
                             file, platforms, inputs, output, and its flat argument order
    encoder_<modality>.stablehlo
                             one program per modality encoder, made with `jax.export` for
                             platforms ("cpu", "cuda") with a symbolic batch dimension "b", stored as
                             `Exported.serialize()` bytes (load with `jax.export.deserialize`)
    manifest.json            the SHA-256 (and size) of every other file

Program calling convention: `program(weights, inputs) -> [b, embed_dim] f32`, L2-normalised, where
`weights` is the dict of ALL tensors in weights.safetensors (keyed as there) and `inputs` is the
modality's dict of arrays (e.g. {"text/ids": int32 [b, max_len]}); flattened, the arguments are
the weights in sorted key order, then the inputs in sorted key order (bundle.json lists them).
The weights are arguments, not constants baked into the program, because:
  * the programs stay small whatever the model size (StableHLO constants would copy every weight
    into every modality's program, and serialized modules over 2 GiB cannot be written at all);
  * weights.safetensors is the single source of truth: `omni embed` and fine-tuning
    (`--config.init_from=BUNDLE`) use the very same bytes, checked against the manifest.

`load_bundle` refuses a bundle whose files do not match manifest.json (a changed, missing or
unlisted file) with a ValueError naming the file. `embed_files` runs the programs with nothing
but the bundle: host preprocessing (BPE tokenizer from tokenizer.json, `load_image`) with the
bundle's constants, then `jax.export.deserialize(...).call`; no flax module is built and no
training code is imported. Batches are cut into chunks of at most `batch_size` and each chunk is
padded to the next power of two (so at most log2(batch_size)+1 compilations per program).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np

BUNDLE_FORMAT = "omni-bundle/1"
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
ASSETS = "assets.json"  # the same name as a workdir's (omni.train.ASSETS_FILE), for init_from
PREPROCESSING = "preprocessing.json"
METADATA = "bundle.json"
MANIFEST = "manifest.json"
DEFAULT_PLATFORMS = ("cpu", "cuda")
BATCH_DIM = "b"
_CACHE_LIMIT = 256 << 20  # verified files up to this size are kept in memory, read once


def program_file(modality: str) -> str:
    return f"encoder_{modality}.stablehlo"


# ==============================================================================================
# Parameter trees <-> flat safetensors keys
# ==============================================================================================

def flatten_params(params) -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {"a/b/c": C-contiguous numpy array} (0-d arrays stay 0-d)."""
    flat: dict[str, np.ndarray] = {}

    def visit(node, path):
        if isinstance(node, Mapping):
            for key, value in node.items():
                key = str(key)
                if "/" in key:
                    raise ValueError(f"parameter name '{key}' (under '{'/'.join(path)}') contains '/'")
                visit(value, path + (key,))
        else:
            flat["/".join(path)] = np.array(node, order="C", copy=True)

    visit(params, ())
    return flat


def _unflatten_like(flat: Mapping, like, convert=lambda key, value, like_leaf: value):
    """flat {"a/b": x} -> a nested dict with the structure (and key types) of `like`."""
    def visit(node, path):
        if isinstance(node, Mapping):
            return {key: visit(value, path + (str(key),)) for key, value in node.items()}
        key = "/".join(path)
        return convert(key, flat[key], node)

    return visit(like, ())


def _leaf_paths(like) -> list[str]:
    paths: list[str] = []

    def visit(node, path):
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, path + (str(key),))
        else:
            paths.append("/".join(path))

    visit(like, ())
    return paths


# ==============================================================================================
# Export
# ==============================================================================================

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def preprocessing_constants(config) -> dict:
    """Every host preprocessing constant a consumer needs to build a program's inputs."""
    from omni.modalities import registry

    out: dict = {}
    for name in config.modalities:
        modality = registry.get(name)
        entry: dict = {}
        if name == "text":
            from omni.modalities import text
            entry = {
                "tokenizer": TOKENIZER, "max_len": int(config.modalities.text.max_len),
                "vocab_size": int(config.modalities.text.vocab_size),
                "pad_id": text.PAD_ID, "cls_id": text.CLS_ID, "mask_id": text.MASK_ID, "unk_id": text.UNK_ID,
                "special_tokens": list(text.SPECIAL_TOKENS),
                "recipe": "ids = tokenizer.encode(text) (byte-level BPE, no special tokens added); keep the "
                          "first max_len ids; pad on the right with pad_id to max_len",
            }
        elif name == "image":
            from omni.modalities import image
            entry = {
                "size": int(config.modalities.image.size), "patch": int(config.modalities.image.patch),
                "pixel_mean": float(image.PIXEL_MEAN), "pixel_std": float(image.PIXEL_STD),
                "recipe": "decode; 16-bit -> 8-bit; alpha composited on white; RGB; resize (bilinear) so "
                          "the longer side is size, aspect kept; pad bottom/right with 0 to size x size; "
                          "uint8 into the program, which computes ((x / 255) - pixel_mean) / pixel_std "
                          "per channel before cutting patch x patch patches (row-major)",
            }
        elif hasattr(modality, "export_constants"):  # later modalities describe themselves
            entry = dict(modality.export_constants(config))
        entry["inputs"] = {key: {"shape": [BATCH_DIM, *map(int, shape)], "dtype": _dtype_name(dtype)}
                           for key, (shape, dtype) in modality.array_spec(config).items()}
        out[name] = entry
    return out


def export_programs(config, graphdef, like_params, weights: dict[str, np.ndarray],
                    platforms=DEFAULT_PLATFORMS) -> dict[str, tuple[bytes, dict]]:
    """modality -> (serialized jax.export program, its description for bundle.json)."""
    import jax
    from flax import nnx

    from omni.modalities import registry

    batch, = jax.export.symbolic_shape(BATCH_DIM)
    weight_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
    out = {}
    for name in config.modalities:
        spec = registry.get(name).array_spec(config)
        input_specs = {k: jax.ShapeDtypeStruct((batch, *shape), dtype) for k, (shape, dtype) in spec.items()}

        def encoder(weights_arg, inputs, name=name):
            nested = _unflatten_like(weights_arg, like_params)  # like_params: structure only
            return nnx.merge(graphdef, nested).embed(name, inputs)

        exported = jax.export.export(jax.jit(encoder), platforms=tuple(platforms))(weight_specs, input_specs)
        paths, _ = jax.tree_util.tree_flatten_with_path((weight_specs, input_specs))
        order = [("weights" if p[0].idx == 0 else "inputs", p[1].key) for p, _ in paths]
        out_aval = exported.out_avals[0]
        description = {
            "file": program_file(name),
            "platforms": list(exported.platforms),
            "calling_convention_version": int(exported.calling_convention_version),
            "inputs": {k: {"shape": [BATCH_DIM, *map(int, shape)], "dtype": _dtype_name(dtype)}
                       for k, (shape, dtype) in spec.items()},
            "output": {"shape": [str(d) for d in out_aval.shape], "dtype": _dtype_name(out_aval.dtype),
                       "l2_normalised": True},
            "arguments": [{"group": group, "name": key} for group, key in order],
        }
        out[name] = (bytes(exported.serialize()), description)
    return out


def export_bundle(workdir, out_dir, platforms=DEFAULT_PLATFORMS) -> dict:
    """The newest checkpoint of the run in `workdir` -> a bundle folder at `out_dir` (which must
    not exist or be empty). Written to a temporary sibling first, then renamed into place.
    Returns a summary (bundle path, step, modalities, platforms, file sizes)."""
    import jax

    from omni import evaluate

    workdir, out_dir = Path(workdir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: already exists and is not an empty folder; choose a new --out")
    config, setup, params, assets, step = evaluate.load_run(workdir)
    params = jax.device_get(params)
    weights = flatten_params(params)
    for key, value in weights.items():
        if value.dtype != np.float32:
            raise ValueError(f"parameter '{key}' is {value.dtype}; bundles store float32 weights")
    programs = export_programs(config, setup.graphdef, params, weights, platforms)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        from safetensors.numpy import save_file
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": BUNDLE_FORMAT, "step": str(step)})
        (tmp / CONFIG).write_bytes((workdir / "config.json").read_bytes())
        (tmp / TOKENIZER).write_text(assets["tokenizer"].to_json(), encoding="utf-8")
        fitted = {k: v for k, v in assets.items() if k != "tokenizer"}
        (tmp / ASSETS).write_text(json.dumps(fitted) + "\n", encoding="utf-8")
        (tmp / PREPROCESSING).write_text(json.dumps(preprocessing_constants(config), indent=2) + "\n")
        for serialized, description in programs.values():
            (tmp / description["file"]).write_bytes(serialized)
        metadata = {
            "format": BUNDLE_FORMAT, "step": int(step), "modalities": list(config.modalities.keys()),
            "embed_dim": int(config.model.embed_dim), "weights": WEIGHTS, "config": CONFIG,
            "tokenizer": TOKENIZER, "preprocessing": PREPROCESSING, "jax_version": jax.__version__,
            "programs": {name: description for name, (_, description) in programs.items()},
        }
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        manifest = {"format": BUNDLE_FORMAT, "algorithm": "sha256", "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"bundle": str(out_dir), "step": int(step), "modalities": metadata["modalities"],
            "platforms": list(platforms), "files": {name: f["bytes"] for name, f in files.items()}}


# ==============================================================================================
# Load and verify
# ==============================================================================================

class Bundle:
    """A verified bundle. Files are read through `read_bytes`, which serves the verified bytes."""

    def __init__(self, path: Path, manifest: dict, verified: dict[str, bytes]):
        self.path = path
        self.manifest = manifest
        self._verified = verified
        self.metadata = json.loads(self.read_bytes(METADATA))
        if self.metadata.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"bundle {path}: {METADATA} has format {self.metadata.get('format')!r}, "
                             f"this omni reads {BUNDLE_FORMAT!r}")
        self.preprocessing = json.loads(self.read_bytes(PREPROCESSING))
        self.config = json.loads(self.read_bytes(CONFIG))
        self.modalities = list(self.metadata["modalities"])
        self.embed_dim = int(self.metadata["embed_dim"])
        self._tokenizer = None
        self._assets = None
        self._weights = None
        self._device_weights = None
        self._programs: dict = {}

    def read_bytes(self, name: str) -> bytes:
        if name not in self.manifest["files"]:
            raise ValueError(f"bundle {self.path}: {name} is not part of this bundle")
        if name in self._verified:
            return self._verified[name]
        return (self.path / name).read_bytes()

    def weights(self) -> dict[str, np.ndarray]:
        if self._weights is None:
            from safetensors.numpy import load, load_file
            if WEIGHTS in self._verified:
                self._weights = load(self._verified[WEIGHTS])
            else:
                self._weights = load_file(str(self.path / WEIGHTS))
        return self._weights

    def tokenizer(self):
        if self._tokenizer is None:
            from omni.modalities.text import BPETokenizer
            self._tokenizer = BPETokenizer.from_json(self.read_bytes(TOKENIZER).decode("utf-8"))
        return self._tokenizer

    def program(self, modality: str):
        """The jitted call of the modality's exported encoder: (weights, inputs) -> [b, E]."""
        if modality not in self._programs:
            import jax
            exported = jax.export.deserialize(bytearray(self.read_bytes(self.metadata["programs"][modality]["file"])))
            self._programs[modality] = jax.jit(exported.call)
        return self._programs[modality]

    def device_weights(self):
        if self._device_weights is None:
            import jax
            self._device_weights = jax.device_put(self.weights())
        return self._device_weights

    def preprocess(self, modality: str, value) -> dict[str, np.ndarray]:
        """One raw input (a string for text; a path or encoded bytes for files) -> program arrays."""
        constants = self.preprocessing[modality]
        if modality == "text":
            from omni.modalities.text import encode_padded
            if not isinstance(value, str):
                raise ValueError(f"text inputs must be strings, got {type(value).__name__}")
            return {"text/ids": encode_padded(self.tokenizer(), value, int(constants["max_len"]))}
        if modality == "image":
            from omni.modalities.image import load_image
            source = value if isinstance(value, bytes) else str(value)
            return {"image/pixels": load_image(source, int(constants["size"]))}
        # A later modality without a dedicated recipe here: its own host encoder, with the bundle's config.
        import ml_collections

        from omni.modalities import registry
        config = ml_collections.ConfigDict(self.config)
        return registry.get(modality).encode(value, config, {"tokenizer": self.tokenizer(), **self.assets()})

    def assets(self) -> dict:
        """The fitted modality assets (bundles written before assets.json existed have none),
        parsed once: an SVD basis is megabytes of JSON."""
        if self._assets is None:
            self._assets = json.loads(self.read_bytes(ASSETS)) if ASSETS in self.manifest["files"] else {}
        return self._assets


def _safe_name(name) -> bool:
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    pure = PurePosixPath(name)
    return not pure.is_absolute() and ".." not in pure.parts and name == pure.as_posix()


def load_bundle(path) -> Bundle:
    """Open a bundle, checking every file against manifest.json: a changed, missing or unlisted
    file raises ValueError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"bundle {path}: not a folder")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"bundle {path}: {MANIFEST} is missing; is this an omni bundle (omni export)?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        assert isinstance(files, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"bundle {path}: {MANIFEST} is not a valid manifest (JSON with a 'files' object)") from None
    if manifest.get("algorithm", "sha256") != "sha256":
        raise ValueError(f"bundle {path}: {MANIFEST} uses hash '{manifest.get('algorithm')}'; expected sha256")
    for name in files:
        if not _safe_name(name) or name == MANIFEST:
            raise ValueError(f"bundle {path}: {MANIFEST} lists an invalid file name {name!r}")
    present = set()
    for p in path.rglob("*"):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            raise ValueError(f"bundle {path}: {rel} is a symbolic link; bundles hold plain files only")
        if p.is_file() and rel != MANIFEST:
            present.add(rel)
    missing, unlisted = sorted(set(files) - present), sorted(present - set(files))
    if missing:
        raise ValueError(f"bundle {path}: {missing[0]} is listed in {MANIFEST} but missing")
    if unlisted:
        raise ValueError(f"bundle {path}: {unlisted[0]} is not listed in {MANIFEST}; refusing a bundle with "
                         "unverified files")
    verified: dict[str, bytes] = {}
    for name in sorted(files):
        entry = files[name]
        expected = entry.get("sha256") if isinstance(entry, dict) else entry
        file = path / name
        if file.stat().st_size <= _CACHE_LIMIT:
            data = file.read_bytes()
            actual = hashlib.sha256(data).hexdigest()
        else:
            data, actual = None, _sha256(file)
        if actual != expected:
            raise ValueError(f"bundle {path}: {name} does not match {MANIFEST} (sha256 {actual}, expected "
                             f"{expected}); the bundle was modified or corrupted, refusing it")
        if data is not None:
            verified[name] = data
    for name in (METADATA, CONFIG, PREPROCESSING, WEIGHTS):
        if name not in files:
            raise ValueError(f"bundle {path}: {MANIFEST} does not list {name}")
    return Bundle(path, manifest, verified)


# ==============================================================================================
# Embed with the bundle alone
# ==============================================================================================

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


# ==============================================================================================
# Fine-tuning from a bundle
# ==============================================================================================

def load_bundle_params(bundle_path, like_params):
    """The bundle's weights in the nested structure of `like_params` (numpy, cast to each leaf's
    dtype). Every key must exist on both sides with the same shape; otherwise ValueError naming it."""
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    weights = bundle.weights()
    wanted = _leaf_paths(like_params)
    hint = ("the fine-tuning config must match the bundle's model.* and modalities.* "
            f"(see {bundle.path / CONFIG})")
    for key in wanted:
        if key not in weights:
            raise ValueError(f"bundle {bundle.path}: no weight '{key}' in {WEIGHTS}; {hint}")
    extra = sorted(set(weights) - set(wanted))
    if extra:
        raise ValueError(f"bundle {bundle.path}: weight '{extra[0]}' is in {WEIGHTS} but not in the model "
                         f"being initialised; {hint}")

    def convert(key, value, like_leaf):
        if tuple(value.shape) != tuple(like_leaf.shape):
            raise ValueError(f"bundle {bundle.path}: weight '{key}' has shape {tuple(value.shape)} in the bundle "
                             f"but {tuple(like_leaf.shape)} in the model being initialised; {hint}")
        return np.asarray(value, dtype=like_leaf.dtype)

    return _unflatten_like(weights, like_params, convert)


# ==============================================================================================
# Command-line glue (wired into omni.cli)
# ==============================================================================================

def cli_export(workdir, out) -> dict:
    """`omni export --workdir DIR --out BUNDLE` -> the JSON printed on stdout."""
    return export_bundle(workdir, out)


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
