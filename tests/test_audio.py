import io

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from omni.config import ConfigError, load_config
from omni.modalities.audio import (HOP, SAMPLE_RATE, Audio, AudioStem, check_audio, load_audio, log_mel,
                                   log_mel_jax, span_mask)


def speech_like(seconds: float, seed: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A voiced-speech stand-in: a glottal pulse train (gliding pitch) through two resonances
    ("formants") that move, bursts of noise ("fricatives"), and a silent gap."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    pitch = 110 + 40 * np.sin(2 * np.pi * 1.5 * t) + 20 * seed
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k * np.exp(-((k * pitch - (600 + 300 * np.sin(2 * np.pi * 2 * t))) / 300) ** 2)
                 for k in range(1, 30))
    voiced += 0.3 * sum(np.sin(k * phase) / k for k in range(1, 6))
    noise = rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 3 * t) > 0.7) * 0.2
    y = 0.3 * voiced + noise + 1e-3 * rng.standard_normal(len(t))
    y[len(t) // 2: len(t) // 2 + rate // 10] = 0.0  # a pause
    return (0.8 * y / np.abs(y).max()).astype(np.float32)


def whisper_log_scale(mel_power):
    """Whisper's scaling, written out: log10 (clamped at 1e-10), floor at max - 8, (x + 4) / 4."""
    log = np.log10(np.maximum(mel_power, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return (log + 4.0) / 4.0


def small_config(*overrides):
    """configs/tiny.py's audio settings (1.28 s clips -> 16 tokens) with a width-32 model. (The
    shared tests.conftest.small_config keeps only text and image.)"""
    model = ["--config.model.width=32", "--config.model.depth=2", "--config.model.heads=2"]
    return load_config(None, model + list(overrides))


def encoded(audio: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- log-mel

@pytest.mark.parametrize("samples", [16000, 16037])  # a whole number of hops, and not
def test_log_mel_matches_librosa(samples):
    y = speech_like(1.01, seed=0)[:samples]
    mel = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=400, hop_length=160, n_mels=80, power=2.0,
                                         center=True, pad_mode="reflect", window="hann")
    expected = whisper_log_scale(mel[:, :-1].T)  # Whisper drops the STFT's last frame
    got = log_mel(y, 16000)
    assert got.shape == (samples // 160, 80) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-3
    assert got.min() < got.max() - 1.0  # a real spectrogram, not a constant


def test_log_mel_resamples_other_rates():
    y = speech_like(0.5, seed=1, rate=44100)
    got = log_mel(y, 44100)
    expected = log_mel(librosa.resample(y, orig_sr=44100, target_sr=16000), 16000)
    assert got.shape == (8000 // HOP, 80)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_log_mel_jax_matches_numpy_on_a_batch():
    clips = np.stack([speech_like(0.64, seed=2), speech_like(0.64, seed=3)[::-1] * 0.1])
    got = np.asarray(jax.jit(log_mel_jax)(jnp.asarray(clips)))
    assert got.shape == (2, 64, 80) and got.dtype == np.float32
    for i in range(2):  # each example has its own loudness floor
        assert np.abs(got[i] - log_mel(clips[i], 16000)).max() <= 1e-3
    assert np.abs(got[0] - got[1]).max() > 0.1


def test_silence_gives_finite_constant_features():
    out = np.asarray(log_mel_jax(jnp.zeros((1, 3200))))
    np.testing.assert_allclose(out, (np.log10(1e-10) + 4) / 4)


# ----------------------------------------------------------------------------- decoding

def test_stereo_44k_int16_wav_is_mono_16k():
    stereo = (np.stack([speech_like(0.5, 4, 44100), speech_like(0.5, 5, 44100)], axis=1) * 20000).astype(np.int16)
    out = load_audio(encoded(stereo, 44100, "WAV", "PCM_16"), clip_seconds=1.0)
    assert out.shape == (16000,) and out.dtype == np.float32
    expected = librosa.resample((stereo / 32768.0).mean(axis=1).astype(np.float32), orig_sr=44100, target_sr=16000)
    np.testing.assert_allclose(out[: len(expected)], expected, atol=1e-5)
    assert len(expected) == 8000 and (out[len(expected):] == 0).all()  # zero-padded to the clip
    cut = load_audio(encoded(stereo, 44100, "WAV", "PCM_16"), clip_seconds=0.25)
    assert cut.shape == (4000,)
    np.testing.assert_allclose(cut, expected[:4000], atol=1e-3)  # only the start was decoded


@pytest.mark.parametrize("fmt,subtype,tolerance", [("FLAC", "PCM_16", 1e-4), ("OGG", "VORBIS", None),
                                                   ("MP3", "MPEG_LAYER_III", None), ("WAV", "FLOAT", 0.0)])
def test_round_trip(fmt, subtype, tolerance):
    y = speech_like(0.5, seed=6)
    out = load_audio(encoded(y, 16000, fmt, subtype), clip_seconds=0.5)
    assert out.shape == (8000,)
    if tolerance is not None:
        assert np.abs(out - y).max() <= tolerance
    else:  # lossy: the waveform is close, not equal
        assert np.corrcoef(out, y)[0, 1] > 0.9


def test_path_input(tmp_path):
    y = speech_like(0.3, seed=7)
    (tmp_path / "a.flac").write_bytes(encoded(y, 16000, "FLAC"))
    assert np.abs(load_audio(str(tmp_path / "a.flac"), 0.3) - y).max() <= 1e-4


def test_silence_is_valid():
    out = load_audio(encoded(np.zeros(1600, np.int16), 8000, "WAV", "PCM_16"), clip_seconds=0.2)
    assert out.shape == (3200,) and (out == 0).all()


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16")])
def test_truncated_file_is_a_value_error(fmt, subtype):
    data = encoded(speech_like(1.0, seed=8), 16000, fmt, subtype)
    with pytest.raises(ValueError, match="cannot decode audio"):
        load_audio(data[: len(data) // 3], 1.0)
    with pytest.raises(ValueError, match="cannot decode audio"):
        load_audio(data[:30], 1.0)


class FakeDecoder:
    """An audioread backend (what ffmpeg is to it) that hands back `pcm` (float [frames, channels])
    as 16-bit blocks and reports `duration`: the fallback's path, whatever the machine has."""

    def __init__(self, pcm: np.ndarray, rate: int, duration: float | None):
        self.blocks = np.array_split(np.round(pcm * 32767).astype("<i2"), max(1, len(pcm) // 1024))
        self.samplerate, self.channels, self.duration = rate, pcm.shape[1], duration

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return (block.tobytes() for block in self.blocks)  # frames in order, channels interleaved


def decode_with(monkeypatch, decoder):
    import audioread
    opened = []
    monkeypatch.setattr(audioread, "audio_open", lambda path: opened.append(path) or decoder)
    return opened


def test_a_cut_file_that_the_fallback_decodes_in_part_is_refused(monkeypatch, tmp_path):
    """libsndfile reads a cut FLAC's header (16,000 frames) and stops ('lost sync'); ffmpeg then
    decodes the first third and ends without an error, as it does where it is installed. The
    frames must be checked against the header, not zero-padded into a near-silent clip."""
    y = speech_like(1.0, seed=8)
    data = encoded(y, 16000, "FLAC", "PCM_16")
    opened = decode_with(monkeypatch, FakeDecoder(y[:5120, None], 16000, duration=0.32))
    with pytest.raises(ValueError, match=r"truncated \(decoded 5120 samples per channel of the 16000 its header"):
        load_audio(data[: len(data) // 3], 1.0)
    assert opened  # the fallback ran: libsndfile alone would not have reached this
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.flac: truncated \(decoded 5120 .* of the 16000"):
        check_audio(str(tmp_path / "cut.flac"))
    load_audio(data[: len(data) // 3], 0.2)  # a clip of what is left is whole: 3,200 + 1,600 frames


def test_the_fallback_decodes_what_libsndfile_cannot_and_checks_its_duration(monkeypatch):
    """Bytes libsndfile cannot open at all: the backend's decoding is used, mixed to mono, and
    checked against the duration the backend reports (the container's); without one, no check."""
    stereo = np.stack([speech_like(0.52, seed=3), 0.5 * speech_like(0.52, seed=4)], axis=1)[:8192]
    unknown = b"not a format libsndfile knows\n" * 40
    decode_with(monkeypatch, FakeDecoder(stereo, 16000, duration=8192 / 16000))
    out = load_audio(unknown, 0.5)
    np.testing.assert_allclose(out[:8000], stereo.mean(axis=1)[:8000], atol=1e-4)
    decode_with(monkeypatch, FakeDecoder(stereo, 16000, duration=2.0))
    with pytest.raises(ValueError, match=r"truncated \(decoded 8192 .* of the 32000 its header declares"):
        check_audio(unknown)
    decode_with(monkeypatch, FakeDecoder(stereo, 16000, duration=None))
    assert check_audio(unknown) is None  # no length declared: nothing to hold it to


def test_without_a_fallback_decoder_the_libsndfile_error_is_given(monkeypatch):
    import audioread

    def no_backend(path):
        raise audioread.NoBackendError()
    monkeypatch.setattr(audioread, "audio_open", no_backend)
    data = encoded(speech_like(1.0, seed=8), 16000, "FLAC", "PCM_16")
    with pytest.raises(ValueError, match="cannot decode audio: .*lost sync"):
        load_audio(data[: len(data) // 3], 1.0)


def test_bad_data_is_a_value_error():
    with pytest.raises(ValueError, match="cannot decode audio"):
        load_audio(b"", 1.0)
    with pytest.raises(ValueError, match="cannot decode audio"):
        load_audio(b"a text file, not audio\n" * 20, 1.0)
    with pytest.raises(ValueError, match="zero length"):
        load_audio(encoded(np.zeros((0, 1), np.int16), 16000, "WAV", "PCM_16"), 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_a_value_error(bad):
    y = speech_like(0.2, seed=9)
    y[100] = bad
    with pytest.raises(ValueError, match="non-finite"):
        load_audio(encoded(y, 16000, "WAV", "FLOAT"), 0.2)


def test_modality_prepare_and_encode(tmp_path):
    config = small_config()
    audio = Audio()
    audio.validate(config)
    (tmp_path / "ok.wav").write_bytes(encoded(speech_like(2.0, seed=10, rate=22050), 22050, "WAV", "PCM_16"))
    stored = audio.prepare("ok.wav", tmp_path)
    arrays = audio.encode(stored, config, {})
    ((shape, dtype),) = audio.array_spec(config).values()
    assert arrays["audio/waveform"].shape == shape == (20480,) and dtype == np.float32
    assert audio.num_tokens(config) == 16  # 128 frames -> 64 conv frames -> 16 tokens of 4
    good = encoded(speech_like(2.0, seed=10), 16000, "WAV", "PCM_16")
    (tmp_path / "cut.wav").write_bytes(good[: len(good) // 2])  # the clip's part is intact, the rest is not
    with pytest.raises(ValueError, match="truncated"):
        audio.prepare("cut.wav", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        audio.prepare("missing.wav", tmp_path)


def test_validate_rejects_a_clip_shorter_than_one_token():
    with pytest.raises(ConfigError, match="modalities.audio"):
        Audio().validate(small_config("--config.modalities.audio.clip_seconds=0.05"))
    with pytest.raises(ConfigError, match="loss.mam.span"):
        Audio().validate(small_config("--config.loss.mam.span=17"))


# ----------------------------------------------------------------------------- the stem

@pytest.fixture(scope="module")
def stem_setup():
    config = small_config()
    stem = AudioStem(config, nnx.Rngs(0))
    clips = np.stack([speech_like(1.28, seed=11), speech_like(1.28, seed=12)[::-1].copy()])
    return config, stem, clips


def _masked(stem, clips, rng):
    graphdef, state = nnx.split(stem)

    @jax.jit
    def run(state, waveform):
        return nnx.merge(graphdef, state).masked_embed({"audio/waveform": waveform}, rng, jnp.float32)

    return [np.asarray(a) for a in run(state, jnp.asarray(clips))]


def test_span_mask_counts_and_spans():
    masked = np.asarray(span_mask(jax.random.key(0), 64, num_tokens=17, span=2, mask_ratio=0.5))
    assert masked.shape == (64, 17)
    np.testing.assert_array_equal(masked.sum(1), 8)  # round(0.5 * 17 / 2) = 4 spans of 2
    pairs = masked[:, :16].reshape(64, 8, 2)
    assert (pairs[..., 0] == pairs[..., 1]).all() and not masked[:, 16].any()  # whole aligned spans
    assert len({m.tobytes() for m in masked}) > 32  # random per example


def test_stem_shapes_and_masking(stem_setup):
    config, stem, clips = stem_setup
    tokens, valid = stem.embed({"audio/waveform": jnp.asarray(clips)}, jnp.float32)
    assert tokens.shape == (2, 16, 32) and valid.shape == (2, 16) and bool(valid.all())
    tokens, valid, target, picked = _masked(stem, clips, jax.random.key(1))
    assert tokens.shape == (2, 16, 32) and valid.all()
    assert target.shape == (2, 16, 8 * 80) and picked.shape == (2, 16) and picked.dtype == np.float32
    np.testing.assert_array_equal(picked.sum(1), 8)  # = mask_ratio * L, in every example
    spans = picked.reshape(2, 8, 2)
    assert (spans[..., 0] == spans[..., 1]).all()  # runs of loss.mam.span=2
    np.testing.assert_allclose(target.mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(target.var(-1), 1, atol=1e-3)
    # Masked tokens are all the same learned mask token (+ their position).
    mask_rows = tokens[picked > 0] - np.asarray(stem.positions[...])[np.nonzero(picked)[1]]
    np.testing.assert_allclose(mask_rows, np.broadcast_to(np.asarray(stem.mask_token[...]), mask_rows.shape),
                               atol=1e-6)


def test_masked_audio_does_not_leak(stem_setup):
    """Replacing the audio of a masked run of tokens (by something much louder, which would also
    move the loudness floor) changes none of that example's masked_embed tokens, although the
    unmasked tokens on both sides of the run see those frames through the conv stem."""
    config, stem, clips = stem_setup
    rng = jax.random.key(2)
    tokens, _, target, picked = _masked(stem, clips, rng)
    # A run [a, b) of masked tokens with an unmasked token on each side.
    edges = np.diff(np.concatenate([[0], picked[0], [0]]))
    runs = [(a, b) for a, b in zip(np.nonzero(edges > 0)[0], np.nonzero(edges < 0)[0]) if a > 0 and b < 16]
    a, b = runs[0]
    # Token t owns mel frames 8t .. 8t+7; frame k sees samples [160 k - 200, 160 k + 200). So the
    # samples [1280 a + 40, 1280 b - 200) reach exactly the frames of the run, all of them.
    changed = clips.copy()
    changed[0, 1280 * a + 40: 1280 * b - 200] = np.random.default_rng(0).standard_normal(1280 * (b - a) - 240) * 5
    tokens2, _, target2, picked2 = _masked(stem, changed, rng)
    np.testing.assert_array_equal(picked2, picked)
    np.testing.assert_array_equal(tokens2[0], tokens[0])
    np.testing.assert_array_equal(tokens2[1], tokens[1])
    assert np.abs(target2[0, a] - target[0, a]).max() > 0.1  # the target does see it
    # The unmasked pass sees it in the run's tokens AND in both neighbours (conv receptive field).
    embed = jax.jit(lambda w: stem.embed({"audio/waveform": w}, jnp.float32)[0])
    seen = np.abs(np.asarray(embed(jnp.asarray(changed))) - np.asarray(embed(jnp.asarray(clips))))[0].max(-1)
    assert seen[a] > 1e-3 and seen[a - 1] > 1e-4 and seen[b] > 1e-4


def test_reconstruction_gradient_is_finite(stem_setup):
    config, stem, clips = stem_setup
    batch = jnp.asarray(np.concatenate([clips, np.zeros_like(clips[:1])]))  # silence included

    def loss(stem):
        tokens, valid, target, picked = stem.masked_embed({"audio/waveform": batch}, jax.random.key(3), jnp.float32)
        per_token = stem.reconstruction_loss(tokens, target, jnp.float32)
        assert per_token.shape == (3, 16)
        # Every token scored: with hidden = tokens (no encoder to mix them), masked tokens alone
        # would reach only the mask token, by design.
        return per_token.mean()

    value, grads = nnx.jit(nnx.value_and_grad(loss))(stem)
    leaves = jax.tree.leaves(grads)
    assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)).all() for g in leaves)
    for g in (grads.conv1.kernel, grads.mask_token, grads.head.kernel):  # reaches every part
        assert np.abs(np.asarray(g[...])).max() > 0
