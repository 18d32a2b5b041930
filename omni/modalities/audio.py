"""Audio: any WAV/FLAC/OGG/MP3 decoded on the host to a 16 kHz mono clip of fixed length; the
log-mel spectrogram (Whisper's recipe) is computed in the model, on the device, so the host only
decodes, resamples and moves raw waveforms, and the FFTs run batched on the accelerator.
The stem is Whisper's (two 1-D convolutions, the second with stride 2), then every `patch_frames`
conv frames form one token. Masked audio modelling masks spans of `loss.mam.span` tokens and
reconstructs each masked token's log-mel patch, normalised per patch as in MAE.

`log_mel` is the same spectrogram in numpy, for host-side use and as the reference in tests.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni.errors import ConfigError
from omni.modalities.base import Modality, ReconstructingStem, row_uniform
from omni.modalities.image import normalized_patch_targets
from omni.nn import Dense, matmul, param

SAMPLE_RATE = 16000
N_FFT = 400   # 25 ms windows
HOP = 160     # 10 ms hop: 100 frames a second
N_MELS = 80
DYNAMIC_RANGE = 8.0  # Whisper keeps 8 decades (80 dB) below the clip's loudest mel bin


# ----------------------------------------------------------------------------- decoding (host)

def load_audio(data: bytes | str, clip_seconds: float) -> np.ndarray:
    """Decode (bytes or a path), mix to mono, resample to 16 kHz, cut or zero-pad to the clip.
    -> float32 [round(clip_seconds * 16000)]. ValueError (with the reason) for undecodable,
    truncated or empty data, zero-length audio and NaN/inf samples; silence is valid."""
    import librosa  # imported where used: a run without audio (a text+image GPU bench) needs none
    samples = round(clip_seconds * SAMPLE_RATE)
    audio, rate = _checked(*_decode(data, clip_seconds))
    mono = audio.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=SAMPLE_RATE).astype(np.float32)
    out = np.zeros(samples, np.float32)
    kept = min(samples, mono.shape[0])
    out[:kept] = mono[:kept]
    return out


def check_audio(data: bytes | str) -> None:
    """Decode the WHOLE file (load_audio reads only a clip's worth): ValueError if any of it is bad."""
    _checked(*_decode(data))


def _checked(audio: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    if audio.shape[0] == 0:
        raise ValueError("audio has no samples (zero length)")
    if not np.isfinite(audio).all():
        raise ValueError("audio has non-finite samples (NaN or inf)")
    return audio, rate


def _decode(data, clip_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """-> (float32 [frames, channels], sample rate): soundfile (libsndfile: WAV, FLAC, OGG, MP3, ...),
    else audioread (ffmpeg, ...) for what libsndfile cannot read. With clip_seconds, only the start of
    the file that the clip needs is decoded (plus a margin for the resampler): long files stay cheap.
    Both paths refuse a file cut short of the length its header declares, so the answer does not
    depend on which decoders the machine has."""
    import soundfile
    path = os.fspath(data) if isinstance(data, (str, os.PathLike)) else None  # named in errors
    if path is None and len(data) == 0:
        raise ValueError("cannot decode audio: no data (0 bytes)")
    declared = None  # frames the header announces, when libsndfile could read the header
    try:
        with soundfile.SoundFile(path or io.BytesIO(data)) as f:
            rate, declared = f.samplerate, f.frames
            wanted = -1 if clip_seconds is None else _clip_frames(clip_seconds, rate)
            _check_wav_length(f.extra_info, path)
            audio = f.read(wanted, dtype="float32", always_2d=True)
            _check_length(len(audio), declared, None if wanted < 0 else wanted, path)
            return audio, rate
    except (soundfile.SoundFileError, RuntimeError) as e:  # libsndfile cannot read it (or it broke)
        reason = getattr(e, "error_string", None) or str(e)
        return _decode_fallback(data, path, clip_seconds, reason, declared)


def _clip_frames(clip_seconds: float, rate: int) -> int:
    """Frames to decode for a clip: its length plus 0.1 s for the resampler's filter."""
    return math.ceil(clip_seconds * rate) + rate // 10


def _named(path: str | None) -> str:
    """' <path>' to put in an error, '' for bytes (their caller names the record or file)."""
    return f" {path}" if path is not None else ""


def _check_length(got: int, declared: int | None, wanted: int | None, path: str | None) -> None:
    """ValueError when fewer frames decoded than the header declares (up to `wanted`, the clip's
    frames, when only the start is read). The declared count of compressed streams (MP3 without
    a Xing header, ffmpeg's duration from the bitrate) can be an estimate: only a clear shortfall
    (under 95%) means the file was cut. declared None or 0 (unknown): no check."""
    if not declared:
        return
    expected = declared if wanted is None else min(wanted, declared)
    if got < 0.95 * expected:
        of = f"the {expected} its header declares" if expected == declared else \
             f"the clip's {expected} (the header declares {declared})"
        raise ValueError(f"cannot decode audio{_named(path)}: truncated (decoded {got} samples per channel "
                         f"of {of})")


def _check_wav_length(log: str, path: str | None) -> None:
    """libsndfile reads a truncated WAV without complaint, but logs 'data : <declared> (should be
    <actual>)'. A declared size of 0 or 0xFFFFFFFF is a streamed WAV of unknown length: valid."""
    found = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", log, re.M)
    if found:
        declared, actual = int(found.group(1)), int(found.group(2))
        if actual < declared != 0xFFFFFFFF:
            raise ValueError(f"cannot decode audio{_named(path)}: truncated (data chunk holds {actual} of "
                             f"{declared} bytes)")


@contextlib.contextmanager
def _on_disk(data, path: str | None):
    """A path to the audio: its own, or a temporary file holding the bytes (audioread reads paths)."""
    if path is not None:
        yield path
        return
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        yield f.name


def _decode_fallback(data, path: str | None, clip_seconds: float | None, reason: str,
                     declared: int | None = None) -> tuple[np.ndarray, int]:
    """audioread (ffmpeg, gstreamer, ... where installed; bytes go through a temporary file), for
    what libsndfile cannot read. A decoder that stops early returns what it got without an error
    (ffmpeg decodes the first third of a cut FLAC and ends), so the frames are checked against the
    header: `declared` when libsndfile read it, else the duration the backend reports.
    path: the file's path, None for bytes. reason: why libsndfile failed, the message when no
    backend can decode the file either."""
    import audioread
    try:
        with warnings.catch_warnings():  # its raw reader imports aifc, audioop, sunau: deprecated in 3.11
            warnings.simplefilter("ignore", DeprecationWarning)
            with _on_disk(data, path) as on_disk, audioread.audio_open(on_disk) as f:
                rate, channels = int(f.samplerate), int(f.channels)
                declared = declared or (round(f.duration * rate) if f.duration else None)
                wanted = None if clip_seconds is None else _clip_frames(clip_seconds, rate)
                chunks, frames = [], 0
                for block in f:  # 16-bit little-endian PCM, channels interleaved
                    chunks.append(np.frombuffer(block, "<i2"))
                    frames += len(chunks[-1]) // channels
                    if wanted is not None and frames >= wanted:
                        break
    except Exception:  # audioread raises its own types (NoBackendError, DecodeError, ...)
        raise ValueError(f"cannot decode audio{_named(path)}: {reason}") from None
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, "<i2")
    audio = (pcm[: len(pcm) // channels * channels].reshape(-1, channels) / 32768.0).astype(np.float32)
    audio = audio if wanted is None else audio[:wanted]
    _check_length(len(audio), declared, wanted, path)
    return audio, rate


# ----------------------------------------------------------------------------- log-mel (Whisper)

@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int = N_MELS) -> np.ndarray:
    """float32 [n_mels, N_FFT // 2 + 1]: librosa's (Slaney) mel filterbank, the one Whisper ships."""
    import librosa
    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels).astype(np.float32)


@functools.lru_cache(maxsize=None)
def hann_window() -> np.ndarray:
    """The periodic Hann window (torch.hann_window, scipy's fftbins=True) of N_FFT samples."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def whisper_scale(log_spec, visible=None):
    """log10 mel [..., frames, n_mels] -> Whisper's features: floor at (max - 8), then (x + 4) / 4.
    The max is per example (over all its frames, or only over the frames where `visible` [...,
    frames] is True). Works on numpy and jax arrays."""
    xp = jnp if isinstance(log_spec, jax.Array) or isinstance(visible, jax.Array) else np
    counted = log_spec if visible is None else xp.where(visible[..., None], log_spec, -xp.inf)
    peak = counted.max(axis=(-2, -1), keepdims=True)
    return (xp.maximum(log_spec, peak - DYNAMIC_RANGE) + 4.0) / 4.0


def log_mel(waveform: np.ndarray, sample_rate: int, n_mels: int = N_MELS) -> np.ndarray:
    """Whisper's log-mel spectrogram on the host: float32 [len // 160, n_mels] (at 16 kHz).
    Centred STFT (reflect padding), periodic Hann, power spectrum; the STFT's last frame is
    dropped as Whisper does, so a 30 s clip gives exactly 3000 frames."""
    x = np.asarray(waveform, np.float32)
    if sample_rate != SAMPLE_RATE:
        import librosa
        x = librosa.resample(x, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    frames = len(x) // HOP
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    starts = np.arange(frames)[:, None] * HOP
    windows = padded[starts + np.arange(N_FFT)] * hann_window()
    power = np.abs(np.fft.rfft(windows, axis=-1)) ** 2
    mel = power @ mel_filters(n_mels).T.astype(np.float64)
    return whisper_scale(np.log10(np.maximum(mel, 1e-10))).astype(np.float32)


def log10_mel_jax(waveforms, n_mels: int = N_MELS):
    """[B, samples] (16 kHz) -> log10 of the mel power spectrum [B, samples // 160, n_mels], f32."""
    x = waveforms.astype(jnp.float32)
    frames = x.shape[-1] // HOP
    padded = jnp.pad(x, ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
    # Frame i covers samples [160 i, 160 i + 400) of `padded`: the first 400 samples of hop blocks
    # i, i+1, i+2. Slicing whole blocks builds the overlapping windows without a gather.
    blocks = padded[:, : (frames + 2) * HOP].reshape(x.shape[0], frames + 2, HOP)
    windows = jnp.concatenate([blocks[:, :-2], blocks[:, 1:-1], blocks[:, 2:]], axis=-1)[..., :N_FFT]
    spectrum = jnp.fft.rfft(windows * hann_window(), axis=-1)
    power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    # HIGHEST: a TF32/bf16 matmul here would cost ~1e-3 relative error in the mel powers.
    mel = jnp.einsum("bfk,mk->bfm", power, mel_filters(n_mels), precision=jax.lax.Precision.HIGHEST)
    return jnp.log10(jnp.maximum(mel, 1e-10))


def log_mel_jax(waveforms, n_mels: int = N_MELS):
    """`log_mel` on device, batched and jittable: [B, samples] at 16 kHz -> f32 [B, samples // 160, n_mels]."""
    return whisper_scale(log10_mel_jax(waveforms, n_mels))


# ----------------------------------------------------------------------------- the stem

def num_frames(config) -> int:
    return round(config.modalities.audio.clip_seconds * SAMPLE_RATE) // HOP


def num_audio_tokens(config) -> int:
    """Mel frames -> conv frames (stride 2) -> tokens of patch_frames conv frames each; frames
    left over at the end of the clip belong to no token."""
    return (num_frames(config) // 2) // config.modalities.audio.patch_frames


def span_mask(rng, batch: int, num_tokens: int, span: int, mask_ratio: float):
    """[B, num_tokens] bool: round(mask_ratio * num_tokens / span) spans of `span` consecutive
    tokens per example, at random span-aligned positions, so every example masks the same number
    of tokens (static shapes). Tokens past the last whole span are never masked."""
    cells = num_tokens // span
    count = min(round(mask_ratio * num_tokens / span), cells)
    rank = jnp.argsort(row_uniform(rng, (batch, cells)), axis=-1).argsort(axis=-1)
    masked = jnp.repeat(rank < count, span, axis=1)
    return jnp.pad(masked, ((0, 0), (0, num_tokens - cells * span)))


class Conv1d(nnx.Module):
    """Whisper's Conv1d(kernel 3, padding 1) on [B, T, C], as one einsum over the 3 shifted
    frame views (through `matmul`, so it follows the model's compute-dtype policy)."""

    def __init__(self, rngs, d_in: int, d_out: int, stride: int, names=("embed", "mlp")):
        self.stride = stride
        self.kernel = param(rngs, (3, d_in, d_out), (None, *names), scale=(3 * d_in) ** -0.5)
        self.bias = param(rngs, (d_out,), (names[1],), init="zeros")

    def __call__(self, x, dtype):
        padded = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
        length = (x.shape[1] - 1) // self.stride + 1
        end = self.stride * (length - 1) + 1
        taps = jnp.stack([padded[:, k: k + end: self.stride] for k in range(3)], axis=2)
        return matmul(taps, self.kernel[...], dtype, "btkc,kcd->btd") + self.bias[...]


class AudioStem(ReconstructingStem):
    def __init__(self, config, rngs: nnx.Rngs):
        cfg = config.modalities.audio
        width = config.model.width
        self.n_mels = cfg.n_mels
        self.patch_frames = cfg.patch_frames
        self.num_tokens = num_audio_tokens(config)
        self.mel_per_token = 2 * cfg.patch_frames  # mel frames per token (conv stride 2)
        self.mask_ratio = float(config.loss.mam.mask_ratio)
        self.span = int(config.loss.mam.span)
        target_dim = self.mel_per_token * cfg.n_mels
        self.conv1 = Conv1d(rngs, cfg.n_mels, width, stride=1, names=("patch", "embed"))
        self.conv2 = Conv1d(rngs, width, width, stride=2)
        self.proj = Dense(rngs, cfg.patch_frames * width, width, names=("patch", "embed"))
        self.positions = param(rngs, (self.num_tokens, width), ("length", "embed"))
        self.init_reconstruction(rngs, config, target_dim)  # each token's normalised mel patch

    def _tokens(self, mel, dtype):
        """Scaled log-mel [B, T, n_mels] -> token embeddings [B, L, width], positions not added."""
        x = jax.nn.gelu(self.conv1(mel, dtype))
        x = jax.nn.gelu(self.conv2(x, dtype))
        x = x[:, : self.num_tokens * self.patch_frames]
        x = x.reshape(x.shape[0], self.num_tokens, -1)  # patch_frames consecutive conv frames, concatenated
        return self.proj(x, dtype)

    def _mel_patches(self, mel):
        """[B, T, n_mels] -> [B, L, 2 * patch_frames * n_mels]: each token's own mel frames."""
        used = mel[:, : self.num_tokens * self.mel_per_token]
        return used.reshape(mel.shape[0], self.num_tokens, -1)

    def embed(self, inputs, dtype):
        mel = log_mel_jax(inputs["audio/waveform"], self.n_mels)
        tokens = self._tokens(mel, dtype) + self.positions[...][None]
        return tokens, jnp.ones(tokens.shape[:2], bool)

    def masked_embed(self, inputs, rng, dtype):
        """Mask spans of tokens (the same count in every example). The masked tokens' mel frames
        are zeroed BEFORE the conv stem, whose receptive field (mel frames 2j-2 .. 2j+2 for conv
        frame j) would otherwise let the neighbouring tokens see them; and the loudness floor is
        taken over the visible frames only, so nothing of the masked audio reaches the model."""
        log_spec = log10_mel_jax(inputs["audio/waveform"], self.n_mels)
        batch, frames = log_spec.shape[:2]
        masked = span_mask(rng, batch, self.num_tokens, self.span, self.mask_ratio)
        hidden_frames = jnp.repeat(masked, self.mel_per_token, axis=1)
        hidden_frames = jnp.pad(hidden_frames, ((0, 0), (0, frames - hidden_frames.shape[1])))  # leftover: visible
        mel = jnp.where(hidden_frames[..., None], 0.0, whisper_scale(log_spec, visible=~hidden_frames))
        tokens = self._tokens(mel, dtype)
        tokens = jnp.where(masked[..., None], self.mask_token[...], tokens) + self.positions[...][None]
        target = normalized_patch_targets(self._mel_patches(whisper_scale(log_spec)))
        return tokens, jnp.ones((batch, self.num_tokens), bool), target, masked.astype(jnp.float32)


class Audio(Modality):
    name = "audio"
    objective = "mam"
    file_field = True

    def validate(self, config):
        cfg = config.modalities.audio
        if not cfg.clip_seconds > 0:
            raise ConfigError(f"modalities.audio.clip_seconds={cfg.clip_seconds} must be positive")
        if cfg.n_mels < 1 or cfg.patch_frames < 1:
            raise ConfigError(f"modalities.audio.n_mels={cfg.n_mels} and modalities.audio.patch_frames="
                              f"{cfg.patch_frames} must be at least 1")
        if num_audio_tokens(config) < 1:
            raise ConfigError(
                f"modalities.audio.clip_seconds={cfg.clip_seconds} gives {num_frames(config)} mel frames, fewer "
                f"than the {2 * cfg.patch_frames} of one token (2 x modalities.audio.patch_frames={cfg.patch_frames})")
        if not 0.0 <= config.loss.mam.mask_ratio < 1.0:
            raise ConfigError(f"loss.mam.mask_ratio={config.loss.mam.mask_ratio} must be in [0, 1)")
        if not 1 <= config.loss.mam.span <= num_audio_tokens(config):
            raise ConfigError(f"loss.mam.span={config.loss.mam.span} must be between 1 and the "
                              f"{num_audio_tokens(config)} audio tokens (modalities.audio.*)")

    def num_tokens(self, config):
        return num_audio_tokens(config)

    def array_spec(self, config):
        samples = round(config.modalities.audio.clip_seconds * SAMPLE_RATE)
        return {"audio/waveform": ((samples,), np.float32)}

    def export_constants(self, config):
        cfg = config.modalities.audio
        return {"sample_rate": SAMPLE_RATE, "clip_seconds": float(cfg.clip_seconds), "n_fft": N_FFT, "hop": HOP,
                "n_mels": int(cfg.n_mels), "patch_frames": int(cfg.patch_frames),
                "recipe": "decode (WAV/FLAC/OGG/MP3); average the channels; resample to sample_rate; cut or "
                          "zero-pad to round(clip_seconds * sample_rate) samples; float32 waveform into the "
                          "program, which computes Whisper's log-mel spectrogram itself"}

    def stem_flops(self, config):
        cfg, width = config.modalities.audio, config.model.width
        frames, tokens = num_frames(config), num_audio_tokens(config)
        conv1 = 2 * frames * 3 * cfg.n_mels * width
        conv2 = 2 * ((frames + 1) // 2) * 3 * width * width
        proj = 2 * tokens * cfg.patch_frames * width * width
        head = 2 * tokens * width * 2 * cfg.patch_frames * cfg.n_mels
        return conv1 + conv2 + proj, head

    def check_bytes(self, data):
        if not data:
            raise ValueError("is empty (0 bytes)")
        check_audio(data)  # decodes all of it, or raises ValueError with the reason
        return data

    def encode(self, value, config, assets):
        return {"audio/waveform": load_audio(value, config.modalities.audio.clip_seconds)}

    def make_stem(self, config, rngs, built=None):
        return AudioStem(config, rngs)
