"""What `omni data build SOURCE...` reads: arguments -> an ordered list of work items.

A SOURCE is a manifest (.jsonl, .json) or a WebDataset shard (.tar, .tar.gz, .tgz), named by a
path, a glob (`shards/*.tar`) or a brace range (`shards/{00000..01999}.tar`), on any filesystem
etils.epath reads (local; gs:// and others when their packages are installed). Each tar shard is
one work item and each block of manifest lines another; the item's index fixes where its records
go in their split, so the order of the records never depends on which worker read them.
"""
from __future__ import annotations

import glob as globbing
from dataclasses import dataclass
from typing import Iterator

import braceexpand
from etils import epath

from omni.data.samples import Options, Outcome
from omni.data.sources import manifest, webdataset
from omni.errors import ManifestError

MANIFEST_SUFFIXES = (".jsonl", ".json")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class WorkItem:
    """One unit of work for a Beam worker: a tar shard, or bytes [start, end) of a manifest."""
    index: int
    kind: str  # "tar" or "manifest"
    path: str
    first_line: int = 1
    start: int = 0
    end: int = -1

    def name(self) -> str:
        return self.path if self.kind == "tar" else f"{self.path}:{self.first_line}"


def _paths(source: str) -> list[str]:
    found = []
    for pattern in braceexpand.braceexpand(source):
        if globbing.has_magic(pattern):
            magic = next(c for c in pattern if c in "*?[")
            head, _, tail = pattern.partition(magic)
            folder, _, prefix = head.rpartition("/")  # glob below the last folder without magic
            matches = sorted(str(p) for p in epath.Path(folder or ".").glob(prefix + magic + tail))
            if not matches:
                raise ManifestError(f"{source}: no file matches {pattern}")
            found += matches
        elif not epath.Path(pattern).exists():
            raise ManifestError(f"{pattern}: not found" + (f" (from {source})" if pattern != source else ""))
        else:
            found.append(pattern)
    return found


def work_items(sources: list[str], block_lines: int = manifest.BLOCK_LINES) -> list[WorkItem]:
    """Every source expanded, in the order given (a glob's matches sorted), as work items."""
    items: list[WorkItem] = []
    for source in sources:
        for path in _paths(source):
            lower = path.lower()
            if lower.endswith(TAR_SUFFIXES):
                items.append(WorkItem(len(items), "tar", path))
            elif lower.endswith(MANIFEST_SUFFIXES):
                for first, start, end in manifest.blocks(path, block_lines):
                    items.append(WorkItem(len(items), "manifest", path, first, start, end))
            else:
                raise ManifestError(f"{path}: not a manifest (.jsonl) or a WebDataset shard (.tar)")
    if not items:
        raise ManifestError(f"{' '.join(sources)}: the sources hold nothing to build")
    return items


def read(item: WorkItem, options: Options) -> Iterator[Outcome]:
    """The outcomes of one work item's samples, in order."""
    if item.kind == "tar":
        return webdataset.read_shard(item.path, options)
    return manifest.read_block(item.path, item.first_line, item.start, item.end, options)
