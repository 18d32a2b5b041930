"""Load a config file and apply `--config.a.b=v` overrides; resolve the mesh shape.

A config is a Python file with `get_config() -> ml_collections.ConfigDict` (see configs/).
Every check here fails with ONE line that names the key and what is wrong, so that a bad
launch costs seconds, not a compile. The checks that need the modalities and objectives live in
omni.validation, one layer up.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import ml_collections

from omni.errors import ConfigError

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "tiny.py"


def resolve_config_path(path: str | None) -> Path:
    """`None` -> configs/tiny.py; a bare name like `base` or `base.py` -> configs/base.py."""
    if path is None:
        path = DEFAULT_CONFIG
    candidate = Path(path)
    if candidate.exists():
        return candidate
    for name in (path, f"{path}.py"):
        if (REPO_CONFIGS / name).exists():
            return REPO_CONFIGS / name
    raise ConfigError(f"config file '{path}' does not exist")


def load_config(path: str | None = None, overrides: list[str] | tuple = ()) -> ml_collections.ConfigDict:
    """Import the config file, call its get_config(), apply overrides (strings `--config.k=v`)."""
    file = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(f"omni_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file '{file}' has no get_config() function")
    config = module.get_config()
    with config.unlocked():
        config.name = config.get("name", file.stem)
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Apply one `--config.a.b=value`; the value is parsed to the type of the existing entry.
    `--config.modalities=text,image` keeps only the named modalities of the config."""
    text = override[2:] if override.startswith("--") else override
    if not text.startswith("config.") or "=" not in text:
        raise ConfigError(f"override '{override}' is not of the form --config.KEY=VALUE")
    dotted, raw = text[len("config."):].split("=", 1)
    if dotted == "modalities":
        _keep_modalities(config, raw)
        return
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"unknown config key '{'.'.join(parents[:i + 1])}' (from {override})")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"unknown config key '{dotted}' (from {override})")
    current = node[leaf]
    try:
        value = _parse_like(raw, current)
    except ValueError as e:
        raise ConfigError(f"config key '{dotted}': cannot use '{raw}' ({e})") from None
    with node.unlocked():
        node[leaf] = value


def _keep_modalities(config, raw: str) -> None:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    missing = [n for n in names if n not in config.modalities]
    if not names or missing:
        raise ConfigError(f"--config.modalities={raw}: name modalities of the config, comma-separated "
                          f"(it has: {', '.join(config.modalities.keys())})")
    kept = ml_collections.ConfigDict({n: config.modalities[n] for n in names})
    with config.unlocked():
        config.modalities = kept


def _parse_like(raw: str, current):
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ValueError("expected true or false")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, (tuple, list)):
        return type(current)(json.loads(raw))
    if isinstance(current, ml_collections.ConfigDict):
        raise ValueError("this key is a section, set its fields instead")
    return raw


# ----------------------------------------------------------------------------------------------
# The mesh: its shape from the config and the devices present.
# ----------------------------------------------------------------------------------------------

class MeshShape(tuple):
    """The (data, fsdp, tensor) sizes of the mesh, compared and unpacked as a plain tuple, and
    `.dcn`: how many positions of each axis lie across processes or TPU slices (mesh.dcn_data,
    mesh.dcn_fsdp; tensor parallelism stays within one). omni.parallel.make_mesh reads both."""

    def __new__(cls, sizes, dcn=(1, 1, 1)):
        shape = super().__new__(cls, sizes)
        shape.dcn = tuple(dcn)
        return shape


def resolve_mesh_shape(config, num_devices: int) -> MeshShape:
    """(data, fsdp, tensor) with one -1 replaced by the remaining devices; `.dcn` from
    mesh.dcn_data and mesh.dcn_fsdp, each dividing its axis."""
    sizes = [int(config.mesh.data), int(config.mesh.fsdp), int(config.mesh.tensor)]
    names = ["mesh.data", "mesh.fsdp", "mesh.tensor"]
    if sizes.count(-1) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    for name, size in zip(names, sizes):
        if size == 0 or size < -1:
            raise ConfigError(f"{name}={size}: mesh sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"mesh {'x'.join(map(str, sizes))}: {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    total = math.prod(sizes)
    if total > num_devices:
        raise ConfigError(
            f"mesh {'x'.join(map(str, sizes))} needs {total} devices but only {num_devices} are present")
    if total != num_devices:
        raise ConfigError(
            f"mesh {'x'.join(map(str, sizes))} uses {total} of the {num_devices} devices; use them all "
            "(set one axis to -1)")
    dcn = [config.mesh.get("dcn_data", 1), config.mesh.get("dcn_fsdp", 1)]
    for name, across, size in zip(("data", "fsdp"), dcn, sizes):
        if not isinstance(across, int) or across < 1 or size % across:
            raise ConfigError(f"mesh.dcn_{name}={across!r}: the part of mesh.{name}={size} across processes "
                              f"must be a whole number >= 1 that divides it")
    return MeshShape(sizes, (*dcn, 1))


def to_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def from_json_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
