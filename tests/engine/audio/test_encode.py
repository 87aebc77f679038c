"""Loudness and encoding with the real libsndfile, pyloudnorm and FluidSynth (no mocks)."""

from __future__ import annotations

import io
import time

import numpy as np
import pretty_midi
import pytest
import soundfile
from scipy.signal import resample_poly

from bench.render_bench import four_voice_midi
from engine.audio.encode import (
    encode,
    integrated_loudness,
    normalize_loudness,
    render_audio,
    true_peak,
)
from engine.audio.synth import TAIL_MAX_S, fluidsynth_available, get_renderer
from engine.errors import BadMidi
from engine.settings import Settings

RATE = 44100
needs_fluidsynth = pytest.mark.skipif(
    not fluidsynth_available(),
    reason="libfluidsynth is not installed (apt-get install libfluidsynth3)",
)


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


four_voices = four_voice_midi  # the bench's dense 4-voice music, one definition


def midi_bytes(midi: pretty_midi.PrettyMIDI) -> bytes:
    buf = io.BytesIO()
    midi.write(buf)
    return buf.getvalue()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """The audio as it plays: stereo; a mono file on both speakers, as players put it."""
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    if samples.shape[1] == 1:
        samples = np.repeat(samples, 2, axis=1)
    return samples, rate


def channels(data: bytes) -> int:
    return soundfile.info(io.BytesIO(data)).channels


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    """10 s of rendered 4-voice piano, as it leaves the synthesizer (quiet)."""
    renderer = get_renderer(settings())
    return renderer.render(four_voices(10.0), program=None, max_seconds=60).samples


def _signals(music: np.ndarray) -> dict[str, tuple[np.ndarray, int]]:
    t = np.arange(5 * RATE) / RATE
    tone = np.sin(2 * np.pi * 997 * t)
    rng = np.random.default_rng(0)
    return {
        "music, stereo": (music, RATE),
        "music, mono": (music.mean(axis=1), RATE),
        "music, one channel silent": (np.column_stack([music[:, 0], 0 * music[:, 1]]), RATE),
        "997 Hz tone": (0.5 * tone, RATE),
        "50 Hz tone (the high pass's slope)": (0.5 * np.sin(2 * np.pi * 50 * t), RATE),
        "8 kHz tone (the shelf)": (0.2 * np.sin(2 * np.pi * 8000 * t), RATE),
        # loud, then under the absolute gate, then under the relative gate: both gates decide
        "gated": (
            np.concatenate(
                [
                    0.5 * tone[: 2 * RATE],
                    1e-5 * tone[: 2 * RATE],
                    0.05 * tone[:RATE],
                    0.5 * tone[:RATE],
                ]
            ),
            RATE,
        ),  # fmt: skip
        "noise, stereo": (0.1 * rng.standard_normal((3 * RATE, 2)), RATE),
        "shorter than a block": (0.3 * tone[: RATE // 10], RATE),
        "48 kHz": (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * 48000) / 48000), 48000),
        "22.05 kHz": (music[::2], 22050),
    }


def test_loudness_matches_pyloudnorm(music):
    """Our vectorised BS.1770 meter against pyloudnorm on the same audio: within 0.01 LU (the
    promise is 0.1) on tones, gated audio, real rendered music, mono and stereo."""
    import pyloudnorm

    for name, (x, rate) in _signals(music).items():
        ref_input = np.asarray(x, np.float64)
        if len(ref_input) < 0.4 * rate + 1:  # pyloudnorm refuses it; we measure it repeated
            reps = -(-int(np.ceil(0.4 * rate) + 1) // len(ref_input))
            ref_input = np.tile(ref_input, reps)
        ours = integrated_loudness(np.asarray(x, np.float32), rate)
        ref = pyloudnorm.Meter(rate).integrated_loudness(ref_input)
        assert ours == pytest.approx(ref, abs=0.01), name


def test_loudness_of_silence_and_nothing():
    assert integrated_loudness(np.zeros((2 * RATE, 2), np.float32), RATE) == float("-inf")
    assert integrated_loudness(np.full(RATE, 1e-6, np.float32), RATE) == float("-inf")  # < -70
    assert integrated_loudness(np.zeros((0, 2), np.float32), RATE) == float("-inf")


def test_stereo_that_is_one_channel_twice_is_encoded_as_mono(music):
    """TinySoundFont's "stereo" (side 50 dB under mid) becomes one channel: the same sound on
    both speakers, the same loudness; real stereo (different channels) stays stereo."""
    loud = normalize_loudness(music, RATE)
    nearly_mono = np.column_stack([loud[:, 0], loud[:, 0] * 0.999])
    tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(len(loud)) / RATE)
    wide = np.column_stack([loud[:, 0], tone.astype(np.float32)])
    for x, expected in ((nearly_mono, 1), (wide, 2), (loud[:, 0], 1)):
        encoded = encode(x, RATE, "ogg")
        assert channels(encoded.data) == expected
        played, rate = decode(encoded.data)
        stereo = x if x.ndim == 2 else np.column_stack([x, x])
        assert integrated_loudness(played, rate) == pytest.approx(
            integrated_loudness(stereo, RATE), abs=0.2
        )
    silence = np.zeros((RATE, 2), np.float32)
    assert channels(encode(silence, RATE, "ogg").data) == 2  # nothing to judge: left alone
    assert channels(encode(nearly_mono, RATE, "ogg", mono_when_same=False).data) == 2


def test_loudness_reaches_the_target(music):
    loud = normalize_loudness(music, RATE, target_lufs=-16.0)
    assert loud.dtype == np.float32 and loud.shape == music.shape
    assert abs(integrated_loudness(loud, RATE) - -16.0) < 1.0
    # Checked against the whole signal oversampled, not the estimate normalize_loudness uses.
    oversampled = resample_poly(loud, 4, 1, axis=0)
    assert 20 * np.log10(np.abs(oversampled).max()) <= -1.0 + 0.05


def test_loudness_is_peak_safe():
    # A quiet tone with rare full-scale clicks: -16 LUFS would push the clicks far past 0 dBFS.
    t = np.arange(5 * RATE) / RATE
    x = 0.01 * np.sin(2 * np.pi * 220 * t)
    x[::RATE] = 0.9
    stereo = np.column_stack([x, x]).astype(np.float32)
    out = normalize_loudness(stereo, RATE, target_lufs=-16.0, peak_dbfs=-1.0)
    assert 20 * np.log10(true_peak(out)) <= -1.0 + 0.01
    assert integrated_loudness(out, RATE) < -16.0  # gain was reduced, not the peaks clipped


def test_silence_comes_back_unchanged():
    silent = np.zeros((RATE, 2), np.float32)
    assert normalize_loudness(silent, RATE) is silent
    assert normalize_loudness(np.zeros((0, 2), np.float32), RATE).shape == (0, 2)


def test_short_audio_is_normalised():
    t = np.arange(int(0.2 * RATE)) / RATE
    tone = (0.01 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = normalize_loudness(np.column_stack([tone, tone]), RATE)
    assert abs(integrated_loudness(out, RATE) - -16.0) < 1.0


@pytest.mark.parametrize(("fmt", "mime"), [("ogg", "audio/ogg"), ("mp3", "audio/mpeg")])
def test_encoded_audio_decodes(music, fmt, mime):
    loud = normalize_loudness(music, RATE)
    encoded = encode(loud, RATE, fmt, cap_bytes=10 * 1024 * 1024)
    assert encoded.fmt == fmt and encoded.mime == mime and not encoded.shortened
    samples, rate = decode(encoded.data)
    assert rate == RATE and samples.shape[1] == 2
    assert abs(len(samples) / rate - len(music) / RATE) < 0.1  # MP3 adds encoder padding
    assert abs(encoded.seconds - len(music) / RATE) < 1e-6
    assert np.sqrt(np.mean(samples**2)) > 0.01
    assert abs(integrated_loudness(samples, rate) - -16.0) < 1.0


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_a_small_cap_lowers_quality_then_cuts(fmt):
    # Noise is the hardest thing to compress: 20 s of it into 60 KB needs a cut.
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal((20 * RATE, 2))).astype(np.float32)
    cap = 60_000
    encoded = encode(noise, RATE, fmt, cap_bytes=cap)
    assert len(encoded.data) <= cap
    assert encoded.shortened and 1.0 <= encoded.seconds < 20.0
    samples, _ = decode(encoded.data)
    assert abs(len(samples) / RATE - encoded.seconds) < 0.1
    assert np.abs(samples[-100:]).max() < 0.05  # faded out, not chopped mid-sound


def test_an_impossible_cap_is_a_configuration_error():
    with pytest.raises(ValueError, match="too small"):
        encode(np.zeros((5 * RATE, 2), np.float32), RATE, "ogg", cap_bytes=2_000)


def test_render_audio_from_midi_bytes():
    encoded = render_audio(midi_bytes(four_voices(4.0)), settings(audio_format="ogg"))
    samples, rate = decode(encoded.data)
    assert 4.0 <= len(samples) / rate <= 4.0 + TAIL_MAX_S + 0.05
    assert abs(integrated_loudness(samples, rate) - -16.0) < 1.0
    assert not encoded.shortened


def test_corrupt_midi_is_bad_midi():
    with pytest.raises(BadMidi):
        render_audio(b"MThd\x00\x00\x00\x06garbage", settings())


def test_hours_long_midi_is_capped_in_bounded_time():
    midi = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    for i in range(4 * 3600 // 4):  # four hours, a note every 4 s (MIDI parsing is the cost)
        inst.notes.append(pretty_midi.Note(80, 60 + i % 12, 4.0 * i, 4.0 * i + 3.5))
    inst.notes.append(pretty_midi.Note(80, 40, 0.0, 4 * 3600.0))  # and one held throughout
    midi.instruments.append(inst)
    data = midi_bytes(midi)
    t0 = time.perf_counter()
    encoded = render_audio(data, settings(max_audio_s=8.0))
    assert time.perf_counter() - t0 < 20.0
    assert encoded.shortened
    assert 8.0 <= encoded.seconds <= 8.0 + TAIL_MAX_S + 0.05


@needs_fluidsynth
@pytest.mark.slow
def test_the_longest_allowed_piece_fits_the_cap():
    s = settings()
    midi = four_voices(s.max_audio_s)
    encoded = render_audio(midi_bytes(midi), s)
    assert len(encoded.data) <= s.upload_cap_bytes
    assert not encoded.shortened  # the default cap holds a whole max-length piece
    assert encoded.seconds >= s.max_audio_s
    info = soundfile.info(io.BytesIO(encoded.data))
    assert info.format == "OGG" and info.duration >= s.max_audio_s
