"""The training order (omni.data.order): a keyed index shuffle that is a bijection of [0, n) for
every n, differs by seed, epoch and stream, spreads records evenly and holds O(1) memory whatever
n is; with `data.group_size` every group's records in runs of that size, still a permutation of
the split, the same for the same (seed, epoch)."""
import math
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni.data.order import EpochOrder, IndexShuffle, SubsetOrder
from omni.data.records import group_ids, open_split, write_dataset


def same_group_neighbours(order, groups) -> int:
    g = groups[order]
    return int(np.sum((g[1:] == g[:-1]) & (g[1:] >= 0)))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 1023, 1024, 1025, 4099])
def test_the_shuffle_is_a_bijection_of_the_range(n):
    """Powers of 4 (the Feistel domain itself), one past them (the most cycle-walking), primes, 1."""
    for key in [(0, 0, 0), (7, 3, 2)]:
        shuffled = IndexShuffle(n, key)(np.arange(n))
        np.testing.assert_array_equal(np.sort(shuffled), np.arange(n))
        if n > 5:
            assert not np.array_equal(shuffled, np.arange(n))  # and it moved them


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 100_000), st.integers(0, 2 ** 32 - 1), st.integers(0, 50), st.integers(0, 9))
def test_any_order_is_a_deterministic_permutation_of_its_records(n, seed, stream, epoch):
    """Fuzzed over n up to 10^5: one epoch of EpochOrder reads every record once, and a second
    order built from the same (seed, stream) reads the same ones (as another process would)."""
    positions = np.arange(epoch * n, (epoch + 1) * n)
    read = EpochOrder(n, seed, stream=stream).records(positions)
    np.testing.assert_array_equal(np.sort(read), np.arange(n))
    np.testing.assert_array_equal(EpochOrder(n, seed, stream=stream).records(positions), read)


def test_seeds_epochs_and_streams_give_different_orders():
    orders = {(seed, stream, epoch): tuple(EpochOrder(200, seed, stream=stream).permutation(epoch))
              for seed in (0, 1) for stream in (0, 5) for epoch in (0, 1, 2)}
    assert len(set(orders.values())) == len(orders)
    again = EpochOrder(200, 1, stream=5)
    assert tuple(again.permutation(2)) == orders[(1, 5, 2)]  # a pure function of its key


def test_a_position_reads_its_epochs_record_alone_or_in_a_batch():
    """order[k], order.records(...) across an epoch boundary and permutation(epoch) agree."""
    order = EpochOrder(37, 3, stream=2)
    positions = np.arange(30, 80)  # epochs 0, 1 and 2
    whole = np.concatenate([order.permutation(e) for e in range(3)])
    np.testing.assert_array_equal(order.records(positions), whole[positions])
    assert [order[int(k)] for k in positions] == whole[positions].tolist()
    subset = SubsetOrder(np.arange(100, 137), 3, stream=2)
    np.testing.assert_array_equal(subset.records(positions), 100 + whole[positions])
    assert subset[45] == 100 + whole[45]
    with pytest.raises(IndexError):
        order.records([-1])


def test_the_order_of_five_billion_records_holds_no_per_record_memory():
    """rng.permutation(5e9) would allocate 40 GB; the shuffle maps positions where they are."""
    n = 5_000_000_000
    order = EpochOrder(n, 11, stream=4)
    positions = np.r_[np.arange(1000), n - 1000 + np.arange(1000), 7 * n + np.arange(1000)]
    tracemalloc.start()
    started = time.perf_counter()
    records = order.records(positions)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20 and seconds < 5, (peak, seconds)
    assert records.min() >= 0 and records.max() < n
    assert len(np.unique(records[:2000])) == 2000  # one epoch's positions read distinct records
    assert records.max() > n // 2  # spread over the range, not crowded at its start


def test_records_land_evenly_and_neighbours_do_not_stay_neighbours():
    """Over 2,000 seeds, where record 0 lands among n = 10 positions passes a chi-square test
    (df 9, p = 0.001: 27.9), and positions k, k+1 hold records i, i+1 about (n-1)/n times per
    order, as in a uniform permutation; a rotation by the seed would give n-1."""
    n, seeds = 10, 2000
    orders = np.array([EpochOrder(n, seed).permutation(0) for seed in range(seeds)])
    landed = np.bincount(np.argmax(orders == 0, axis=1), minlength=n)
    expected = seeds / n
    assert ((landed - expected) ** 2 / expected).sum() < 27.9, landed
    following = np.sum(np.diff(orders, axis=1) == 1) / seeds
    assert abs(following - (n - 1) / n) < 0.1, following


def test_without_groups_the_order_is_the_keyed_shuffle():
    groups = np.arange(50) % 3
    for group_size, group_ids in ((0, groups), (1, groups), (8, np.full(50, -1))):
        order = EpochOrder(50, 7, group_ids, group_size)
        for epoch in (0, 3):
            want = IndexShuffle(50, (7, 0, epoch))(np.arange(50))
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


def test_grouped_orders_read_in_turn_lay_out_each_epoch_once(monkeypatch):
    """The pipeline reads every set's order in turn each step: a grouped order must keep its own
    epoch's layout (O(n) to build), not lose it to the next set's order."""
    from omni.data import order as order_module
    built = []
    real = order_module.grouped_order
    monkeypatch.setattr(order_module, "grouped_order", lambda *a: built.append(1) or real(*a))
    groups = np.arange(60) % 4
    orders = [EpochOrder(60, 0, groups, 3, stream=s) for s in range(5)]
    for step in range(15):  # positions 0..89: epochs 0 and 1
        for order in orders:
            order.records(np.arange(step * 6, step * 6 + 6))
    assert len(built) == 5 * 2  # each order, each epoch once
