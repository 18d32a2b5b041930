"""WebDataset tar shards as a build source: members that share a key are one sample.

Read with the `webdataset` library's tar iterator, member by member, so a shard of any size
streams through a worker. A shard that ends mid-member (a cut upload) rejects the sample being
read as `truncated tar` and keeps the samples before it; a shard with no members is rejected as
`empty shard`. Compressed shards (.tar.gz) are read the same way.
"""
from __future__ import annotations

import tarfile
import zlib
from typing import Iterator

from etils import epath
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from omni.data import rejects as R
from omni.data.samples import Options, Outcome, tar_sample


def _members(stream) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) of each file in a tar stream, in order."""
    for item in tar_file_iterator(stream):
        key, ext = base_plus_ext(item["fname"])
        if key is None:  # a member without an extension: its own key, an unknown extension
            key, ext = item["fname"], ""
        yield key, ext, item["data"]


def read_shard(path: str, options: Options) -> Iterator[Outcome]:
    """Outcomes of a shard's samples, in order, then any shard-level reject."""
    key, members, count = None, {}, 0
    try:
        with epath.Path(path).open("rb") as stream:
            for member_key, ext, data in _members(stream):
                count += 1
                if member_key != key:
                    if key is not None:
                        yield tar_sample(members, path, key, options)
                    key, members = member_key, {}
                if ext in members:  # a key seen again: keep the first member
                    yield Outcome(rejects=[R.Reject(path, key, R.UNKNOWN_EXTENSION,
                                                    f"member {key}.{ext} appears twice; the second is ignored",
                                                    kept=True)])
                    continue
                members[ext] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        text = " ".join(str(e).split(" @ ")[0].split())
        if count == 0 and ("empty file" in text or _size(path) == 0):
            yield Outcome(rejects=[R.Reject(path, "", R.EMPTY_SHARD, "the shard is empty (0 bytes)")])
        else:
            where = f"sample {key}" if key is not None else "the first member"
            yield Outcome(rejects=[R.Reject(path, key or "", R.TRUNCATED_TAR,
                                            f"the tar ends inside {where} ({type(e).__name__}: {text}); "
                                            f"the {count - len(members)} member(s) before it are kept")])
        return
    if key is not None:
        yield tar_sample(members, path, key, options)
    if count == 0:
        yield Outcome(rejects=[R.Reject(path, "", R.EMPTY_SHARD, "the shard holds no members")])


def _size(path: str) -> int:
    try:
        return epath.Path(path).stat().length
    except OSError:
        return -1
