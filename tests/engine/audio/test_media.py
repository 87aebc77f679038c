"""A result's media: the same files as each part makes alone, a bad MIDI refused before anything
starts, a stop between stages honoured, and mono audio measured as the stereo it plays as."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from engine.audio import media
from engine.audio.encode import integrated_loudness, render_audio
from engine.audio.pianoroll import piano_roll_png
from engine.audio.renderer import TAIL_BLOCK_S
from engine.audio.score import engrave_result
from engine.errors import BadMidi
from engine.music.notes import Note, Piece
from engine.music.result_midi import split_result, to_midi_bytes
from engine.settings import Settings

pytest.importorskip("verovio")
pytest.importorskip("resvg_py")


def settings() -> Settings:
    return Settings(_env_file=None)


def result_midi() -> bytes:
    seed = Piece(tuple(Note(float(i), 1.0, 60 + i % 5, 80) for i in range(8)))
    cont = Piece(tuple(Note(8.0 + i / 2, 0.5, 67 - i % 7, 80) for i in range(16)))
    return to_midi_bytes(seed, cont)


def test_the_media_are_what_each_part_makes_alone():
    midi = result_midi()
    got = media.render_media(midi, settings(), program=None, roll_title="t", score_title="M #1")

    seed, cont = split_result(midi)
    assert got.piano_roll == piano_roll_png(seed, cont, title="t")
    alone = engrave_result(midi, seed, cont, title="M #1")
    assert got.score.pages == alone.pages and got.score.musicxml == alone.musicxml
    assert got.score.pdf is not None and got.score.pdf[:5] == b"%PDF-"
    one = render_audio(midi, settings())
    played, rate = soundfile.read(io.BytesIO(got.audio.data), dtype="float32")
    assert rate == settings().sample_rate and got.audio.fmt == one.fmt == "ogg"
    # FluidSynth's reverb keeps a residue between renders of one synth: the release tail may
    # end one block sooner or later (tinysoundfont's renders are identical)
    assert got.audio.seconds == pytest.approx(one.seconds, abs=TAIL_BLOCK_S + 1e-6)
    assert got.engrave_s > 0 and got.audio_s > 0


def test_a_bad_midi_is_refused_before_anything_starts():
    calls: list[str] = []
    with pytest.raises(BadMidi):
        media.render_media(
            b"MThd\x00\x00\x00\x06garbage",
            settings(),
            program=None,
            roll_title="t",
            score_title="t",
            between=lambda: calls.append("between"),
        )
    assert calls == []


def test_a_stop_between_stages_ends_it_before_the_engraving():
    class Stop(Exception):
        pass

    steps: list[str] = []

    def stop() -> None:
        raise Stop

    with pytest.raises(Stop):
        media.render_media(
            result_midi(),
            settings(),
            program=None,
            roll_title="t",
            score_title="t",
            step=lambda: steps.append("step"),
            between=stop,
        )
    assert steps == []  # the engraving never started


def test_mono_from_stereo_is_measured_as_the_stereo_it_plays_as():
    rng = np.random.default_rng(0)
    mono = (0.1 * rng.standard_normal(3 * 32000)).astype(np.float32)
    stereo = np.column_stack([mono, mono])
    as_stereo = integrated_loudness(stereo, 32000)
    assert integrated_loudness(mono, 32000, both_speakers=True) == pytest.approx(
        as_stereo, abs=1e-3
    )
    # one speaker: half the power
    assert integrated_loudness(mono, 32000) == pytest.approx(as_stereo - 3.0103, abs=1e-3)
