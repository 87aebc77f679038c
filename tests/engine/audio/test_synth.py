"""Synthesis with the real FluidSynth library and the real TinySoundFont (no mocks)."""

from __future__ import annotations

import time

import numpy as np
import pretty_midi
import pytest

from bench.render_bench import four_voice_midi
from engine.audio.synth import (
    TAIL_MAX_S,
    FluidSynthRenderer,
    TinySoundFontRenderer,
    fluidsynth_available,
    get_renderer,
)
from engine.errors import BadMidi, BadSoundfont
from engine.settings import Settings

needs_fluidsynth = pytest.mark.skipif(
    not fluidsynth_available(),
    reason="libfluidsynth is not installed (apt-get install libfluidsynth3)",
)
BACKENDS = [
    pytest.param("fluidsynth", marks=needs_fluidsynth, id="fluidsynth"),
    pytest.param("tinysoundfont", id="tinysoundfont"),
]


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def one_note(pitch: int = 69, seconds: float = 1.0, start: float = 0.0, program: int = 0):
    midi = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=program)
    inst.notes.append(pretty_midi.Note(velocity=100, pitch=pitch, start=start, end=start + seconds))
    midi.instruments.append(inst)
    return midi


four_voices = four_voice_midi  # the bench's dense 4-voice music, one definition


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def strongest_hz(samples: np.ndarray, rate: int) -> float:
    mono = samples.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.fft.rfftfreq(len(mono), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a4_renders_at_440_hz(backend):
    renderer = get_renderer(settings(), prefer=backend)
    audio = renderer.render(one_note(69), program=None, max_seconds=60)
    assert audio.samples.dtype == np.float32 and audio.samples.shape[1] == 2
    assert rms(audio.samples) > 1e-3
    assert abs(strongest_hz(audio.samples, audio.sample_rate) - 440.0) < 3.0
    assert not audio.shortened


@pytest.mark.parametrize("backend", BACKENDS)
def test_length_is_the_midi_plus_a_bounded_tail(backend):
    renderer = get_renderer(settings(), prefer=backend)
    midi = four_voices(6.0)
    audio = renderer.render(midi, program=None, max_seconds=60)
    assert 6.0 <= audio.seconds <= 6.0 + TAIL_MAX_S + 0.01
    assert rms(audio.samples) > 1e-3
    # The tail fades: its last block is far below the music.
    assert np.abs(audio.samples[-2205:]).max() < 0.1 * np.abs(audio.samples).max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_render_starts_clean_after_a_loud_one(backend):
    renderer = get_renderer(settings(), prefer=backend)
    loud = four_voices(3.0)
    for inst in loud.instruments:
        inst.program = 48  # strings: long release, lots of reverb
    renderer.render(loud, program=None, max_seconds=60)
    audio = renderer.render(one_note(69, start=1.0), program=None, max_seconds=60)
    before_note = audio.samples[: int(0.9 * audio.sample_rate)]
    assert np.abs(before_note).max() < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_pieces_are_cut_in_bounded_time(backend):
    renderer = get_renderer(settings(), prefer=backend)
    midi = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    for i in range(3 * 3600 * 2):  # three hours, a note every half second
        inst.notes.append(pretty_midi.Note(80, 60 + i % 12, i * 0.5, i * 0.5 + 0.4))
    inst.notes.append(pretty_midi.Note(80, 40, 0.0, 3 * 3600.0))  # one note held for hours
    midi.instruments.append(inst)
    t0 = time.perf_counter()
    audio = renderer.render(midi, program=None, max_seconds=5.0)
    assert time.perf_counter() - t0 < 10.0
    assert audio.shortened
    assert 5.0 <= audio.seconds <= 5.0 + TAIL_MAX_S + 0.01


@pytest.mark.parametrize("backend", BACKENDS)
def test_drums_only_renders(backend):
    # It is the model's output that gets rendered: be lenient and play the kit.
    renderer = get_renderer(settings(), prefer=backend)
    midi = pretty_midi.PrettyMIDI()
    kit = pretty_midi.Instrument(program=0, is_drum=True)
    for i in range(8):
        kit.notes.append(pretty_midi.Note(100, 36 if i % 2 == 0 else 38, i * 0.25, i * 0.25 + 0.1))
    midi.instruments.append(kit)
    audio = renderer.render(midi, program=None, max_seconds=60)
    assert rms(audio.samples) > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_program_overrides_the_instrument(backend):
    renderer = get_renderer(settings(), prefer=backend)
    piano = renderer.render(one_note(69), program=None, max_seconds=60).samples
    flute = renderer.render(one_note(69), program=73, max_seconds=60).samples
    n = min(len(piano), len(flute))
    assert rms(piano[:n] - flute[:n]) > 0.3 * rms(piano[:n])


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_notes_is_bad_midi(backend):
    renderer = get_renderer(settings(), prefer=backend)
    midi = pretty_midi.PrettyMIDI()
    midi.instruments.append(pretty_midi.Instrument(program=0))
    with pytest.raises(BadMidi, match="nothing to render"):
        renderer.render(midi, program=None, max_seconds=60)


@needs_fluidsynth
def test_fluidsynth_is_chosen_and_loaded_once():
    first = get_renderer(settings())
    assert isinstance(first, FluidSynthRenderer)
    assert get_renderer(settings()) is first
    assert isinstance(get_renderer(settings(), prefer="tinysoundfont"), TinySoundFontRenderer)


def test_without_libfluidsynth_the_fallback_is_used_with_one_warning(monkeypatch, caplog):
    import engine.audio.fluidsynth_renderer as fluidsynth_renderer
    import engine.audio.synth as render

    # As if `import fluidsynth` had raised (the library is not installed).
    monkeypatch.setattr(fluidsynth_renderer, "_pyfluidsynth_tried", True)
    monkeypatch.setattr(fluidsynth_renderer, "_pyfluidsynth_module", None)
    monkeypatch.setattr(render, "_warned_fallback", False)
    with caplog.at_level("WARNING", logger="engine.audio.synth"):
        first = get_renderer(settings())
        second = get_renderer(settings(), prefer="fluidsynth")
    assert isinstance(first, TinySoundFontRenderer) and second is first
    assert len([r for r in caplog.records if "TinySoundFont" in r.message]) == 1


def test_missing_soundfont_names_the_setting(tmp_path):
    missing = tmp_path / "nope.sf2"
    with pytest.raises(BadSoundfont, match="MOTIF_SOUNDFONT") as info:
        get_renderer(settings(soundfont=str(missing)))
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "content", [b"\x00garbage" * 500, b"RIFF\x10\x00\x00\x00sfbkLIST" + b"\xff" * 64]
)
def test_corrupt_soundfont_names_the_setting(tmp_path, backend, content):
    corrupt = tmp_path / "corrupt.sf2"
    corrupt.write_bytes(content)
    with pytest.raises(BadSoundfont, match="MOTIF_SOUNDFONT") as info:
        get_renderer(settings(soundfont=str(corrupt)), prefer=backend)
    assert str(corrupt) in str(info.value)
