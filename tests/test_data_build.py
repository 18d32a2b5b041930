"""`omni data build` on Beam: WebDataset shards written here (image+text, audio+text, one with bad
samples, one cut short, one empty) and a manifest build with 2 workers exactly as with 1, every
reject reason lands in rejects.jsonl with its key, the dataset trains, and fuzzed samples always
end as a clean per-sample reject."""
import io
import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
import soundfile
import webdataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from omni.data import rejects as R
from omni.data.build import build
from omni.data.records import GROUP_INDEX, group_ids, open_split, split_names
from omni.data.samples import EXTENSIONS, Options, manifest_sample, tar_sample
from omni.errors import ManifestError
from tests.conftest import MODEL_SMALL, omni_command

COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}


def png(color, seed: int) -> bytes:
    pixels = np.zeros((16, 16, 3), np.uint8)
    r, c = np.random.default_rng(seed).integers(0, 8, 2)
    pixels[r:r + 8, c:c + 8] = color
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(freq: float, seconds: float = 0.3, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * freq * t), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_shards(folder):
    """5 shards: 00000 image+text, 00001 audio+text, 00002 good and bad samples (a corrupt png, a
    missing caption, an unknown extension, an invalid SMILES), 00003 cut inside its last member,
    00004 empty. -> the brace range naming them."""
    folder.mkdir(parents=True)
    with webdataset.TarWriter(str(folder / "00000.tar")) as sink:
        for i in range(8):
            color = list(COLORS)[i % 3]
            meta = {"label": color, **({"split": "test"} if i % 4 == 0 else {})}
            sink.write({"__key__": f"img{i:03d}", "png": png(COLORS[color], i), "txt": f"a {color} square",
                        "json": meta})
    with webdataset.TarWriter(str(folder / "00001.tar")) as sink:
        for i in range(6):
            sink.write({"__key__": f"snd{i:03d}", "wav": wav(300 + 100 * i), "txt": f"a tone of {300 + 100 * i} hertz",
                        "json": {"group": f"speaker {i % 2}"}})
    with webdataset.TarWriter(str(folder / "00002.tar")) as sink:
        good = png(COLORS["red"], 99)
        sink.write({"__key__": "ok000", "png": good, "txt": "a red square"})
        sink.write({"__key__": "corrupt", "png": good[: len(good) // 2], "txt": "a cut picture"})
        sink.write({"__key__": "nocaption", "png": good})
        sink.write({"__key__": "oddext", "png": good, "txt": "a red square", "xyz": b"what is this"})
        sink.write({"__key__": "badsmiles", "smi": "C1CC(", "txt": "a broken molecule"})
        sink.write({"__key__": "smell000", "smi": "CCOC(C)=O CCCCCCO", "txt": "fruity and green"})
    with webdataset.TarWriter(str(folder / "00003.tar")) as sink:
        for i in range(4):
            sink.write({"__key__": f"cut{i:03d}", "png": png(COLORS["blue"], 50 + i), "txt": "a blue square"})
    with tarfile.open(folder / "00003.tar") as tar:
        last = tar.getmembers()[-1]  # cut003.txt
        cut = last.offset_data + last.size // 2
    (folder / "00003.tar").write_bytes((folder / "00003.tar").read_bytes()[:cut])  # inside cut003's last member
    (folder / "00004.tar").write_bytes(b"")
    return str(folder / "{00000..00004}.tar")


def write_manifest(folder):
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(5):
        (folder / "img" / f"{i}.png").write_bytes(png(COLORS["green"], 200 + i))
        lines.append(json.dumps({"id": f"m{i}", "text": f"green square {i}", "image": f"img/{i}.png",
                                 **({"group": f"speaker {i % 2}"} if i < 4 else {})}))
    lines.append(json.dumps({"id": "m9", "text": "", "image": "img/0.png"}))  # an empty caption: dropped, image kept
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "manifest.jsonl")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    sources = [write_shards(root / "shards"), write_manifest(root / "files")]
    two = subprocess.run(omni_command("data", "build", *sources, "--out", str(root / "two"), "--workers", "2"),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = build(sources, root / "one", workers=1, progress_every=0.2)
    return root, sources, json.loads(two.stdout), two.stderr, one


def all_records(data):
    return {split: [open_split(data, split)[i] for i in range(len(open_split(data, split)))]
            for split in split_names(data)}


def test_two_workers_give_the_records_of_one(builds):
    root, _, two, _, one = builds
    assert two["workers"] == 2 and one["workers"] == 1
    records_one, records_two = all_records(root / "one"), all_records(root / "two")
    assert records_one == records_two
    assert sum(len(r) for r in records_one.values()) == one["samples"] == two["samples"]
    ids = [r["id"] for split in records_one.values() for r in split]
    assert len(ids) == len(set(ids))
    # Order: item by item as given (shards, then the manifest), each in its own order.
    train_ids = [r["id"] for r in records_one["train"]]
    assert train_ids.index("00000/img001") < train_ids.index("00001/snd000") < train_ids.index("m0")
    assert [r["id"] for r in records_one["test"]][:2] == ["00000/img000", "00000/img004"]  # json split
    assert (root / "two" / "rejects.jsonl").read_bytes() == (root / "one" / "rejects.jsonl").read_bytes()


def test_the_build_writes_each_records_group_in_its_index(builds, tmp_path):
    """The group index (omni.data.order batches a group's records together) lists each record's
    group id in read order, from WebDataset meta and manifest lines alike, with 1 and 2 workers;
    without the index, the split is read for the same ids."""
    root = builds[0]
    for build_dir in ("one", "two"):
        for split, split_records in all_records(root / build_dir).items():
            source = open_split(root / build_dir, split)
            index = source.path / GROUP_INDEX.format(split=split)
            assert index.exists()
            want = group_ids([r["group"] for r in split_records])
            np.testing.assert_array_equal(source.groups(), want)
    train = all_records(root / "one")["train"]
    groups = {r["id"]: r["group"] for r in train}
    assert groups["00001/snd001"] == groups["m1"] == "speaker 1" and groups["00000/img001"] == ""
    copy = tmp_path / "no-index"
    shutil.copytree(root / "one", copy)
    ids = open_split(copy, "train").groups()
    (open_split(copy, "train").path / GROUP_INDEX.format(split="train")).unlink()
    np.testing.assert_array_equal(open_split(copy, "train").groups(), ids)


def test_every_reject_reason_is_written_with_its_key(builds):
    root, _, two, stderr, _ = builds
    lines = [json.loads(line) for line in (root / "two" / "rejects.jsonl").read_text().splitlines()]
    found = {(line["reason"], line["key"]) for line in lines}
    expected = {(R.UNDECODABLE_MEDIA, "corrupt"), (R.MISSING_CAPTION, "nocaption"), (R.UNKNOWN_EXTENSION, "oddext"),
                (R.INVALID_SMILES, "badsmiles"), (R.TRUNCATED_TAR, "cut003"), (R.EMPTY_SHARD, "")}
    assert expected <= found, found
    assert {line["source"] for line in lines if line["reason"] == R.TRUNCATED_TAR} == {
        str(root / "shards" / "00003.tar")}
    # Counted per reason in the summary and in Beam's metrics, and echoed on stderr.
    counts = {}
    for line in lines:
        counts[line["reason"]] = counts.get(line["reason"], 0) + 1
    assert two["rejects"] == counts
    assert {k: v for k, v in two["beam_counters"].items() if k in counts} == counts
    assert two["beam_counters"]["samples"] == two["samples"]
    assert "00003.tar" in stderr and "omni data build: 6/6 shards" in stderr
    assert (R.MISSING_CAPTION, "m9") in found  # a manifest line keeps its image without its caption
    # The kept samples: 8 + 6 + 3 (ok000, oddext, smell000) + 3 before the cut + 6 manifest lines.
    assert two["samples"] == 8 + 6 + 3 + 3 + 6
    assert two["rejected"] == 5  # corrupt, nocaption, badsmiles, cut003, the empty shard


def test_on_error_fail_names_the_first_bad_sample(builds, tmp_path):
    """(The CLI's one-line message and exit code 2 for it: tests/test_bad_inputs.py.)"""
    root, sources, _, _, _ = builds
    with pytest.raises(ManifestError) as stopped:
        build([sources[0].replace("{00000..00004}", "00002")], tmp_path / "d", workers=1, on_error="fail")
    message = str(stopped.value)
    assert message.startswith(str(root / "shards" / "00002.tar")) and "member corrupt.png" in message, message
    assert "decode" in message and "Traceback" not in message and "\n" not in message
    assert not (tmp_path / "d" / "omni_records").exists()


def test_webdataset_build_trains(builds):
    root = builds[0]
    workdir = root / "run"
    args = [*MODEL_SMALL, "--config.modalities=text,image,audio", "--config.modalities.audio.clip_seconds=0.32",
            "--config.modalities.audio.patch_frames=4", f"--config.data.path={root / 'two'}",
            "--config.train.steps=2", "--config.train.log_every=1", "--config.train.eval_every=0"]
    out = subprocess.run(omni_command("train", "--workdir", str(workdir), *args), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and all(np.isfinite(r["loss"]) for r in rows)
    assert "loss/contrastive/audio-text" in rows[-1] and "loss/contrastive/image-text" in rows[-1]


# ---------------------------------------------------------------------------------------------
# Fuzz: broken manifests, tar members and media bytes through the per-sample logic.
# ---------------------------------------------------------------------------------------------

GOOD = {"png": png(COLORS["red"], 1), "wav": wav(440, 0.1), "txt": b"a caption", "smi": b"CCO",
        "json": b'{"label": "x", "split": "train"}'}
REASONS = {getattr(R, name) for name in dir(R) if name.isupper() and isinstance(getattr(R, name), str)}


@st.composite
def damaged(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(["cut", "flip", "random", "empty", "same"]))
    if how == "cut":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if how == "flip":
        buffer = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buffer[draw(st.integers(0, len(buffer) - 1))] ^= draw(st.integers(1, 255))
        return bytes(buffer)
    if how == "random":
        return draw(st.binary(max_size=300))
    return b"" if how == "empty" else data


extensions = st.sampled_from(sorted(EXTENSIONS) + ["xyz", "", "PNG", "tar"])
members = st.dictionaries(extensions, st.sampled_from(sorted(GOOD)).flatmap(lambda k: damaged(GOOD[k])), max_size=4)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=8)
manifest_fields = st.sampled_from(["id", "split", "label", "text", "image", "audio", "video", "smell", "other"])
lines = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(manifest_fields, json_values | st.sampled_from(["bad.png", "bad.wav", "nowhere.png", "../x"]),
                    max_size=5).map(lambda d: json.dumps(d).encode()),
)


def problems(outcome) -> list[str]:
    """What is wrong with a sample's outcome: empty when it is a record or cleanly rejected."""
    found = [] if outcome.record is not None or outcome.rejects else ["a sample vanished without a reason"]
    found += [f"unclean reject {reject}" for reject in outcome.rejects
              if not (reject.reason in REASONS and isinstance(reject.key, str) and reject.detail)]
    if outcome.record is not None and not (outcome.split and outcome.record["id"]):
        found.append(f"record without split or id: split={outcome.split!r}")
    return found


@settings(max_examples=350, deadline=None, suppress_health_check=list(HealthCheck))
@given(members=members, key=st.text(min_size=1, max_size=12))
def test_fuzzed_tar_samples_end_as_records_or_clean_rejects(members, key):
    found = problems(tar_sample(members, "shards/00000.tar", key, Options()))
    assert not found, found


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "bad.png").write_bytes(GOOD["png"][:40])
    (root / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    return root


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=lines, number=st.integers(1, 10 ** 6))
def test_fuzzed_manifest_lines_end_as_records_or_clean_rejects(bad_files, raw, number):
    found = problems(manifest_sample(raw, "m.jsonl", number, bad_files, Options()))
    assert not found, found


def test_a_beam_build_of_fuzzed_samples_rejects_cleanly(tmp_path):
    """A handful of damaged samples through the whole pipeline: every one is written or rejected."""
    rng = np.random.default_rng(7)
    with webdataset.TarWriter(str(tmp_path / "fuzz.tar")) as sink:
        for i in range(12):
            kind = sorted(GOOD)[i % len(GOOD)]
            data = bytearray(GOOD[kind])
            data[rng.integers(0, len(data))] ^= 0xFF
            sink.write({"__key__": f"f{i:02d}", kind: bytes(data[: rng.integers(1, len(data) + 1)]),
                        "txt": "caption" if i % 3 else b"\xff\xfe"})
        for i in range(3):
            sink.write({"__key__": f"g{i:02d}", "png": GOOD["png"], "txt": "a red square"})
    summary = build([str(tmp_path / "fuzz.tar")], tmp_path / "out", workers=1)
    rejected_keys = {json.loads(line)["key"] for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
                     if not json.loads(line)["kept"]}
    assert summary["samples"] + summary["rejected"] == 15 and summary["samples"] >= 3
    assert len(rejected_keys) == summary["rejected"]
