"""The training order: which record sits at each global position, a pure function of the seed.

The example at global position k is record shuffle_e(k mod n) of epoch e = k // n, where shuffle_e
is a bijection of [0, n) keyed by (seed, stream, e). Resuming at step s replays exactly what an
uninterrupted run would read, so a checkpoint needs only the step.

The shuffle is a Feistel network (`IndexShuffle`), not a drawn permutation: position k maps to its
record in O(1) time and memory, computed when asked, so a host holds nothing per record for the
order whatever the size of the split (`rng.permutation(n)` held 40 GB per host at 5 billion
records). A Feistel network with any round function is a bijection of the bit strings it works on;
cycle-walking restricts it to [0, n) (below).

Grouped batches (`data.group_size` = k > 1): records that share a `group` (a speaker, say) come in
runs of k consecutive positions, so a batch holds several of them side by side. Their in-batch
contrastive negatives then share the group, and the loss cannot separate them by it: they are
hard negatives by construction, as wav2vec 2.0 draws its distractors from the same utterance so
that the speaker cannot tell them apart (Baevski et al. 2020). It trades one feature for another:
on the default dataset's spoken digits, with InfoNCE and runs of 8 a voice's clips, the digit was
found and the voice lost (docs/evaluation.md), and the default run finds both without grouping,
so the default config leaves it off. Records without a group stay single. A run can straddle two
batches; the batch is cut where it falls. A grouped order starts from the same shuffle, but laying
runs end to end needs every record's group (already an O(n) array), so it builds one epoch's
layout at a time, O(n) like its input; the ungrouped order, the default, holds none.
"""
from __future__ import annotations

import numpy as np

from omni.errors import DataError

ROUNDS = 8  # Luby-Rackoff: 4 make a pseudo-random permutation; 8 mix small domains well too
_SPLITMIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every input bit flips about half the output bits (uint64, wraps)."""
    z = (z ^ (z >> np.uint64(30))) * _SPLITMIX[0]
    z = (z ^ (z >> np.uint64(27))) * _SPLITMIX[1]
    return z ^ (z >> np.uint64(31))


class IndexShuffle:
    """A pseudo-random bijection of [0, n), keyed by a tuple of non-negative ints, that maps any
    batch of indices at once in O(1) memory per index.

    A balanced Feistel network permutes [0, 4**h), the smallest power of 4 that holds n, cut into
    two h-bit halves (left, right): each round sets (left, right) = (right, left ^ F(right)), which
    can be undone whatever F is, so every round and their chain is a bijection. F is SplitMix64's
    mixer of the right half xor a round key drawn from the key by numpy's SeedSequence. An output
    at or above n is encrypted again (cycle-walking) until it lands in [0, n): the walk follows x's
    cycle of the bijection, which returns into [0, n), so the result is a bijection of [0, n).
    As 4**h <= 4n, a walk takes at most 4 steps on average. (Feistel networks reach only the even
    permutations of [0, 4**h): a training order needs its records spread evenly, not all n!.)"""

    def __init__(self, n: int, key: tuple[int, ...]):
        if n < 1:
            raise ValueError(f"an index shuffle needs n >= 1, got {n}")
        self.n = int(n)
        self.half = max(1, (int(n - 1).bit_length() + 1) // 2)  # 4**half >= n
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = np.random.SeedSequence(key).generate_state(ROUNDS, np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half)
        left, right = x >> shift, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_mix64(right ^ key) & self.mask)
        return (left << shift) | right

    def __call__(self, indices) -> np.ndarray:
        """shuffle(i) for every i in `indices` (ints in [0, n)), as int64 of the same shape."""
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n):
            raise IndexError(f"indices must lie in [0, {self.n}), got [{indices.min()}, {indices.max()}]")
        out = self._encrypt(indices.astype(np.uint64).ravel())
        walking = np.flatnonzero(out >= self.n)
        while walking.size:
            out[walking] = self._encrypt(out[walking])
            walking = walking[out[walking] >= self.n]
        return out.astype(np.int64).reshape(indices.shape)


def grouped_order(order: np.ndarray, groups: np.ndarray, group_size: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Regroup a shuffled `order` of record indices: each group's records (in their shuffled
    order) are cut into runs of `group_size`; the runs and the ungrouped records are shuffled as
    units by `rng`, then laid end to end. groups[i] is record i's group id, -1 for none."""
    in_order = groups[order]
    singles = order[in_order < 0]
    members = order[in_order >= 0]
    if len(members) == 0:
        return order
    members = members[np.argsort(groups[members], kind="stable")]  # by group, shuffled within
    member_groups = groups[members]
    group_start = np.r_[True, member_groups[1:] != member_groups[:-1]]
    first_of_group = np.maximum.accumulate(np.where(group_start, np.arange(len(members)), 0))
    run_start = (np.arange(len(members)) - first_of_group) % group_size == 0
    runs = np.cumsum(run_start) - 1
    num_runs = int(runs[-1]) + 1
    unit = np.concatenate([runs, num_runs + np.arange(len(singles))])
    position_of_unit = rng.permutation(num_runs + len(singles))
    return np.concatenate([members, singles])[np.argsort(position_of_unit[unit], kind="stable")]


def _latest(cache: dict, epoch: int, make, keep: int = 2):
    """cache[epoch], made by make() when missing; holds the `keep` epochs used last (a batch reads
    one epoch, or two at a boundary)."""
    if epoch not in cache:
        while len(cache) >= keep:
            del cache[next(iter(cache))]
        cache[epoch] = make()
    return cache[epoch]


class EpochOrder:
    """Global position -> record index, reshuffled every epoch from (seed, stream, epoch); grouped
    into runs when group_size > 1 (with group_size <= 1, or no record in a group, the order is the
    plain shuffle, which holds O(1) memory)."""

    def __init__(self, num_records: int, seed: int, groups: np.ndarray | None = None, group_size: int = 0,
                 stream: int = 0):
        """stream: a separate order for the same seed (one per modality set), 0 = the plain order."""
        if num_records == 0:
            raise DataError("the training split is empty")
        if group_size > 1 and (groups is None or len(groups) != num_records):
            raise DataError(f"data.group_size={group_size} needs one group id per record "
                            f"({num_records}), got {None if groups is None else len(groups)}")
        self.n = num_records
        self.seed = seed
        grouped = group_size > 1 and bool(np.any(np.asarray(groups) >= 0))
        self.groups = np.asarray(groups) if grouped else None  # no group at all: the plain order
        self.group_size = group_size
        self.stream = stream
        # Per order, not per class: the sets' orders are read in turn and must not evict each other.
        self._shuffles: dict[int, IndexShuffle] = {}
        self._layouts: dict[int, np.ndarray] = {}

    def shuffle(self, epoch: int) -> IndexShuffle:
        """Epoch `epoch`'s bijection of [0, n): position within the epoch -> record (ungrouped)."""
        return _latest(self._shuffles, epoch, lambda: IndexShuffle(self.n, (self.seed, self.stream, epoch)))

    def _grouped(self, epoch: int) -> np.ndarray:
        """One epoch of a grouped order, laid out whole (O(n), as the group ids it needs are)."""
        def layout():
            rng = np.random.default_rng((self.seed, self.stream, epoch, 1))  # the runs' order
            return grouped_order(self.shuffle(epoch)(np.arange(self.n)), self.groups, self.group_size, rng)
        return _latest(self._layouts, epoch, layout)

    def records(self, positions) -> np.ndarray:
        """The record index at each global position in `positions` (ints >= 0), as int64."""
        positions = np.asarray(positions, np.int64)
        if positions.size and positions.min() < 0:
            raise IndexError(f"positions must be >= 0, got {positions.min()}")
        epochs, within = np.divmod(positions, self.n)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs).tolist():  # a batch spans one epoch, or two at a boundary
            at = epochs == epoch
            out[at] = (self._grouped(epoch)[within[at]] if self.groups is not None
                       else self.shuffle(epoch)(within[at]))
        return out

    def permutation(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s whole order, n record indices: for tests and inspection, O(n)."""
        return self.records(epoch * self.n + np.arange(self.n))

    def __getitem__(self, position: int) -> int:
        if self.groups is not None or position < 0:
            return int(self.records(np.array([position]))[0])
        epoch, within = divmod(int(position), self.n)
        return int(self.shuffle(epoch)(np.array([within]))[0])


class SubsetOrder:
    """Position -> record index over a subset of the records (those of one modality set): the
    EpochOrder of the subset, on its own seed stream. `indices`: the subset's record indices (an
    array or anything indexed like one, such as a range of a file read on demand)."""

    def __init__(self, indices: np.ndarray, seed: int, stream: int, groups: np.ndarray | None = None,
                 group_size: int = 0):
        self.indices = indices  # an array, or omni.data.set_index.RecordsOnDisk: never copied whole
        subset_groups = None if groups is None else np.asarray(groups)[np.asarray(indices[:])]
        self.order = EpochOrder(len(self.indices), seed, subset_groups, group_size, stream=stream)

    def records(self, positions) -> np.ndarray:
        """The record index (into the whole split) at each position in `positions`."""
        return self.indices[self.order.records(positions)].astype(np.int64)

    def __getitem__(self, position: int) -> int:
        return int(self.indices[self.order[position]])
