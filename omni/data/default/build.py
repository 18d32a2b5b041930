"""Assemble the default dataset from its sources, split it, and cache it on disk."""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from omni import storage
from omni.data.default.clips import real_clip_records
from omni.data.default.digits import digit_records
from omni.data.default.motion import motion_clip_records
from omni.data.default.odorants import mixture_records, odorant_records
from omni.data.default.prose import prose_sentences
from omni.data.default.speech import spoken_digit_records
from omni.data.records import upload_dataset, write_dataset
from omni.modalities import stored

VERSION = "v6"  # v6: each spoken clip's group is its voice (v5: speech samples no longer depend on the process)
TEXT_ONLY_SENTENCES = 1000
SPOKEN_CAPTIONS = 1200
MOTION_CLIPS = 600
SMELL_MIXTURES = 1200
TEST_EVERY = 6


def default_data_dir() -> Path:
    """The cache folder of this VERSION of the dataset ($OMNI_CACHE, default ~/.cache/omni)."""
    root = Path(os.environ.get("OMNI_CACHE", Path.home() / ".cache" / "omni"))
    return root / f"default-{VERSION}"


def hold_out(records: list[dict]) -> list[dict]:
    """Every TEST_EVERY-th record of a kind (from its first) goes to `test`, the rest to `train`."""
    return [{**record, "split": "test" if i % TEST_EVERY == 0 else "train"}
            for i, record in enumerate(records)]


def media_records() -> list[dict]:
    """Audio-text, video-text and smell-text records, each kind split 5:1 into train and test."""
    kinds = [spoken_digit_records(SPOKEN_CAPTIONS), motion_clip_records(MOTION_CLIPS),
             real_clip_records(), odorant_records(), mixture_records(SMELL_MIXTURES)]
    return [record for records in kinds for record in hold_out(records)]


def default_records() -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]}: the image, audio, video and smell records split 5:1 per
    kind, and the text-only prose sentences, all in `train`."""
    records = hold_out(digit_records()) + media_records()
    splits = {"train": [r for r in records if r["split"] == "train"],
              "test": [r for r in records if r["split"] == "test"]}
    for j, sentence in enumerate(prose_sentences(TEXT_ONLY_SENTENCES)):
        splits["train"].append({"id": f"prose-{j}", "label": "", "source": "pydoc_data.topics",
                                "text": sentence})
    return splits


def build_default(out: str | Path, preprocess_for=None) -> dict:
    """`omni data build default --out DIR [--preprocess-for CONFIG]`: the embedded default dataset
    written to DIR, its media stored decoded to CONFIG's shapes when one is given (training then
    decodes nothing: omni.modalities.stored). -> the summary the CLI prints. DIR may be
    `gs://...` or `s3://...`: the dataset is written to a local temporary folder, then copied up."""
    remote = storage.is_remote(out)
    out = os.fspath(out).rstrip("/") if remote else Path(out)
    if _is_built(out):
        raise FileExistsError(f"{out}: a dataset is already there; choose an empty --out")
    splits = default_records()
    if preprocess_for is not None:
        splits = {split: [stored.preprocess_record(r, preprocess_for) for r in rows] for split, rows in splits.items()}
    local = Path(tempfile.mkdtemp(prefix="omni-default-data-")) if remote else out
    try:
        write_dataset(splits, local)
        if preprocess_for is not None:
            stored.write_spec(next(local.glob("**/dataset_info.json")).parent, preprocess_for)
        if remote:
            upload_dataset(local, out)
    finally:
        if remote:
            shutil.rmtree(local, ignore_errors=True)
    return {"out": str(out), "splits": {split: len(rows) for split, rows in splits.items()},
            "preprocessed_for": None if preprocess_for is None else stored.spec_of(preprocess_for)}


def ensure_default_dataset() -> Path:
    """Build the default dataset into the cache on first use; return its folder. Processes that
    start together (a multi-process run on one host, parallel tests) build it once: the first
    takes a file lock and builds, the others wait for it and then find the dataset."""
    out = default_data_dir()
    if _is_built(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not _is_built(out):
            # Build beside the final place and rename: a killed build never looks complete.
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
            write_dataset(default_records(), tmp)
            tmp.rename(out)
    return out


def _is_built(folder) -> bool:
    if storage.is_remote(folder):
        return any(name.rsplit("/", 1)[-1] == "dataset_info.json" for name in storage.files_under(folder))
    return bool(list(Path(folder).glob("**/dataset_info.json")))
