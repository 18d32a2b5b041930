"""JSON-lines manifests as a build source, cut into blocks of lines that Beam workers read alone.

The launching process only counts lines (one streaming pass, nothing kept but a byte offset per
block), so a manifest of any length becomes work for many workers while each line keeps its
number: ids of lines without one (`line-N`) and messages (`manifest.jsonl:12: ...`) use it.
Paths inside a line are relative to the manifest's folder.
"""
from __future__ import annotations

import json
from typing import Iterator

from etils import epath

from omni.data import rejects as R
from omni.data.samples import Options, Outcome, manifest_sample

BLOCK_LINES = 2_000  # lines per work item (enough items to keep workers busy); a duplicate id is caught within its block


def json_lines(path, error=ValueError, problems: list | None = None):
    """Yield ("file:line", object) for each non-blank line of a JSON-lines file. A line that is not
    UTF-8 or not a JSON object raises `error` naming the file and line, or, when a `problems`
    list is given, is recorded there and skipped. (Small files: pair lists for evaluation.)"""
    for number, raw in enumerate(epath.Path(path).read_bytes().splitlines(), start=1):
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


def blocks(path: str, block_lines: int = BLOCK_LINES) -> list[tuple[int, int, int]]:
    """(first line number, start byte, end byte) of each block of `block_lines` lines."""
    found, start, offset, number = [], 0, 0, 0
    with epath.Path(path).open("rb") as f:
        for line in f:
            if number and number % block_lines == 0:
                found.append((number - block_lines + 1, start, offset))
                start = offset
            offset += len(line)
            number += 1
    if number:
        found.append((number - (number - 1) % block_lines, start, offset))
    return found


def read_block(path: str, first_line: int, start: int, end: int, options: Options) -> Iterator[Outcome]:
    """Outcomes of the non-blank lines in bytes [start, end) of a manifest, in order."""
    root = epath.Path(path).parent
    seen: dict[str, int] = {}
    with epath.Path(path).open("rb") as f:
        f.seek(start)
        offset, number = start, first_line
        while offset < end:
            raw = f.readline()
            if not raw:
                break
            offset += len(raw)
            if raw.strip():
                outcome = manifest_sample(raw.rstrip(b"\r\n"), path, number, root, options)
                if outcome.record is not None:
                    key = outcome.record["id"]
                    if key in seen:
                        outcome = Outcome(rejects=[*outcome.rejects, R.Reject(
                            f"{path}:{number}", key, R.DUPLICATE_ID,
                            f"duplicate id '{key}' (first on line {seen[key]})")])
                    else:
                        seen[key] = number
                yield outcome
            number += 1
