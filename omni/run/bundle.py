"""The bundle format, reading side: its file names, parameter trees <-> flat safetensors keys,
`load_bundle` (every file checked against manifest.json) and `load_bundle_params` (a bundle's
weights in a model's parameter tree, for `--config.init_from=BUNDLE`).

It sits below training, evaluation and export because all three read bundles: export writes
them (omni.export), `omni embed` runs their programs, and training initialises from them. The
format itself is described in omni/export/bundle.py.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import jax
import ml_collections
import numpy as np
from safetensors.numpy import load, load_file

from omni import storage
from omni.modalities import registry
from omni.modalities.image import load_image
from omni.modalities.text import BPETokenizer, encode_padded

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


def flatten_params(params) -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {"a/b/c": C-contiguous numpy array} (0-d arrays stay 0-d)."""
    return {key: np.array(value, order="C", copy=True) for key, value in flat_leaves(params).items()}


def flat_leaves(params) -> dict:
    """Nested dict -> {"a/b/c": leaf}, the leaves as they are (device arrays stay on the devices)."""
    flat: dict = {}

    def visit(node, path):
        if isinstance(node, Mapping):
            for key, value in node.items():
                key = str(key)
                if "/" in key:
                    raise ValueError(f"parameter name '{key}' (under '{'/'.join(path)}') contains '/'")
                visit(value, path + (key,))
        else:
            flat["/".join(path)] = node

    visit(params, ())
    return flat


def unflatten_like(flat: Mapping, like, convert=lambda key, value, like_leaf: value):
    """flat {"a/b": x} -> a nested dict with the structure (and key types) of `like`."""
    def visit(node, path):
        if isinstance(node, Mapping):
            return {key: visit(value, path + (str(key),)) for key, value in node.items()}
        key = "/".join(path)
        return convert(key, flat[key], node)

    return visit(like, ())


def subtree(like, keys) -> dict:
    """The nested dict `like` with only the leaves whose flat keys ("a/b/c") are in `keys`."""
    wanted = set(keys)

    def visit(node, path):
        out = {}
        for key, value in node.items():
            here = path + (str(key),)
            if isinstance(value, Mapping):
                kept = visit(value, here)
                if kept:
                    out[key] = kept
            elif "/".join(here) in wanted:
                out[key] = value
        return out

    return visit(like, ())


def leaf_paths(like) -> list[str]:
    paths: list[str] = []

    def visit(node, path):
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, path + (str(key),))
        else:
            paths.append("/".join(path))

    visit(like, ())
    return paths


def sha256_of_file(path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
            if WEIGHTS in self._verified:
                self._weights = load(self._verified[WEIGHTS])
            elif storage.is_remote(self.path):
                self._weights = load((self.path / WEIGHTS).read_bytes())
            else:
                self._weights = load_file(str(self.path / WEIGHTS))
        return self._weights

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = BPETokenizer.from_json(self.read_bytes(TOKENIZER).decode("utf-8"))
        return self._tokenizer

    def program(self, modality: str):
        """The jitted call of the modality's exported encoder: (weights, inputs) -> [b, E]."""
        if modality not in self._programs:
            exported = jax.export.deserialize(bytearray(self.read_bytes(self.metadata["programs"][modality]["file"])))
            self._programs[modality] = jax.jit(exported.call)
        return self._programs[modality]

    def device_weights(self):
        if self._device_weights is None:
            self._device_weights = jax.device_put(self.weights())
        return self._device_weights

    def preprocess(self, modality: str, value) -> dict[str, np.ndarray]:
        """One raw input (a string for text; a path or encoded bytes for files) -> program arrays."""
        constants = self.preprocessing[modality]
        if modality == "text":
            if not isinstance(value, str):
                raise ValueError(f"text inputs must be strings, got {type(value).__name__}")
            return {"text/ids": encode_padded(self.tokenizer(), value, int(constants["max_len"]))}
        if modality == "image":
            source = value if isinstance(value, bytes) else str(value)
            return {"image/pixels": load_image(source, int(constants["size"]))}
        # A later modality without a dedicated recipe here: its own host encoder, with the bundle's config.

        config = ml_collections.ConfigDict(self.config)
        return registry.get(modality).encode(value, config, {"tokenizer": self.tokenizer(), **self.assets()})

    def assets(self) -> dict:
        """The fitted modality assets (bundles written before assets.json existed have none),
        parsed once: an SVD basis is megabytes of JSON."""
        if self._assets is None:
            self._assets = json.loads(self.read_bytes(ASSETS)) if ASSETS in self.manifest["files"] else {}
        return self._assets


def _size(file) -> int:
    stat = file.stat()
    return stat.st_size if hasattr(stat, "st_size") else stat.length  # pathlib's, epath's


def _safe_name(name) -> bool:
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    pure = PurePosixPath(name)
    return not pure.is_absolute() and ".." not in pure.parts and name == pure.as_posix()


def load_bundle(path) -> Bundle:
    """Open a bundle (a local folder, gs:// or s3://), checking every file against manifest.json:
    a changed, missing or unlisted file raises ValueError naming it."""
    path = storage.path(path) if storage.is_remote(path) else Path(path)  # pathlib sees symlinks
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
    if isinstance(path, Path):  # an object store has no symbolic links
        for p in path.rglob("*"):
            if p.is_symlink():
                raise ValueError(f"bundle {path}: {p.relative_to(path).as_posix()} is a symbolic link; bundles "
                                 "hold plain files only")
    present = set(storage.files_under(path)) - {MANIFEST}
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
        if _size(file) <= _CACHE_LIMIT:
            data = file.read_bytes()
            actual = hashlib.sha256(data).hexdigest()
        else:
            data, actual = None, sha256_of_file(file)
        if actual != expected:
            raise ValueError(f"bundle {path}: {name} does not match {MANIFEST} (sha256 {actual}, expected "
                             f"{expected}); the bundle was modified or corrupted, refusing it")
        if data is not None:
            verified[name] = data
    for name in (METADATA, CONFIG, PREPROCESSING, WEIGHTS):
        if name not in files:
            raise ValueError(f"bundle {path}: {MANIFEST} does not list {name}")
    return Bundle(path, manifest, verified)


def load_bundle_params(bundle_path, like_params):
    """The bundle's weights in the nested structure of `like_params` (numpy, cast to each leaf's
    dtype). Every key must exist on both sides with the same shape; otherwise ValueError naming it."""
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    weights = bundle.weights()
    wanted = leaf_paths(like_params)
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

    return unflatten_like(weights, like_params, convert)
