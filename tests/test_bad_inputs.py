"""A manifest full of bad and odd inputs of every modality: `omni data build` drops each file that
cannot be decoded (with its path and reason) and skips unusable lines, odd but valid inputs
train, a corrupt file that reaches training anyway is skipped there with its path, and the run
completes."""
import io
import json
import subprocess
import wave

import av
import numpy as np
import soundfile
from PIL import Image

from tests.conftest import SMALL_ALL, omni_command


def write_wav(path, samples, rate, subtype="PCM_16"):
    soundfile.write(str(path), samples, rate, subtype=subtype, format="WAV")


def mp4_bytes(frames: np.ndarray, rate: int = 4) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def write_images(root):
    img = root / "img"
    img.mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(img / "ok.png")
    Image.fromarray(rgb).convert("L").save(img / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(img / "rgba.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(img / "sixteen.png")
    Image.fromarray(rgb).convert("CMYK").save(img / "cmyk.jpg")
    Image.new("RGB", (3000, 2000), (10, 200, 30)).save(img / "huge.png")
    data = (img / "ok.png").read_bytes()
    (img / "truncated.png").write_bytes(data[: len(data) // 2])
    (img / "empty.png").write_bytes(b"")


def write_audio(root):
    wav = root / "wav"
    wav.mkdir()
    t = np.arange(int(0.5 * 44100)) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    write_wav(wav / "stereo44k.wav", np.stack([tone, 0.5 * tone], axis=1), 44100)
    write_wav(wav / "silent.wav", np.zeros(8000), 16000)
    write_wav(wav / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    data = (wav / "stereo44k.wav").read_bytes()
    (wav / "truncated.wav").write_bytes(data[: len(data) // 3])
    (wav / "empty.wav").write_bytes(b"")
    (wav / "words.wav").write_text("this is not audio at all")


def write_videos(root):
    vid = root / "vid"
    vid.mkdir()
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    for i in range(8):
        frames[i, :, 2 * i:2 * i + 4] = 255  # a bar sliding right
    data = mp4_bytes(frames)
    (vid / "ok.mp4").write_bytes(data)
    (vid / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (vid / "empty.mp4").write_bytes(b"")
    with wave.open(str(vid / "sound_only.mp4"), "wb") as w:  # a file with no video stream
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(np.zeros(800, np.int16).tobytes())


def write_files(root):
    write_images(root)
    write_audio(root)
    write_videos(root)
    good = [json.dumps({"id": f"good{i}", "text": f"a picture number {i}", "image": "img/ok.png",
                        "audio": "wav/stereo44k.wav", "video": "vid/ok.mp4",
                        "smell": {"smiles": ["CCOC(C)=O", "CCCCCCO"], "weights": [0.7, 0.3]}})
            for i in range(4)]
    odd = [json.dumps({"id": name, "text": f"an odd {name} image", "image": f"img/{name}.{ext}"})
           for name, ext in (("gray", "png"), ("rgba", "png"), ("sixteen", "png"), ("cmyk", "jpg"), ("huge", "png"))]
    odd += [json.dumps({"id": "silence", "text": "nothing to hear", "audio": "wav/silent.wav"}),
            json.dumps({"id": "named-smell", "text": "ethyl acetate", "smell": {"names": ["ethyl acetate"]}})]
    kept_text = [  # the file is dropped, the caption kept (lines 12-19)
        json.dumps({"id": "t-truncated", "text": "a truncated image", "image": "img/truncated.png"}),
        json.dumps({"id": "t-empty", "text": "the image file is empty", "image": "img/empty.png"}),
        json.dumps({"id": "t-nan", "text": "audio full of NaN", "audio": "wav/nan.wav"}),
        json.dumps({"id": "t-cut", "text": "a cut wav", "audio": "wav/truncated.wav"}),
        json.dumps({"id": "t-words", "text": "text posing as audio", "audio": "wav/words.wav"}),
        json.dumps({"id": "t-novideo", "text": "no video stream", "video": "vid/sound_only.mp4"}),
        json.dumps({"id": "t-cutvideo", "text": "a cut mp4", "video": "vid/truncated.mp4"}),
        json.dumps({"id": "t-badsmiles", "text": "a broken molecule", "smell": {"smiles": ["C1CC("]}}),
    ]
    unusable = [  # lines 20-27
        json.dumps({"id": "unknown-field", "text": "has a field omni does not know", "colour": "red"}),
        json.dumps({"id": "empty-alone", "image": "img/empty.png"}),
        json.dumps({"id": "missing", "image": "img/nowhere.png"}),
        '{"id": "broken", "text": ',
        json.dumps({"id": "nothing"}),
        json.dumps({"id": "good0", "text": "a duplicate id"}),
        json.dumps({"id": "empty-video-alone", "video": "vid/empty.mp4"}),
        json.dumps({"id": "unknown-smell", "smell": {"names": ["essence of unobtainium"]}}),
    ]
    manifest = root / "manifest.jsonl"
    lines = good + odd + kept_text + unusable
    manifest.write_bytes("\n".join(lines).encode() + b'\n{"id": "latin1", "text": "caf\xe9"}\n')
    return manifest


def test_bad_inputs_are_skipped_and_reported_and_the_run_completes(tmp_path):
    manifest = write_files(tmp_path / "files")
    data = tmp_path / "data"
    out = subprocess.run(omni_command("data", "build", str(manifest), "--out", str(data), "--test-fraction", "0"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    built = json.loads(out.stdout)
    assert built["skipped_lines"] == 8 and built["dropped_fields"] == 8 + 4  # 4 unusable lines held a bad file
    assert built["splits"] == {"train": 4 + 7 + 8 + 1}
    reasons = {
        12: ("image file", "truncated.png", "cannot decode image"),
        13: ("image file", "empty.png", "is empty"),
        14: ("audio file", "nan.wav", "non-finite"),
        15: ("audio file", "truncated.wav",),
        16: ("audio file", "words.wav",),
        17: ("video file", "sound_only.mp4", "no video stream"),
        18: ("video file", "truncated.mp4",),
        19: ("smell", "C1CC("),
        20: ("unknown field(s) colour ignored",),
        21: ("empty.png",), 22: ("nowhere.png", "does not exist"), 23: ("not valid JSON",),
        24: ("the line holds no modality",), 25: ("duplicate id 'good0'",), 26: ("empty.mp4",),
        27: ("unobtainium",), 28: ("not UTF-8",),
    }
    lines = out.stderr.splitlines()
    for number, fragments in reasons.items():
        where = f"manifest.jsonl:{number}:"
        matching = [line for line in lines if where in line]
        assert matching, (where, out.stderr[-3000:])
        for fragment in fragments:
            assert any(fragment in line for line in matching), (where, fragment, matching)
    assert sum("the rest of the line is kept" in line for line in lines) == 8

    strict = subprocess.run(omni_command("data", "build", str(manifest), "--out", str(tmp_path / "strict"),
                                         "--on-error", "raise"), capture_output=True, text=True, timeout=300)
    assert strict.returncode == 2 and "manifest.jsonl:12" in strict.stderr.strip().splitlines()[-1]

    workdir = tmp_path / "run"
    out = subprocess.run(omni_command("train", "--workdir", str(workdir), *SMALL_ALL, f"--config.data.path={data}",
                                      "--config.train.steps=3", "--config.train.log_every=1",
                                      "--config.train.eval_every=0"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and rows[-1]["skipped_examples"] == 0
    assert all(np.isfinite(r["loss"]) for r in rows)
    for key in ("loss/mam", "loss/mvm", "loss/msm", "loss/contrastive/audio-text"):
        assert key in rows[-1], key


def test_corrupt_files_that_reach_training_are_skipped_with_their_path(tmp_path):
    """A dataset written without the build's checks (or corrupted on disk since) holds files that
    do not decode: training skips and counts them, naming the record, or stops (on_error=raise)."""
    from omni.data.records import write_dataset

    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    png = buffer.getvalue()
    records = [{"id": f"ok{i}", "source": f"ok{i}.png", "text": f"picture {i}", "image": png} for i in range(6)]
    records += [
        {"id": "bad-image", "source": "cut.png", "text": "cut", "image": png[: len(png) // 2]},
        {"id": "bad-audio", "source": "noise.wav", "text": "noise", "audio": b"RIFF\x00\x00garbage"},
        {"id": "bad-video", "source": "clip.mp4", "text": "clip", "video": b"\x00" * 64},
        {"id": "bad-smell", "source": "smell", "text": "smell", "smell": '{"smiles": ["C1CC("]}'},
    ]
    data = tmp_path / "data"
    write_dataset({"train": records}, data)
    workdir = tmp_path / "run"
    args = [*SMALL_ALL, f"--config.data.path={data}", "--config.train.steps=2", "--config.train.log_every=1",
            "--config.train.eval_every=0", "--config.train.batch_size=10"]
    out = subprocess.run(omni_command("train", "--workdir", str(workdir), *args),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for source, modality in (("cut.png", "image"), ("noise.wav", "audio"), ("clip.mp4", "video"), ("smell", "smell")):
        assert any(line.startswith("skipped input:") and source in line and modality in line
                   for line in out.stderr.splitlines()), (source, out.stderr[-3000:])
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_examples"] == 8  # 4 bad fields in each of the 2 batches of 10
    out = subprocess.run(omni_command("train", "--workdir", str(tmp_path / "strict"), *args,
                                      "--config.data.on_error=raise"), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
