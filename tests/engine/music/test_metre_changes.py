"""Metre and key changes inside a seed (issue #25): the seed's bars keep their metres and keys
in the result's MIDI and score, ABC inline fields are honoured, and the continuation is barred
in the metre in force at its start and keeps the key in force there.

The seeds are real ABC, MusicXML and MIDI written for these tests, read by the paths a user's
file takes (the notation parser process, `load_seed`, the result's MIDI read back)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from symusic import KeySignature, Score, TimeSignature, Track
from symusic import Note as SymusicNote

from engine.model.generate.continuation import continue_batch
from engine.model.generate.plan import plan_row
from engine.model.generate.request import GenerationRequest, Knobs
from engine.music.keys import key_for_generation, key_in_force
from engine.music.metre import aligned_for_generation, bars, window
from engine.music.midi import load_seed
from engine.music.musicxml import score_xml
from engine.music.notation import load_notation_seed
from engine.music.notation_parser import abc_fields_on_lines, abc_metres
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions
from engine.music.result_midi import split_result, to_midi_bytes

pytest.importorskip("music21")

# two bars of 4/4 in G, then 3/4 (inline), then D major (inline): `c` is C sharp from there
INLINE = """X:1
T:Inline fields
M:4/4
L:1/8
K:G
G2B2 d2B2|c2A2 F2D2|[M:3/4] G2B2 d2|[K:D] d2c2 A2|f2e2 d2|c2B2 A2|d4 z2|]
"""
# the same change as field lines of their own, one after another bar line (music21 drops a
# lone field line there)
FIELD_LINES = """X:2
T:Field lines
M:4/4
L:1/8
K:G
G2B2 d2B2|c2A2 F2D2|
M:3/4
G2B2 d2|
K:D
d2c2 A2|f2e2 d2|c2B2 A2|d4 z2|]
"""
# MusicXML: a bar of 4/4 in C, then 3/4 and two sharps from the second bar on
METRE_CHANGE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="4.0">
<part-list><score-part id="P1"><part-name>Flute</part-name></score-part></part-list>
<part id="P1">
<measure number="1"><attributes><divisions>1</divisions><key><fifths>0</fifths></key>
<time><beats>4</beats><beat-type>4</beat-type></time></attributes>
<note><pitch><step>C</step><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note>
<note><pitch><step>D</step><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note>
<note><pitch><step>E</step><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note>
<note><pitch><step>G</step><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note>
</measure>
<measure number="2"><attributes><key><fifths>2</fifths></key>
<time><beats>3</beats><beat-type>4</beat-type></time></attributes>
<note><pitch><step>F</step><alter>1</alter><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note>
<note><pitch><step>E</step><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note>
<note><pitch><step>D</step><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note>
</measure>
<measure number="3">
<note><pitch><step>A</step><octave>5</octave></pitch><duration>2</duration><type>half</type></note>
<note><pitch><step>C</step><alter>1</alter><octave>5</octave></pitch><duration>1</duration><type>quarter</type></note>
</measure>
<measure number="4">
<note><pitch><step>D</step><octave>5</octave></pitch><duration>3</duration><type>half</type><dot/></note>
</measure>
</part></score-partwise>
"""


def measures(xml: str) -> list[ET.Element]:
    return list(ET.fromstring(xml.encode()).iter("measure"))


def length(measure: ET.Element) -> int:
    """The measure's length in ticks: the first voice's notes (chord notes add nothing)."""
    first_voice = [n for n in measure.iter("note") if n.findtext("voice") == "1"]
    return sum(int(n.findtext("duration")) for n in first_voice if n.find("chord") is None)


def times(bars_: list[ET.Element]) -> dict[int, str]:
    """{measure index: "n/d"} of the measures that write a time signature."""
    out = {}
    for i, m in enumerate(bars_):
        time = m.find("attributes/time")
        if time is not None:
            out[i] = f"{time.findtext('beats')}/{time.findtext('beat-type')}"
    return out


def key_fifths_at(bars_: list[ET.Element]) -> dict[int, int]:
    return {
        i: int(m.findtext("attributes/key/fifths"))
        for i, m in enumerate(bars_)
        if m.find("attributes/key") is not None
    }


def with_continuation(seed: Piece, beats: int) -> tuple[Piece, Piece]:
    """The seed and `beats` quarter notes after it, read back from the result's MIDI as the
    render stage reads them."""
    cont = Piece(
        tuple(Note(seed.end_beat + i, 1.0, 74 + i % 3) for i in range(beats)),
        tempo_bpm=seed.tempo_bpm,
        time_signature=seed.time_signature,
    )
    seed_back, cont_back = split_result(to_midi_bytes(seed, cont))
    assert seed_back is not None
    return seed_back, cont_back


@pytest.mark.parametrize("abc", [INLINE, FIELD_LINES], ids=["inline fields", "field lines"])
def test_an_abc_metre_and_key_change_is_kept(abc):
    seed = load_notation_seed(abc.encode(), "change.abc").piece
    assert seed.metre_changes == ((0.0, 4, 4), (8.0, 3, 4))
    assert seed.time_signature == (3, 4)  # in force at the end: the continuation's
    assert seed.key_changes == ((0.0, 7, "major"), (11.0, 2, "major"))
    after_k = [n.pitch for n in seed.notes if n.start >= 11.0]
    assert 73 in after_k and 72 not in after_k  # `c` after [K:D] is C sharp
    assert [n.pitch for n in seed.notes if n.start < 8.0].count(72) == 1  # C natural before

    seed_back, cont = with_continuation(seed, 6)
    assert seed_back.metre_changes == seed.metre_changes
    assert seed_back.key_changes == seed.key_changes
    assert cont.time_signature == (3, 4)
    xml = score_xml(seed_back, cont, key=(7, "major"))
    bars_ = measures(xml)
    # bars 1-2 in 4/4, the rest (the seed's later bars and the continuation's) in 3/4
    assert times(bars_) == {0: "4/4", 2: "3/4"}
    assert [length(m) for m in bars_] == [48, 48] + [36] * (len(bars_) - 2)
    assert len(bars_) == 2 + 5 + 2  # the seed's 5 bars of 3/4, then 6 beats of continuation
    assert key_fifths_at(bars_) == {0: 1, 3: 2}  # G, then D from the 4th bar
    if abc is INLINE:  # verovio engraves every bar (it reads what the score writes)
        pytest.importorskip("verovio")
        from engine.audio.score import engrave_pages, page_bars

        assert sum(page_bars(page) for page in engrave_pages(xml)) == len(bars_)


def test_abc_body_fields_get_lines_of_their_own_without_ending_the_tune():
    text = abc_fields_on_lines(INLINE)
    assert "[M:" not in text and "[K:" not in text
    assert "\n\n" not in text  # an empty line would end the tune
    assert "\nN:motif\nM:3/4\n" in text and "\nN:motif\nK:D\n" in text
    assert text.startswith(INLINE[: INLINE.index("K:G") + 3])  # the header as it was
    # a comment keeps its text (an inline field there is not read), an empty line stays
    commented = abc_fields_on_lines("X:1\nK:C\nCDE|[M:3/4] F2G % then [K:D]\n\nT:after\n")
    assert commented == "X:1\nK:C\nCDE|\nN:motif\nM:3/4\n F2G % then [K:D]\n\nT:after\n"
    assert abc_metres(INLINE) == [(4, 4), (3, 4)]
    assert abc_metres("X:1\nM:C|\nK:C\nCDEF|\nM:C\nCDEF|]\n") == [(2, 2), (4, 4)]


def test_a_musicxml_metre_change_is_kept():
    seed = load_notation_seed(METRE_CHANGE_XML.encode(), "change.musicxml").piece
    assert seed.metre_changes == ((0.0, 4, 4), (4.0, 3, 4))
    assert seed.time_signature == (3, 4)
    assert seed.key_changes == ((0.0, 0, "major"), (4.0, 2, "major"))
    seed_back, cont = with_continuation(seed, 3)
    bars_ = measures(score_xml(seed_back, cont, key=(0, "major")))
    assert times(bars_) == {0: "4/4", 1: "3/4"}
    assert [length(m) for m in bars_] == [48, 36, 36, 36, 36]
    assert key_fifths_at(bars_) == {0: 0, 1: 2}


def midi_with_metre_change() -> bytes:
    """Two bars of 4/4 in C, then 3/4 in D major: a quarter note on every beat, 4 bars of 3/4."""
    score = Score(480)
    track = Track("flute", 73, False)
    pitches = [60, 62, 64, 65, 67, 65, 64, 62] + [62, 66, 69, 71, 69, 66, 64, 61, 62, 69, 66, 62]
    for i, pitch in enumerate(pitches):
        track.notes.append(SymusicNote(i * 480, 480, pitch, 80))
    score.tracks.append(track)
    score.time_signatures.append(TimeSignature(0, 4, 4))
    score.time_signatures.append(TimeSignature(8 * 480, 3, 4))
    score.key_signatures.append(KeySignature(0, 0, 0))
    score.key_signatures.append(KeySignature(8 * 480, 2, 0))
    return bytes(score.dumps_midi())


def test_a_midi_time_signature_change_is_kept_and_counts_bars():
    seed = load_seed(midi_with_metre_change(), name="change.mid")
    assert seed.metre_changes == ((0.0, 4, 4), (8.0, 3, 4))
    assert seed.time_signature == (3, 4)
    assert seed.key_changes == ((0.0, 0, "major"), (8.0, 2, "major"))
    assert seed.meta["key"] == "0 major"  # the opening key, as the score writes it first
    # from_bar counts the file's own bars: bar 4 starts at beat 11 (4 + 4 + 3), not 12
    cut = load_seed(midi_with_metre_change(), name="change.mid", from_bar=4)
    assert cut.end_beat == 11.0 and cut.time_signature == (3, 4)
    # a cut before the change is in 4/4 throughout
    early = load_seed(midi_with_metre_change(), name="change.mid", from_bar=2)
    assert early.metre_changes == () and early.time_signature == (4, 4)
    assert early.key_changes == () and early.meta["key"] == "0 major"


def test_window_keeps_the_changes_in_force_and_drops_repeats():
    changes = ((0.0, 4, 4), (4.0, 4, 4), (8.0, 3, 4), (8.0, 6, 8), (20.0, 2, 4))
    assert window(changes, 0.0, 16.0) == ((0.0, 4, 4), (8.0, 6, 8))
    assert window(changes, 10.0, 30.0) == ((0.0, 6, 8), (10.0, 2, 4))
    assert window(((0.0, 4, 4), (8.0, 3, 4), (8.01, 2, 4)), 0.0, 16.0) == ((0.0, 4, 4), (8.0, 2, 4))
    got = [(b.start, b.length) for b in bars(((0.0, 4, 4), (6.0, 3, 4)), 10.0)]
    assert got == [(0.0, 4.0), (4.0, 2.0), (6.0, 3.0), (9.0, 3.0)]  # a bar cut by the change


def test_a_file_that_changes_metre_on_every_tick_keeps_one_metre():
    """A hostile MIDI: a time signature on every tick of a bar, then thousands more. Changes a
    tick apart cannot be written (the later holds); past MAX_CHANGES none is kept."""
    score = Score(480)
    track = Track("t", 0, False)
    track.notes.append(SymusicNote(0, 480 * 400, 60, 80))
    score.tracks.append(track)
    for tick in range(0, 480 * 400, 40):  # a change every twelfth of a beat: 4,800 of them
        score.time_signatures.append(TimeSignature(tick, 3 + tick // 40 % 2, 4))
    seed = load_seed(bytes(score.dumps_midi()), name="hostile.mid")
    assert seed.metre_changes == () and seed.time_signature == (4, 4)  # the last one's
    assert len(measures(score_xml(seed, Piece(()), key=None))) == 100


def test_the_continuation_is_barred_in_the_last_metre(tiny_lm):
    """The model counts bars from beat 0 in one metre: the seed is moved so that its last
    metre's bar lines fall there, and the continuation comes back to the seed's bars."""
    seed = load_seed(midi_with_metre_change(), name="change.mid")  # 3/4 from beat 8
    aligned, shift = aligned_for_generation(seed)
    assert shift == 1.0 and (8.0 + shift) % 3 == 0
    request = GenerationRequest(aligned, ComposeOptions(bars=2, rng_seed=3))
    row = plan_row(tiny_lm, request)
    assert row.time_signature == (3, 4)
    assert row.bar == 36
    end = row.end_tick / 12 - shift  # the continuation's end, in the seed's beats
    assert end == seed.end_beat + 6  # two bars of 3/4 after the seed's last bar line
    assert (end - 8.0) % 3 == 0  # on a bar line of the seed's 3/4
    (cont,) = continue_batch(tiny_lm, [request])
    cont = cont.shifted(-shift)
    assert cont.time_signature == (3, 4)
    assert cont.notes and min(n.start for n in cont.notes) >= seed.end_beat - 1e-6
    assert max(n.end for n in cont.notes) <= end + 1e-6
    assert aligned_for_generation(Piece(seed.notes)) == (Piece(seed.notes), 0.0)  # one metre


def test_a_seed_that_changes_key_is_continued_in_its_last_key(tiny_lm):
    """Twelve bars in C major then eight in D major: the whole seed reads as another key; the
    key in force at its end is D major, whether a key signature says so or not."""
    c_major = [60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60, 62]
    d_major = [62, 64, 66, 67, 69, 71, 73, 74, 69, 66, 62, 64, 66, 69, 73, 74]
    notes = [Note(i * 2.0, 2.0, p) for i, p in enumerate(c_major * 2)]
    notes += [Note(48.0 + i * 2.0, 2.0, p) for i, p in enumerate(d_major)]
    undeclared = Piece(tuple(notes))
    assert key_for_generation(undeclared.notes) != (2, "major")
    assert key_in_force(undeclared) == (2, "major")  # its last 8 bars are clearly in D
    changed = Piece(tuple(notes), key_changes=((0.0, 0, "major"), (48.0, 2, "major")))
    assert key_in_force(changed) == (2, "major")
    # a seed that stays in its key, or is too short to tell, keeps the whole seed's estimate
    c_only = Piece(tuple(Note(i * 2.0, 2.0, p) for i, p in enumerate(c_major * 4)))
    assert c_only.bars >= 16 and key_in_force(c_only) == key_for_generation(c_only.notes)
    short = Piece(tuple(n for n in notes if n.start >= 32.0))  # 12 bars: 4 of C, 8 of D
    assert key_in_force(short) == key_for_generation(short.notes)
    request = GenerationRequest(changed, ComposeOptions(bars=1, rng_seed=1), Knobs(key_gravity=0.0))
    row = plan_row(tiny_lm, request)
    assert row.tonal == (2, "major")
    low = tiny_lm.codec.config.pitch_low
    penalised = {(p + low) % 12 for p, bias in enumerate(row.pitch_bias) if bias < 0}
    assert penalised == {0, 3, 5, 8, 10}  # C, Eb, F, Ab, Bb: outside D major and the seed's D part
    # a short last section stands on its key signature
    few = Piece(tuple(notes[:26]), key_changes=((0.0, 0, "major"), (48.0, 2, "major")))
    assert key_in_force(few) == (2, "major")
