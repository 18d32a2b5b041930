"""Which records hold which modality set: written once at build time, read without a pass over the
records and without an array of one entry per record in memory.

The build writes, beside each split's records:
  * `modalities-<split>.npz`: each record's modalities as bits over the modality names (`masks`,
    kept for tools that want them), and the small table `set_masks` / `set_starts`: the distinct
    masks in ascending order and where each one's records begin in the file below;
  * `records-by-set-<split>.npy`: every record index, grouped by mask and ascending within each
    group (int64, one per record).

A run then reads the table only. A set of the config that is one set of the data (the usual case:
the config names every modality the data holds) gets its records as a range of the .npy
(`RecordsOnDisk`): a lookup reads 8 bytes of the file, the host keeps no per-record array, and a
grain worker process receives the file's path, not a copy. Where several sets of the data train
as one (the config leaves out a modality some records hold), their slices are merged into one
sorted array, of that set's size. Either way a set's records are the same, in the same order, as
`np.flatnonzero(masks == mask)` gives, so the training order does not depend on how they were
found. A dataset built without these files (a Beam build, an older build) is read record by record
once, and the caller is told so (omni.data.mixture.record_sets).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from omni.data import mixture
from omni.errors import DataError

RECORDS_BY_SET = "records-by-set-{split}.npy"


def write_modality_index(version_dir, split: str, records, names) -> None:
    """Each record's modalities (bits over `names`) and the records of each set, at build time."""
    names = list(names)
    masks = np.fromiter((sum(1 << i for i, n in enumerate(names) if r.get(n) not in (None, "", b""))
                         for r in records), np.uint32)
    by_set = np.argsort(masks, kind="stable").astype(np.int64)  # stable: ascending within a set
    set_masks, set_starts = np.unique(masks[by_set], return_index=True)
    np.save(Path(version_dir) / RECORDS_BY_SET.format(split=split), by_set)
    with open(Path(version_dir) / mixture.MODALITY_INDEX.format(split=split), "wb") as f:
        np.savez(f, masks=masks, names=np.array(names), set_masks=set_masks, set_starts=set_starts.astype(np.int64))


class RecordsOnDisk:
    """Record indices [start, stop) of a records-by-set file, indexed like an array (an int, a
    slice or an array of positions) by reading just those entries from the file. Not a memory
    map: the kernel maps whole folios of a cached file around every page a lookup touches, and a
    thousand random lookups in a 152 MB set then held all 152 MB resident. Pickled as its path and
    bounds, so a grain worker process opens the file itself."""

    def __init__(self, path, start: int, stop: int):
        self.path, self.start, self.stop = str(path), int(start), int(stop)
        self._file = None
        self._data_offset = 0

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, positions):
        if isinstance(positions, slice):
            first, last, step = positions.indices(len(self))
            return self._read_range(first, max(first, last))[::step]
        positions = np.asarray(positions)
        if positions.ndim == 0:
            return self._read_range(int(positions), int(positions) + 1)[0]
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions outside [0, {len(self)}) of {self.path}")
        return np.array([self._read_range(int(p), int(p) + 1)[0] for p in positions.reshape(-1)],
                        np.int64).reshape(positions.shape)

    def _read_range(self, first: int, last: int) -> np.ndarray:
        if self._file is None:
            self._file = open(self.path, "rb")
            version = np.lib.format.read_magic(self._file)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(self._file)
            if dtype != np.dtype("<i8") or len(shape) != 1:
                raise DataError(f"{self.path}: holds {dtype}{list(shape)}, not one int64 per record")
            self._data_offset = self._file.tell()
        count = last - first
        data = os.pread(self._file.fileno(), 8 * count, self._data_offset + 8 * (self.start + first))
        if len(data) != 8 * count:
            raise DataError(f"{self.path}: ends before entry {self.start + last}; rebuild the dataset")
        return np.frombuffer(data, "<i8")

    def __reduce__(self):
        return RecordsOnDisk, (self.path, self.start, self.stop)


def records_of_sets(source, configured) -> dict[int, object]:
    """{mask over `configured`: that set's record indices, ascending} for every set the training
    split holds (mask 0: records holding none of the configured modalities)."""
    table = _set_table(source)
    if table is None:
        masks = mixture.record_sets(source, configured)
        return {int(m): np.flatnonzero(masks == m) for m in np.unique(masks)}
    path, names, ranges = table
    merged: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for build_mask, start, stop in ranges:
        mask = sum(1 << bit for bit, name in enumerate(configured)
                   if name in names and build_mask >> names.index(name) & 1)
        merged[mask].append((start, stop))
    out = {}
    for mask, spans in merged.items():
        if len(spans) == 1:
            out[mask] = RecordsOnDisk(path, *spans[0])
        else:  # several sets of the data train as one: merged, in record order
            out[mask] = np.sort(np.concatenate([RecordsOnDisk(path, start, stop)[:] for start, stop in spans]))
    return out


def set_counts(records: dict[int, object], configured) -> dict[tuple[str, ...], int]:
    """{set (modality names in the config's order): its number of records}."""
    return {tuple(n for i, n in enumerate(configured) if mask >> i & 1): len(indices)
            for mask, indices in sorted(records.items())}


def _set_table(source):
    """(records-by-set path, the build's modality names, [(mask, start, stop)]), or None for a
    dataset built without them."""
    index_path = Path(source.path) / mixture.MODALITY_INDEX.format(split=source.split)
    by_set_path = Path(source.path) / RECORDS_BY_SET.format(split=source.split)
    if not (index_path.exists() and by_set_path.exists()):
        return None
    with np.load(index_path) as index:  # an npz reads only the arrays asked for
        if "set_masks" not in index.files:
            return None
        names = [str(n) for n in index["names"]]
        set_masks, set_starts = index["set_masks"], index["set_starts"]
    total = len(np.load(by_set_path, mmap_mode="r"))
    if total != len(source):
        raise DataError(f"{by_set_path}: {total} entries for {len(source)} records of split "
                        f"'{source.split}'; rebuild the dataset")
    stops = list(set_starts[1:]) + [total]
    return by_set_path, names, [(int(m), int(a), int(b)) for m, a, b in zip(set_masks, set_starts, stops)]
