"""`omni data build MANIFEST.jsonl --out DIR`: a user's own files -> the omni dataset format.

Each line is a JSON object (interface.md): id, split, label, text, image (a path relative to the
manifest's folder). Lines without `split` are assigned train/test by a stable hash of their id
(or line), so rebuilding never moves an example between splits. File contents are stored as they
are; decoding happens at load time, where a corrupt file is skipped and counted, not fatal.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from omni.data.records import write_dataset

KNOWN_FIELDS = {"id", "split", "label", "text", "image", "audio", "video", "smell"}
SUPPORTED_MODALITIES = ("text", "image")


class ManifestError(ValueError):
    pass


def stable_split(key: str, test_fraction: float) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
    return "test" if bucket < test_fraction else "train"


def json_lines(path: Path, error=ValueError):
    """Yield ("file:line", object) for each non-blank line of a JSON-lines file; a line that is
    not a JSON object raises `error` naming the file and line."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(entry, dict):
            raise error(f"{where}: each line must be a JSON object")
        yield where, entry


def read_manifest(path: str | Path, test_fraction: float = 0.1, log=None) -> dict[str, list[dict]]:
    """Parse and check a manifest; returns split -> records. Errors name the file and line."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    root = path.parent
    splits: dict[str, list[dict]] = {}
    seen_ids = set()
    for where, entry in json_lines(path, ManifestError):
        number = int(where.rsplit(":", 1)[1])
        unknown = set(entry) - KNOWN_FIELDS
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} "
                                f"(known: {', '.join(sorted(KNOWN_FIELDS))})")
        later = [m for m in ("audio", "video", "smell") if m in entry]
        if later:
            log(f"{where}: field(s) {', '.join(later)} are not supported by this version yet; ignored")
        if not any(m in entry for m in SUPPORTED_MODALITIES):
            raise ManifestError(f"{where}: the line holds no modality (give at least one of "
                                f"{', '.join(SUPPORTED_MODALITIES)})")
        record_id = str(entry.get("id", f"line-{number}"))
        if record_id in seen_ids:
            raise ManifestError(f"{where}: duplicate id '{record_id}'")
        seen_ids.add(record_id)
        record = {"id": record_id, "label": str(entry.get("label", "")), "text": "", "image": b""}
        sources = []
        if "text" in entry:
            if not isinstance(entry["text"], str):
                raise ManifestError(f"{where}: 'text' must be a string")
            record["text"] = entry["text"]
        if "image" in entry:
            image_path = root / entry["image"]
            if not image_path.is_file():
                raise ManifestError(f"{where}: image file {image_path} does not exist")
            record["image"] = image_path.read_bytes()
            sources.append(str(image_path))
        record["source"] = ", ".join(sources) or where
        split = entry.get("split") or stable_split(record_id, test_fraction)
        splits.setdefault(str(split), []).append(record)
    if not splits:
        raise ManifestError(f"{path}: the manifest has no records")
    return splits


def build(manifest: str | Path, out_dir: str | Path, test_fraction: float = 0.1) -> dict[str, int]:
    splits = read_manifest(manifest, test_fraction)
    write_dataset(splits, out_dir)
    return {split: len(records) for split, records in splits.items()}
