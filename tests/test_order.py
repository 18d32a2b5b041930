"""The training order (omni.data.order): the plain permutation unchanged without groups, and with
`data.group_size` every group's records in runs of that size, still a permutation of the split,
the same for the same (seed, epoch)."""
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from omni.data.order import EpochOrder
from omni.data.records import group_ids, open_split, write_dataset


def same_group_neighbours(order, groups) -> int:
    g = groups[order]
    return int(np.sum((g[1:] == g[:-1]) & (g[1:] >= 0)))


def test_without_groups_the_order_is_the_seeded_permutation():
    groups = np.arange(50) % 3
    for group_size in (0, 1):
        order = EpochOrder(50, 7, groups, group_size)
        for epoch in (0, 3):
            want = np.random.default_rng((7, 0, epoch)).permutation(50)
            np.testing.assert_array_equal(order.permutation(epoch), want)


def test_groups_come_in_runs_of_the_group_size():
    rng = np.random.default_rng(0)
    groups = np.where(rng.random(600) < 0.2, rng.integers(0, 6, 600), -1)  # 20% of records in 6 groups
    plain, grouped = EpochOrder(600, 1), EpochOrder(600, 1, groups, 8)
    order = grouped.permutation(0)
    assert sorted(order) == list(range(600))
    # Cut into runs of 8, group g's m records give at least m - ceil(m / 8) same-group neighbours.
    sizes = np.bincount(groups[groups >= 0])
    least = sum(m - math.ceil(m / 8) for m in sizes)
    assert same_group_neighbours(order, groups) >= least
    assert same_group_neighbours(plain.permutation(0), groups) < least / 4  # shuffled, they rarely meet
    # Runs hold one group's records in their shuffled order: grouped records and singles both move.
    np.testing.assert_array_equal(order, EpochOrder(600, 1, groups, 8).permutation(0))
    assert not np.array_equal(order, grouped.permutation(1))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 4), min_size=1, max_size=80), st.integers(2, 9), st.integers(0, 3))
def test_grouped_order_is_a_permutation_with_its_runs(group_list, group_size, seed):
    groups = np.array(group_list, np.int64)
    order = EpochOrder(len(groups), seed, groups, group_size).permutation(0)
    assert sorted(order) == list(range(len(groups)))
    sizes = np.bincount(groups[groups >= 0], minlength=5)
    assert same_group_neighbours(order, groups) >= sum(m - math.ceil(m / group_size) for m in sizes)


def test_the_group_index_of_a_written_dataset_follows_its_read_order(tmp_path):
    """TFDS's writer shuffles records by their keys: the index must list the groups in the order
    the split reads back, not in the order the records were handed in."""
    records = [{"id": f"r{i}", "text": f"caption {i}", "group": f"speaker {i % 3}" if i % 2 else ""}
               for i in range(40)]
    write_dataset({"train": records}, tmp_path)
    split = open_split(tmp_path, "train")
    read_order = [split[i]["id"] for i in range(len(split))]
    assert read_order != [r["id"] for r in records]  # the writer did reorder them
    group_of = {r["id"]: r.get("group", "") for r in records}
    np.testing.assert_array_equal(split.groups(), group_ids(group_of[i] for i in read_order))
