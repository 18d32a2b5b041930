"""Which records hold which modality set (omni.data.set_index): read from the build's index as
ranges of a file read entry by entry, the same records in the same order as a pass over the records gives, and
no per-record array on the host or in a pickled worker's copy."""
import json
import pickle
import subprocess
import sys

import numpy as np

from omni.data import mixture, set_index
from omni.data.records import open_split, write_dataset
from tests.conftest import REPO


def small_split(tmp_path):
    records = [{"id": f"r{i}", "text": f"caption {i}"} for i in range(30)]
    for i in (3, 7, 8, 21):
        records[i]["smell"] = '{"smiles": ["CCO"]}'
    for i in (2, 7, 15):
        records[i]["audio"] = b"RIFF-not-decoded-here"
    records[11].pop("text")
    records[11]["smell"] = '{"smiles": ["CCO"]}'
    write_dataset({"train": records}, tmp_path)
    return open_split(tmp_path, "train")


def reference(split, configured) -> dict:
    """Each set's records by reading every record: np.flatnonzero over the per-record masks."""
    held = [mixture.mask_of(mixture.held(split[i], configured), configured) for i in range(len(split))]
    masks = np.array(held)
    return {int(m): np.flatnonzero(masks == m) for m in np.unique(masks)}


def test_each_set_is_a_range_of_the_index_with_the_records_a_pass_finds(tmp_path):
    split = small_split(tmp_path)
    configured = ["text", "audio", "smell"]
    sets = set_index.records_of_sets(split, configured)
    want = reference(split, configured)
    assert sorted(sets) == sorted(want)
    for mask, indices in sets.items():
        assert isinstance(indices, set_index.RecordsOnDisk), mask
        np.testing.assert_array_equal(indices[:], want[mask])
        np.testing.assert_array_equal(indices[np.array([len(indices) - 1, 0])], want[mask][[-1, 0]])
        copy = pickle.loads(pickle.dumps(indices))  # what a grain worker receives: the path
        assert len(pickle.dumps(indices)) < 400 and np.array_equal(copy[:], indices[:])
    counts = set_index.set_counts(sets, configured)
    assert counts[("text",)] == 30 - 4 - 3 + 1 - 1 and counts[("smell",)] == 1


def test_a_config_without_a_held_modality_merges_its_sets_in_record_order(tmp_path):
    split = small_split(tmp_path)
    configured = ["text", "smell"]  # audio+text records train as text alone
    sets = set_index.records_of_sets(split, configured)
    want = reference(split, configured)
    assert sorted(sets) == sorted(want)
    for mask in want:
        np.testing.assert_array_equal(np.asarray(sets[mask][:]), want[mask])
    (split.path / set_index.RECORDS_BY_SET.format(split="train")).unlink()  # an older build: read
    fallback = set_index.records_of_sets(split, configured)
    for mask in want:
        np.testing.assert_array_equal(fallback[mask], want[mask])


LOOKUPS = """
import json, resource, sys
import numpy as np
from omni.data.order import SubsetOrder
from omni.data.set_index import RecordsOnDisk
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
before = rss_mb()
order = SubsetOrder(RecordsOnDisk(sys.argv[1], 1000, int(sys.argv[2])), seed=0, stream=7)
got = [order[k] for k in range(1000)]
print(json.dumps({"grew_mb": rss_mb() - before, "distinct": len(set(got)), "low": min(got)}))
"""


def test_reading_a_set_of_twenty_million_records_keeps_no_array_of_them(tmp_path):
    """A set's order over 2e7 records (160 MB of int64 on disk) reads 1,000 positions while the
    process grows by a few MB: only the pages it touched."""
    n = 20_000_000
    path = tmp_path / "records-by-set-train.npy"
    np.save(path, np.arange(n, dtype=np.int64))
    out = subprocess.run([sys.executable, "-c", LOOKUPS, str(path), str(n)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["distinct"] == 1000 and result["low"] >= 1000
    assert result["grew_mb"] < 16, result  # a materialised copy of the set would be 152 MB
