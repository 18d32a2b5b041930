"""Audio with captions: digit words spoken by eSpeak NG, the speech synthesiser that the
`espeakng-loader` wheel ships (libespeak-ng.so + espeak-ng-data), driven through ctypes.

`spoken_digit_records` says the digit names in several English voices at varied speed and pitch,
trimmed to fit the model's 1.28 s clips and stored as 16 kHz 16-bit WAV. Deterministic: `speak`
gives the same samples in every process, whatever was said before.
"""
from __future__ import annotations

import atexit
import io
import json
import os
import struct
import subprocess
import sys
import threading

import espeakng_loader
import numpy as np
import soundfile

from omni.data.default.vocabulary import WORDS

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
    """`count` short spoken digit words (id speech-<i>, label = the digit word, group = the
    voice): each says the word alone or in a short phrase, in one of VOICES at a varied rate and
    pitch, silence-trimmed, peak-normalised and resampled to `sample_rate`, never longer than
    `max_seconds`."""
    records = []
    for i in range(count):
        rng = np.random.default_rng([seed, 7, i])
        digit = int(rng.integers(10))  # drawn, not i % 10: every 6th record is held out
        word = WORDS[digit]
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
            "group": f"voice {voice}",  # the speaker: omni.data.order batches a voice's clips together
        })
    return records
