"""Where a run's files live: a local folder, `gs://bucket/...` or `s3://bucket/...`.

Every file omni reads or writes outside the arrays of a checkpoint (a workdir's config.json,
metrics.jsonl and assets, a bundle, a data dir's metadata) goes through `path()`, an etils
`epath.Path`: the local file system, or fsspec (gcsfs, s3fs) for an object store. pathlib would
turn `gs://bucket/run` into the local folder `gs:/bucket/run`.

Endpoints and credentials come from the ecosystem's own variables, never from an omni-only
setting: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION (botocore:
s3fs, boto3, tensorboardX), STORAGE_EMULATOR_HOST and Google's default credentials (gcsfs,
google-cloud-storage). Arrays go through orbax and tensorstore; omni.checkpoint hands them the
same variables.

An object store has no rename and no append: `write_text_atomic` writes a file whole (one PUT
replaces an object whole, so a reader never sees half of it), and `AppendedText` keeps a growing
file such as metrics.jsonl by rewriting it.
"""
from __future__ import annotations

import os

from etils import epath

URL_SCHEMES = ("gs://", "s3://")


def is_remote(location) -> bool:
    """True for `gs://...` and `s3://...` (a string or a path)."""
    return os.fspath(location).startswith(URL_SCHEMES)


def path(location) -> epath.Path:
    """A local path (made absolute: orbax needs it so) or an object-store URL, as an epath.Path."""
    if isinstance(location, epath.Path) and (is_remote(location) or os.path.isabs(location)):
        return location
    text = os.fspath(location)
    return epath.Path(text if is_remote(text) else os.path.abspath(os.path.expanduser(text)))


def write_text_atomic(target: epath.Path, text: str) -> None:
    """Write a whole file so that a concurrent reader sees the old content or the new, never a
    part: a local file is written beside and renamed; an object is replaced by one upload."""
    if is_remote(target):
        target.write_text(text)
        return
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, target)


class AppendedText:
    """A text file opened for appending, as `open(path, "a")` gives locally. On an object store,
    which cannot append, the whole file (what was there, then every line since) is uploaded again
    at each flush: fine for a run's metrics (megabytes), not for bulk data."""

    def __init__(self, target: epath.Path):
        self.target = target
        self.remote = is_remote(target)
        if self.remote:
            self.text = target.read_text() if target.exists() else ""
            self.dirty = False
        else:
            self.file = open(target, "a")

    def write(self, text: str) -> None:
        if self.remote:
            self.text += text
            self.dirty = True
        else:
            self.file.write(text)

    def flush(self) -> None:
        if not self.remote:
            self.file.flush()
        elif self.dirty:
            self.target.write_text(self.text)
            self.dirty = False

    def close(self) -> None:
        self.flush()
        if not self.remote:
            self.file.close()


def files_under(folder) -> list[str]:
    """The relative names ("a/b.txt") of the files under `folder`, local or on an object store,
    sorted. (On a store, fsspec's find lists them all at once; epath has no recursive glob there,
    and its walk hands s3fs an argument it refuses in etils 1.15.)"""
    if not is_remote(folder):
        top = os.fspath(folder)
        return sorted(os.path.relpath(os.path.join(root, name), top).replace(os.sep, "/")
                      for root, _, files in os.walk(top) for name in files)
    import fsspec  # deferred: only object stores need it (epath imports it for them too)

    filesystem, top = fsspec.core.url_to_fs(os.fspath(folder).rstrip("/"))
    return sorted(found[len(top):].lstrip("/") for found in filesystem.find(top))


def copy_folder(source, target, last: str | None = None) -> None:
    """Copy the files under the folder `source` into `target` (either local or on an object
    store), the file named `last` after every other one: a reader that waits for it finds the
    rest complete."""
    source, target = path(source), path(target)
    names = files_under(source)
    names.sort(key=lambda name: name == last)
    for name in names:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        with (source / name).open("rb") as src, destination.open("wb") as dst:
            for chunk in iter(lambda: src.read(1 << 24), b""):
                dst.write(chunk)
