"""The training order: which record sits at each global position, a pure function of the seed.

The example at global position k is record perm_e[k mod n] of epoch e = k // n, where perm_e is a
permutation seeded by (seed, e). Resuming at step s replays exactly what an uninterrupted run
would read, so a checkpoint needs only the step.

Grouped batches (`data.group_size` = k > 1): records that share a `group` (a speaker, say) come in
runs of k consecutive positions, so a batch holds several of them side by side. Their in-batch
contrastive negatives then share the group, and the loss cannot separate them by it: they are
hard negatives by construction, as wav2vec 2.0 draws its distractors from the same utterance so
that the speaker cannot tell them apart (Baevski et al. 2020). It trades one feature for another:
on the default dataset's spoken digits, with InfoNCE and runs of 8 a voice's clips, the digit was
found and the voice lost (docs/evaluation.md), and the default run finds both without grouping,
so the default config leaves it off. Records without a group stay single. A run can straddle two
batches; the batch is cut where it falls.
"""
from __future__ import annotations

import functools

import numpy as np

from omni.errors import DataError


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


class EpochOrder:
    """Global position -> record index, reshuffled every epoch from (seed, epoch); grouped into
    runs when group_size > 1 (with group_size <= 1, or no record in a group, the order is the plain
    permutation)."""

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

    @functools.lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, 0, epoch) if not self.stream else (self.seed, 0, epoch, self.stream))
        order = rng.permutation(self.n)
        if self.groups is None:
            return order
        return grouped_order(order, self.groups, self.group_size, rng)

    def __getitem__(self, position: int) -> int:
        return int(self.permutation(position // self.n)[position % self.n])


class SubsetOrder:
    """Position -> record index over a subset of the records (those of one modality set): the
    EpochOrder of the subset, on its own seed stream. `indices`: the subset's record indices."""

    def __init__(self, indices: np.ndarray, seed: int, stream: int, groups: np.ndarray | None = None,
                 group_size: int = 0):
        self.indices = np.asarray(indices)
        subset_groups = None if groups is None else np.asarray(groups)[self.indices]
        self.order = EpochOrder(len(self.indices), seed, subset_groups, group_size, stream=stream)

    def __getitem__(self, position: int) -> int:
        return int(self.indices[self.order[position]])
