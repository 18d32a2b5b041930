"""`omni data build MANIFEST.jsonl --out DIR`: a user's own files -> the omni dataset format.

Each line is a JSON object (interface.md): id, split, label, text, image / audio / video (paths
relative to the manifest's folder), smell ({"smiles": [...]} or {"names": [...]}, optional "weights"). Lines without `split` are assigned train/test by a stable hash of their id
(or line), so rebuilding never moves an example between splits. File contents are stored as they
are, after a check that they decode; a file that does not (truncated, empty, wrong format, no video
stream, an invalid SMILES) is dropped from its line with its path and reason.
A line that cannot be used at all is skipped and reported with its file:line and reason
(`--on-error raise` stops instead).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from omni.data.records import write_dataset
from omni.errors import ManifestError
from omni.modalities import registry


def known_fields() -> set[str]:
    """Fields a manifest line may hold: id, split, label and every registered modality."""
    return {"id", "split", "label", *registry.MODALITIES}


def stable_split(key: str, test_fraction: float) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
    return "test" if bucket < test_fraction else "train"


def json_lines(path: Path, error=ValueError, problems: list | None = None):
    """Yield ("file:line", object) for each non-blank line of a JSON-lines file. A line that is not
    UTF-8 or not a JSON object raises `error` naming the file and line, or, when a `problems`
    list is given, is recorded there and skipped."""
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(raw.decode("utf-8"))
            problem = None if isinstance(entry, dict) else f"{where}: each line must be a JSON object"
        except UnicodeDecodeError as e:
            problem = f"{where}: not UTF-8 ({e.reason} at byte {e.start})"
        except json.JSONDecodeError as e:
            problem = f"{where}: not valid JSON ({e.msg})"
        if problem is None:
            yield where, entry
        elif problems is None:
            raise error(problem)
        else:
            problems.append(problem)


class _LineError(Exception):
    """One manifest line that cannot be used (skipped or fatal, per on_error)."""


def _record(where: str, entry: dict, root: Path, log, strict: bool, dropped_fields: list) -> dict:
    """One manifest object -> a record; raises _LineError when no usable modality is left. Each
    modality's own `prepare` reads and checks its field (a file that cannot be decoded is
    dropped from the line with its path and reason)."""
    known = known_fields()
    unknown = set(entry) - known
    if unknown:
        log(f"{where}: unknown field(s) {', '.join(sorted(unknown))} ignored "
            f"(known: {', '.join(sorted(known))})")
    number = where.rsplit(":", 1)[1]
    record = {"id": str(entry.get("id", f"line-{number}")), "label": str(entry.get("label", ""))}
    sources, dropped = [], []
    for name, modality in registry.MODALITIES.items():
        if name not in entry:
            continue
        value = entry[name]
        try:
            record[name] = modality.prepare(value, root)
        except ValueError as e:
            what = f"{name} file {root / value}" if modality.file_field and isinstance(value, str) else name
            dropped.append(f"{what}: {e}")
            continue
        if modality.file_field:
            sources.append(str(root / value))
    held = [name for name in registry.MODALITIES if name in record]
    if dropped:
        dropped_fields.extend(dropped)
        if not held or strict:
            raise _LineError(f"{where}: {'; '.join(dropped)}")
        log(f"{where}: {'; '.join(dropped)}; the rest of the line is kept")
    if not held:
        raise _LineError(f"{where}: the line holds no modality (give at least one of "
                         f"{', '.join(registry.MODALITIES)})")
    record["source"] = ", ".join(sources) or where
    return record


def read_manifest(path: str | Path, test_fraction: float = 0.1, on_error: str = "skip",
                  log=None) -> tuple[dict[str, list[dict]], list[str], list[str]]:
    """Parse and check a manifest -> (split -> records, skipped lines, dropped files). A line that
    cannot be used (not UTF-8, not JSON, no usable modality, a duplicate id) is skipped and listed
    with its file:line and reason; a file that is missing, empty or does not decode drops that
    field of its line (listed with its path and reason). With on_error == "raise" either stops
    the build with a ManifestError. Unknown fields are ignored with a warning."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    splits: dict[str, list[dict]] = {}
    problems: list[str] = []
    dropped: list[str] = []
    seen_ids = set()
    for where, entry in json_lines(path, ManifestError, problems if on_error == "skip" else None):
        try:
            record = _record(where, entry, path.parent, log, on_error == "raise", dropped)
            if record["id"] in seen_ids:
                raise _LineError(f"{where}: duplicate id '{record['id']}'")
        except _LineError as e:
            if on_error == "raise":
                raise ManifestError(str(e)) from None
            problems.append(str(e))
            continue
        seen_ids.add(record["id"])
        split = entry.get("split") or stable_split(record["id"], test_fraction)
        splits.setdefault(str(split), []).append(record)
    for problem in problems:
        log(f"skipped line: {problem}")
    if not splits:
        raise ManifestError(f"{path}: the manifest has no usable records")
    return splits, problems, dropped


def build(manifest: str | Path, out_dir: str | Path, test_fraction: float = 0.1,
          on_error: str = "skip") -> dict:
    splits, problems, dropped = read_manifest(manifest, test_fraction, on_error)
    write_dataset(splits, out_dir)
    return {"splits": {split: len(records) for split, records in splits.items()},
            "skipped_lines": len(problems), "dropped_fields": len(dropped)}
