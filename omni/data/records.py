"""The on-disk dataset format: a TFDS dataset in array_record files (no TensorFlow needed).

Every record has the same fields, whatever modalities it holds (an empty value = absent):
  id, label, source (where it came from, for error messages), group (records that share one can
  be batched together: `data.group_size`, omni.data.order), and one field per registered
  modality: the encoded file's bytes for a file modality (image, audio, video: decoded on the host
  at load time), text otherwise (text as UTF-8, smell as JSON {"smiles": [...], "weights": [...]}).
  Each modality's `encode` turns its field into arrays; see omni/modalities. A dataset built
  before a modality was registered simply lacks its field: reading gives it as absent.
Read back with `open_split(DIR, split)`: random access by index, the input grain needs.

DIR may be `gs://...` or `s3://...`: array_record's reader opens local files only, so a data dir
on an object store is copied once per host into the cache ($OMNI_CACHE, default ~/.cache/omni),
keyed by its URL and the stamp of its dataset_info.json (a rebuild there is a new copy), and read
from there (`local_data_dir`).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from omni import storage
from omni.data import set_index
from omni.errors import DataError
from omni.modalities import registry

META_FIELDS = ("id", "label", "source", "group")
GROUP_INDEX = "groups-{split}.npy"  # beside dataset_info.json: each record's group id, -1 = none


def fields() -> tuple[str, ...]:
    """Every field of a record written now: the meta fields and one per registered modality."""
    return META_FIELDS + tuple(registry.MODALITIES)


def bytes_fields() -> tuple[str, ...]:
    """Fields kept as bytes (files); every other field is decoded to str."""
    return registry.file_fields()


def features():
    """The TFDS features of a record: text fields as Text, file fields as bytes."""
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import
    binary = bytes_fields()
    spec = {name: tfds.features.Text() for name in fields() if name not in binary}
    spec.update({name: tfds.features.Tensor(shape=(), dtype=np.object_) for name in binary})
    return tfds.features.FeaturesDict(spec)


class RecordEncoder:
    """A record (dict with some of `fields()`) -> the bytes of one array_record entry, exactly as
    TFDS's own writer serialises it, so `open_split` reads records from either writer."""

    def __init__(self):
        from tensorflow_datasets.core import example_serializer  # slow import, deferred
        self._features = features()
        self._serializer = example_serializer.ExampleSerializer(self._features.get_serialized_info())
        self._binary, self._names = bytes_fields(), fields()

    def __call__(self, record: dict) -> bytes:
        example = {name: record.get(name) or (b"" if name in self._binary else "") for name in self._names}
        return self._serializer.serialize_example(self._features.encode_example(example))


DATASET_NAME = "omni_records"  # the TFDS name of OmniRecords below


def shard_path(version_dir, split: str, index: int, count: int) -> str:
    """The file name TFDS reads for shard `index` of `count` of a split."""
    from tensorflow_datasets.core import naming  # slow import, deferred
    template = naming.ShardedFileTemplate(data_dir=version_dir, dataset_name=DATASET_NAME, split=split,
                                          filetype_suffix="array_record")
    return os.fspath(template.sharded_filepath(shard_index=index, num_shards=count))


def write_metadata(data_dir, splits: dict[str, tuple[list[int], int]]) -> Path:
    """Write dataset_info.json and features.json for shards already in place under
    data_dir/omni_records/1.0.0: splits maps a split to (records per shard, total bytes)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import naming
    builder = _builder_class()(data_dir=str(data_dir), file_format="array_record")
    version_dir = Path(builder.data_dir)
    infos = [tfds.core.SplitInfo(name=split, shard_lengths=list(lengths), num_bytes=int(size),
                                 filename_template=naming.ShardedFileTemplate(
                                     data_dir=version_dir, dataset_name=DATASET_NAME, split=split,
                                     filetype_suffix="array_record"))
             for split, (lengths, size) in splits.items()]
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.info.write_to_directory(version_dir)
    return version_dir


@functools.cache  # TFDS registers builder classes by name: define ours once per process
def _builder_class():
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import

    class OmniRecords(tfds.core.GeneratorBasedBuilder):
        """Records handed in by the caller (the embedded default set, or a user's manifest)."""

        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, splits: dict[str, list[dict]] | None = None, **kwargs):
            self._splits = splits or {}
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features())

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(records) for split, records in self._splits.items()}

        def _generate_examples(self, records):
            binary, names = bytes_fields(), fields()  # once per split, not once per record
            for index, record in enumerate(records):
                yield index, {name: record.get(name, b"" if name in binary else "") for name in names}

    return OmniRecords


def write_dataset(splits: dict[str, list[dict]], out_dir: str | Path) -> Path:
    """Write records (dicts with `fields()`) per split as array_record under out_dir; returns out_dir.
    out_dir is local (array_record writes local files): to put a dataset on an object store,
    write it locally and copy the folder up (omni.data.default.build.build_default does)."""
    if storage.is_remote(out_dir):
        raise ValueError(f"{os.fspath(out_dir)}: write_dataset writes local folders only (array_record); "
                         "write it locally, then copy it up with omni.storage.copy_folder")
    out_dir = Path(out_dir)
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    builder = _builder_class()(splits=splits, data_dir=str(out_dir), file_format="array_record")
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints progress on stdout; keep stdout for JSON
        builder.download_and_prepare()
    # TFDS's writer shuffles the records (by a hash of their keys), so the index is read back
    # from the files in their final order: one pass over records that were all in memory anyway.
    version_dir = _version_dir(out_dir)
    for split in splits:
        written = Split(out_dir, split)
        in_order = [written[i] for i in range(len(written))]
        write_group_index(version_dir, split, (r.get("group", "") for r in in_order))
        set_index.write_modality_index(version_dir, split, in_order, registry.MODALITIES)
    return out_dir


def group_id(name: str) -> int:
    """A group name -> a non-negative 63-bit id (BLAKE2b of its UTF-8), the same in every process
    and build worker without a shared table; an empty name (no group) -> -1."""
    if not name:
        return -1
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def group_ids(groups) -> np.ndarray:
    """Group names -> int64 ids (group_id of each)."""
    return np.fromiter((group_id(g) for g in groups), np.int64)


def write_group_index(version_dir, split: str, groups) -> None:
    """Write a split's group index at build time (the group name of each record, in read order), so
    that grouped batching never has to read the records to find their groups."""
    np.save(Path(version_dir) / GROUP_INDEX.format(split=split), group_ids(groups))


def _version_dir(data_dir) -> Path:
    """The local folder that holds the dataset's dataset_info.json (the newest version under
    data_dir); a data dir on an object store is its copy in the cache (local_data_dir)."""
    local = local_data_dir(data_dir)
    infos = sorted(local.glob("**/dataset_info.json"))
    if not infos:
        raise FileNotFoundError(f"{data_dir}: no omni dataset here (no dataset_info.json; build one with "
                                "`omni data build MANIFEST.jsonl --out DIR`)")
    return infos[-1].parent


# ----------------------------------------------------------------------------------------------
# Data dirs on an object store: one local copy per host
# ----------------------------------------------------------------------------------------------

_LOCAL_COPIES: dict[str, Path] = {}  # URL -> its copy: one process reads one state of the data


def cache_root() -> Path:
    """Where copies of remote data dirs go: $OMNI_CACHE/remote-data (default ~/.cache/omni)."""
    return Path(os.environ.get("OMNI_CACHE", Path.home() / ".cache" / "omni")) / "remote-data"


def local_data_dir(data_dir) -> Path:
    """data_dir as a local folder: itself when it is local; for `gs://...` or `s3://...`, a copy
    of its dataset (the version folder that holds dataset_info.json, every file in it) in the
    cache, made on first use. The copy's name holds a hash of the URL and of the object stamp of
    dataset_info.json (size, modification time, ETag/generation), so a dataset rebuilt at the
    same URL is copied anew. Processes on one host copy it once: the first takes a file lock and
    copies into a temporary folder that it renames when complete (a killed copy never looks
    complete); the others wait for the lock and find the copy. Within a process a URL resolves
    once, so a run reads one state of the data even if the store changes under it."""
    if not storage.is_remote(data_dir):
        return Path(data_dir)
    url = os.fspath(data_dir).rstrip("/")
    if url not in _LOCAL_COPIES:
        _LOCAL_COPIES[url] = _copy_to_cache(url)
    return _LOCAL_COPIES[url]


def _remote_version(url: str) -> tuple[str, list[str], str]:
    """-> (the version folder's path relative to url, the names of its files, the stamp of its
    dataset_info.json). Listed with fsspec's find: epath's `**` glob does not work on a store."""
    try:
        names = storage.files_under(url)
    except Exception as e:  # noqa: BLE001 - credentials, endpoint, bucket: each client its own error
        raise DataError(f"{url}: cannot list the data dir on the object store ({type(e).__name__}: {e})") from e
    infos = sorted(name for name in names if name.rsplit("/", 1)[-1] == "dataset_info.json")
    if not infos:
        raise FileNotFoundError(f"{url}: no omni dataset here (no dataset_info.json under it: build one "
                                "with `omni data build MANIFEST.jsonl --out URL`, or a build is still "
                                "uploading it)")
    version = infos[-1].rpartition("/")[0]
    prefix = f"{version}/" if version else ""
    files = [name[len(prefix):] for name in names if name.startswith(prefix)]
    return version, files, _stamp(f"{url}/{infos[-1]}")


def _stamp(url: str) -> str:
    """What changes when an object is rewritten: its size, modification time and ETag or
    generation, as fsspec's store reports them."""
    import fsspec  # deferred: only object stores need it
    filesystem, where = fsspec.core.url_to_fs(url)
    info = filesystem.info(where)
    keys = ("size", "LastModified", "ETag", "updated", "generation", "md5Hash", "crc32c", "mtime")
    return "|".join(f"{key}={info[key]}" for key in keys if info.get(key) is not None)


def _copy_to_cache(url: str) -> Path:
    version, files, stamp = _remote_version(url)
    key = hashlib.sha256(f"{url}\n{version}\n{stamp}".encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", url.split("://", 1)[1])[-80:].strip("-.")
    root = cache_root()
    target = root / f"{readable}-{key}"
    if (target / "dataset_info.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    source = f"{url}/{version}" if version else url
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if (target / "dataset_info.json").exists():
            return target
        print(f"{url}: copying the dataset ({len(files)} files) to {target} (read from there)",
              file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            try:
                storage.copy_folder(source, tmp, last="dataset_info.json")
            except Exception as e:  # noqa: BLE001 - name the URL whatever the client raised
                raise DataError(f"{url}: copying the dataset to {tmp} failed ({type(e).__name__}: {e})") from e
            if _remote_version(url)[2] != stamp:
                raise DataError(f"{url}: the dataset changed on the store while it was copied (its "
                                "dataset_info.json was rewritten, a build is uploading?); try again once "
                                "the upload is done")
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def upload_dataset(local_dir, url: str) -> None:
    """Copy a dataset built in the local folder local_dir (with its rejects.jsonl, if any) to
    `gs://...` or `s3://...`. An object store has no rename, so the dataset_info.json of what was
    there is deleted first (a reader then finds no dataset, never old metadata over new shards),
    the new dataset_info.json is uploaded after every other file, and files left from the old
    dataset that the new one does not have (shards of another count) are deleted at the end."""
    target = storage.path(url)
    local = sorted(Path(local_dir).glob("**/dataset_info.json"))
    if not local:
        raise FileNotFoundError(f"{local_dir}: no dataset to upload (no dataset_info.json)")
    new_names = storage.files_under(local_dir)
    last = local[-1].relative_to(local_dir).as_posix()
    try:
        old_names = storage.files_under(url)
        old_dataset = [name for name in old_names if name.startswith(f"{DATASET_NAME}/")]
        for name in old_dataset:
            if name.rsplit("/", 1)[-1] == "dataset_info.json":
                (target / name).unlink()
        storage.copy_folder(local_dir, target, last=last)
        for name in sorted(set(old_dataset) - set(new_names)):
            if (target / name).exists():
                (target / name).unlink()
    except Exception as e:  # noqa: BLE001 - name the URL whatever the client raised
        raise DataError(f"{url}: uploading the dataset built in {local_dir} failed "
                        f"({type(e).__name__}: {e})") from e


class Split:
    """Random-access records of one split, decoded to python values."""

    def __init__(self, data_dir: str | Path, split: str):
        import tensorflow_datasets as tfds
        self.path = _version_dir(data_dir)
        builder = tfds.builder_from_directory(str(self.path))
        available = list(builder.info.splits.keys())
        if split not in available:
            raise ValueError(f"{data_dir}: no split '{split}' (available: {', '.join(sorted(available))})")
        self._source = builder.as_data_source(split=split)
        self._binary = set(bytes_fields())
        self.split = split

    def __len__(self) -> int:
        return len(self._source)

    def __reduce__(self):
        """Pickled as its folder and split, and opened again on the other side: grain's worker
        processes each read the files themselves."""
        return Split, (self.path, self.split)

    def groups(self) -> np.ndarray:
        """Each record's group id (-1 = none), from the index the build wrote. A dataset built
        without one (by the Beam build, or before groups existed) is read once, record by
        record, and the caller is told so on stderr: one pass over the split."""
        path = self.path / GROUP_INDEX.format(split=self.split)
        if path.exists():
            ids = np.load(path, mmap_mode="r")
            if len(ids) != len(self):
                raise DataError(f"{path}: {len(ids)} group ids for {len(self)} records of split "
                                f"'{self.split}'; rebuild the dataset")
            return ids
        print(f"{self.path}: no group index for split '{self.split}'; reading the group of each of "
              f"its {len(self)} records", file=sys.stderr)
        return group_ids(self[i].get("group", "") for i in range(len(self)))

    def __getitem__(self, index: int) -> dict:
        raw = self._source[int(index)]
        return {k: (v if k in self._binary else v.decode("utf-8", errors="replace")) for k, v in raw.items()}


def open_split(data_dir, split: str) -> Split:
    return Split(data_dir, split)


def split_names(data_dir) -> list[str]:
    import tensorflow_datasets as tfds
    return sorted(tfds.builder_from_directory(str(_version_dir(data_dir))).info.splits.keys())
