"""MusicXML out: the notes on Motif's grid, read back by music21 (MuseScore's format, a second
reader), with the key, metre, tempo and instrument of the seed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from engine.audio.score import result_key
from engine.music.measures import _VALUES, TICKS, _split, grid_length
from engine.music.midi import load_seed
from engine.music.musicxml import score_xml
from engine.music.notes import Note, Piece
from engine.music.result_midi import to_midi_bytes
from engine.music.spelling import key_fifths, spelling

music21 = pytest.importorskip("music21")


def parse(xml: str):  # type: ignore[no-untyped-def]
    return music21.converter.parse(xml, format="musicxml")


def sounding_notes(score) -> list[tuple[int, int, int]]:  # type: ignore[no-untyped-def]
    """(onset, length, pitch) of every sounding note, ties joined; times in grid ticks (music21
    reads exact fractions, so rounding only removes float noise)."""
    out = []
    for n in score.stripTies().flatten().notes:
        for p in n.pitches:
            onset, length = float(n.offset) * TICKS, float(n.quarterLength) * TICKS
            assert abs(onset - round(onset)) < 1e-6 and abs(length - round(length)) < 1e-6
            out.append((round(onset), round(length), p.midi))
    return sorted(out)


def on_grid(piece: Piece) -> list[tuple[int, int, int]]:
    """What the writer promises: onsets on 12ths of a beat, lengths on the model's bins."""
    return sorted(
        (round(n.start * TICKS), grid_length(round(n.duration * TICKS)), n.pitch)
        for n in piece.notes
    )


def melody_and_chords() -> tuple[Piece, Piece]:
    """A 3/4 seed in D major with a chord, a triplet and a note tied over the bar line, and a
    continuation in two voices (melody over a held bass)."""
    seed = Piece(
        notes=(
            Note(0.0, 1.0, 62),
            Note(1.0, 1 / 3, 66),
            Note(4 / 3, 1 / 3, 69),
            Note(5 / 3, 1 / 3, 66),
            Note(2.0, 2.0, 74),  # over the bar line: tied
            Note(4.0, 0.5, 73),
            Note(4.5, 0.5, 71),
            Note(5.0, 1.0, 69),
            Note(5.0, 1.0, 62),  # a chord with the A
            Note(5.0, 1.0, 66),
        ),
        tempo_bpm=96.0,
        time_signature=(3, 4),
        program=73,
    )
    cont = Piece(
        notes=(
            Note(6.0, 3.0, 50),  # a held bass under ...
            Note(6.0, 1.0, 74),  # ... a moving melody
            Note(7.0, 0.75, 76),
            Note(7.75, 0.25, 78),
            Note(8.0, 1.0, 79),
            Note(9.0, 3.0, 74),
            Note(9.0, 3.0, 45),
        ),
        tempo_bpm=96.0,
        time_signature=(3, 4),
        program=73,
    )
    return seed, cont


def test_midi_to_musicxml_and_back_keeps_the_notes_on_the_grid():
    seed, cont = melody_and_chords()
    midi = to_midi_bytes(seed, cont)
    read = load_seed(midi)  # the result file (both tracks), as a MIDI reader gets it
    assert len(read.notes) == len(seed.notes) + len(cont.notes)
    xml = score_xml(read, Piece((), 96.0, (3, 4), 73), key=(2, "major"))
    assert sounding_notes(parse(xml)) == on_grid(read)
    both = score_xml(seed, cont, key=(2, "major"))
    assert sounding_notes(parse(both)) == sorted(on_grid(seed) + on_grid(cont))


def test_played_notes_are_quantised_to_the_grid():
    """Human timing (onsets a little off, notes a little short) lands on the grid: no 64th
    rests, no odd ties."""
    played = Piece(
        notes=tuple(
            Note(start=i + (0.02 if i % 2 else -0.0), duration=0.9, pitch=60 + i % 5)
            for i in range(8)
        ),
    )
    notes = sounding_notes(parse(score_xml(played, Piece(()), key=(0, "major"))))
    assert [n[:2] for n in notes] == [(i * TICKS, TICKS) for i in range(8)]


def test_the_score_says_key_metre_tempo_and_instrument():
    seed, cont = melody_and_chords()
    score = parse(score_xml(seed, cont, key=(2, "major"), title="Motif #7"))
    ks = score.recurse().getElementsByClass("KeySignature").first()
    assert ks.sharps == 2
    ts = score.recurse().getElementsByClass("TimeSignature").first()
    assert (ts.numerator, ts.denominator) == (3, 4)
    mm = score.recurse().getElementsByClass("MetronomeMark").first()
    assert mm.number == pytest.approx(96.0)
    inst = score.parts[0].getInstrument()
    assert inst.midiProgram == 73 and "Flute" in (inst.instrumentName or inst.partName)
    assert score.metadata.title == "Motif #7"


def test_polyphony_goes_on_a_grand_staff_and_a_melody_on_one():
    seed, cont = melody_and_chords()
    assert "<staves>2</staves>" in score_xml(seed, cont, key=(2, "major"))
    melody = Piece(tuple(Note(float(i), 1.0, 67 + i % 3) for i in range(8)))
    xml = score_xml(melody, Piece(()), key=(0, "major"))
    assert "<staves>" not in xml and "<sign>G</sign>" in xml
    low = Piece(tuple(Note(float(i), 1.0, 43 + i % 3) for i in range(8)))
    assert "<sign>F</sign>" in score_xml(low, Piece(()), key=(0, "major"))


def test_the_seed_is_marked():
    seed, cont = melody_and_chords()
    xml = score_xml(seed, cont, key=(2, "major"))
    assert xml.count("<rehearsal>Motif</rehearsal>") == 1
    assert "light-light" in xml  # the double bar where the continuation starts
    blue = xml.count('color="#2F5F9E"')
    assert blue == len(seed.notes) + 1  # every seed note head, +1 for the tied-over half
    alone = score_xml(None, cont, key=(2, "major"))
    assert "<rehearsal>" not in alone and "color=" not in alone


@pytest.mark.parametrize(
    ("key", "fifths"),
    [
        ((0, "major"), 0),
        ((9, "minor"), 0),
        ((2, "major"), 2),
        ((5, "major"), -1),
        ((7, "minor"), -2),
    ],
)
def test_key_signatures(key, fifths):
    assert key_fifths(*key) == fifths


def test_spelling_follows_the_key():
    assert spelling(2)[6] == ("F", 1) and spelling(-3)[3] == ("E", -1)
    assert spelling(6)[5] == ("E", 1)  # F# major spells its leading note E#
    assert spelling(0)[1] == ("C", 1) and spelling(-1)[10] == ("B", -1)


def test_accidentals_and_octaves_read_back_right():
    chromatic = Piece(tuple(Note(float(i), 1.0, 59 + i) for i in range(14)))
    for fifths_key in ((0, "major"), (2, "major"), (3, "minor")):
        got = sounding_notes(parse(score_xml(chromatic, Piece(()), key=fifths_key)))
        assert [p for _, _, p in got] == list(range(59, 73))


def test_a_declared_key_wins_over_the_estimate():
    seed, cont = melody_and_chords()
    declared = Piece(seed.notes, 96.0, (3, 4), 73, meta={"key": "11 minor"})
    assert result_key(to_midi_bytes(declared, cont), seed, cont) == (11, "minor")
    assert result_key(to_midi_bytes(seed, cont), seed, cont) == (2, "major")


def test_compound_metre_and_long_pieces():
    jig = Piece(
        tuple(Note(i * 0.5, 0.5, 62 + (i * 5) % 9) for i in range(6 * 32)),
        time_signature=(6, 8),
    )
    score = parse(score_xml(jig, Piece((), time_signature=(6, 8)), key=(2, "major")))
    assert len(score.parts[0].getElementsByClass("Measure")) == 32
    assert sounding_notes(score) == on_grid(jig)


def test_a_seed_files_key_signature_travels_into_the_result_file():
    seed, cont = melody_and_chords()
    keyed = Piece(seed.notes, 96.0, (3, 4), 73, meta={"key": "4 minor"})
    read = load_seed(to_midi_bytes(keyed))
    assert read.meta["key"] == "4 minor"
    assert result_key(to_midi_bytes(read, cont), read, cont) == (4, "minor")


def test_compound_metre_shows_its_beats_in_rests_and_tempo():
    # (music after a rest, not a seed: a seed starting late is a pickup, written without rests)
    late = Piece((Note(2.5, 0.5, 71), Note(3.0, 1.5, 64)), tempo_bpm=150.0, time_signature=(6, 8))
    score = parse(score_xml(None, late, key=(4, "minor")))
    first = score.parts[0].getElementsByClass("Measure").first()
    rests = [float(r.quarterLength) for r in first.recurse().getElementsByClass("Rest")]
    assert rests == [1.5, 1.0]  # a dotted quarter rest (the first beat), then a quarter
    mm = score.recurse().getElementsByClass("MetronomeMark").first()
    assert mm.referent.quarterLength == 1.5 and mm.number == pytest.approx(100.0)
    assert mm.getQuarterBPM() == pytest.approx(150.0)


def test_note_values_are_tried_longest_first():
    ticks = [v[0] for v in _VALUES]
    assert ticks == sorted(ticks, reverse=True) and len(set(ticks)) == len(ticks)
    assert [v[1:] for v in _split(18)] == [("quarter", 1, False)]  # a dotted quarter, one head


@pytest.mark.skipif(
    shutil.which("mscore3") is None,
    reason="MuseScore 3 is not installed (apt-get install musescore3)",
)
def test_musescore_reads_the_file_as_valid_musicxml_with_key_metre_tempo_and_instrument(tmp_path):
    seed, cont = melody_and_chords()
    source = tmp_path / "motif.musicxml"
    source.write_text(score_xml(seed, cont, key=(2, "major"), title="Motif #7"))
    target = tmp_path / "motif.mscx"
    done = subprocess.run(
        ["mscore3", "-o", str(target), str(source)],
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "not a valid MusicXML file" not in log, log  # its schema check
    mscx = target.read_text()
    assert re.search(r"<KeySig>\s*<accidental>2</accidental>", mscx)  # D major
    assert "<sigN>3</sigN>" in mscx and "<sigD>4</sigD>" in mscx
    assert "<tempo>1.6</tempo>" in mscx  # quarters per second: 96 BPM
    assert '<program value="73"/>' in mscx and "<trackName>Flute</trackName>" in mscx
