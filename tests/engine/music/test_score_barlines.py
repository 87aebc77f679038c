"""Bar lines where the music has them: a seed's pickup is written as a pickup, and the *Motif*
mark sits on the continuation's first note, mid-bar when the seed ends mid-bar (issue #25).

The seeds are real ABC and MusicXML, read by the notation path a user's file takes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from engine.music.musicxml import SEED_INK_COLOUR, score_xml
from engine.music.notation import load_notation_seed
from engine.music.notes import Note, Piece
from engine.music.result_midi import split_result, to_midi_bytes

pytest.importorskip("music21")

# the minimal case: a one-beat pickup balanced by a three-beat last bar
PICKUP = """X:1
T:Pickup
M:4/4
L:1/8
K:G
D2|G2B2 d2B2|c2A2 F2D2|G2B2 d2B2|A2F2 G2|]
"""
# a waltz with a one-beat pickup and a two-beat last bar
WALTZ = """X:2
T:Pickup waltz
M:3/4
L:1/4
Q:1/4=150
K:D
A|d2 f|a2 f|e2 d|c2 A|B2 c|d2 e|f2 e|d2|]
"""
# the same shape in MusicXML, as notation programs write a pickup: an implicit measure 0
XML_WALTZ = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="4.0">
  <part-list><score-part id="P1"><part-name>Fiddle</part-name></score-part></part-list>
  <part id="P1">
    <measure number="0" implicit="yes">
      <attributes><divisions>1</divisions><key><fifths>2</fifths></key>
        <time><beats>3</beats><beat-type>4</beat-type></time></attributes>
      <note><pitch><step>A</step><octave>4</octave></pitch><duration>1</duration></note>
    </measure>
    <measure number="1">
      <note><pitch><step>D</step><octave>5</octave></pitch><duration>2</duration></note>
      <note><pitch><step>F</step><alter>1</alter><octave>5</octave></pitch><duration>1</duration></note>
    </measure>
    <measure number="2">
      <note><pitch><step>E</step><octave>5</octave></pitch><duration>2</duration></note>
      <note><pitch><step>C</step><alter>1</alter><octave>5</octave></pitch><duration>1</duration></note>
    </measure>
    <measure number="3">
      <note><pitch><step>D</step><octave>5</octave></pitch><duration>2</duration></note>
      <barline location="right"><bar-style>light-heavy</bar-style></barline>
    </measure>
  </part>
</score-partwise>
"""


def result(text: str, name: str, beats: int) -> tuple[Piece, Piece, int]:
    """The seed as a user's ABC file becomes it, a continuation of `beats` quarter notes from
    where the seed stops, both read back from the result's MIDI as the render stage reads them;
    and the continuation's first onset in ticks."""
    seed = load_notation_seed(text.encode(), name).piece
    cont = Piece(
        tuple(Note(seed.end_beat + i, 1.0, 67 + i % 4) for i in range(beats)),
        tempo_bpm=seed.tempo_bpm,
        time_signature=seed.time_signature,
    )
    seed_back, cont_back = split_result(to_midi_bytes(seed, cont))
    assert seed_back is not None
    return seed_back, cont_back, round(seed.end_beat * 12)


def measures(xml: str) -> list[ET.Element]:
    return list(ET.fromstring(xml.encode()).iter("measure"))


def length(measure: ET.Element) -> int:
    """The measure's length in ticks: the first voice's notes (chord notes add nothing)."""
    first_voice = [n for n in measure.iter("note") if n.findtext("voice") == "1"]
    return sum(int(n.findtext("duration")) for n in first_voice if n.find("chord") is None)


def mark_position(measure: ET.Element) -> tuple[int, bool, bool]:
    """(ticks into the measure where the mark is written, whether a seed note comes before it,
    whether the note after it is the continuation's)."""
    at, seed_before, children = 0, False, list(measure)
    for i, child in enumerate(children):
        if child.tag == "direction" and "Motif</" in ET.tostring(child, encoding="unicode"):
            after = next(c for c in children[i + 1 :] if c.tag == "note")
            return at, seed_before, after.get("color") is None
        if child.tag == "note" and child.find("chord") is None:
            at += int(child.findtext("duration"))
            seed_before = seed_before or child.get("color") == SEED_INK_COLOUR
    raise AssertionError("no mark in this measure")


@pytest.mark.parametrize(
    ("text", "name", "beat_ticks", "bar_ticks", "last_bar_ticks"),
    [(PICKUP, "tune.abc", 12, 48, 36), (WALTZ, "tune.abc", 12, 36, 24),
     (XML_WALTZ, "waltz.musicxml", 12, 36, 24)],
    ids=["minimal pickup 4/4", "pickup waltz 3/4", "MusicXML pickup waltz"],
)  # fmt: skip
def test_the_pickup_stays_a_pickup_and_the_mark_sits_on_the_first_new_note(
    text, name, beat_ticks, bar_ticks, last_bar_ticks
):
    seed, cont, cont_start = result(text, name, 8)
    xml = score_xml(seed, cont, key=(7, "major"), title="t")
    bars = measures(xml)
    # the pickup: a short measure of its one beat, numbered 0, without rests before the upbeat
    assert bars[0].get("implicit") == "yes" and bars[0].get("number") == "0"
    assert length(bars[0]) == beat_ticks and not list(bars[0].iter("rest"))
    assert [m.get("number") for m in bars[1:3]] == ["1", "2"]
    assert all(length(m) == bar_ticks for m in bars[1:])  # every later bar is a full bar
    # the mark: in the bar where the seed's shortened last bar ends, on the continuation's first
    # note, after the seed's notes of that bar, mid-bar; no double bar inside the music
    (where,) = [m for m in bars if "Motif</" in ET.tostring(m, encoding="unicode")]
    at, seed_before, on_new_note = mark_position(where)
    assert (at, seed_before, on_new_note) == (last_bar_ticks, True, True)
    # the seed's timeline counts the pickup's bar in full: measure k starts k bars in
    assert bars.index(where) * bar_ticks + at == cont_start  # exactly where the new notes start
    assert "light-light" not in xml
    assert xml.count("Motif</words>") + xml.count("Motif</rehearsal>") == 1


def test_a_seed_that_ends_on_a_bar_line_keeps_its_double_bar_and_rehearsal_mark():
    seed = Piece(tuple(Note(float(i), 1.0, 67 + i % 3) for i in range(8)))
    cont = Piece(tuple(Note(8.0 + i, 1.0, 64 + i % 3) for i in range(8)))
    xml = score_xml(seed, cont, key=(0, "major"))
    bars = measures(xml)
    assert bars[0].get("implicit") is None and bars[0].get("number") == "1"
    assert "<rehearsal>Motif</rehearsal>" in ET.tostring(bars[2], encoding="unicode")
    assert "light-light" in ET.tostring(bars[1], encoding="unicode")
    assert mark_position(bars[2]) == (0, False, True)


# a tune with no metre whose first bar has five beats: music21 reads it from beat 0, so every
# later bar line fell two beats off (mod 4) the score's
NO_METRE = """X:6
T:Long first bar
L:1/4
K:C
C D E F G|A B c d|c B A G|F E D C|]
"""
LONG_FIRST_BAR = NO_METRE.replace("L:1/4", "M:4/4\nL:1/4")


@pytest.mark.parametrize("abc", [NO_METRE, LONG_FIRST_BAR], ids=["no metre", "M:4/4"])
def test_an_irregular_first_bar_is_barred_from_the_real_downbeat(abc):
    """The tune's own bar lines (before A, c and F) are the score's; the first bar's extra beat
    becomes an upbeat."""
    seed, cont, cont_start = result(abc, "long.abc", 4)
    assert seed.time_signature == (4, 4)
    notes = sorted(seed.notes, key=lambda n: n.start)
    assert [notes[i].pitch for i in (5, 9, 13)] == [69, 72, 65]  # A, c, F: bars 2, 3, 4 begin
    assert [notes[i].start % 4 for i in (0, 5, 9, 13)] == [3, 0, 0, 0]
    bars = measures(score_xml(seed, cont, key=(0, "major")))
    assert bars[0].get("implicit") == "yes" and length(bars[0]) == 12  # C: the upbeat
    assert all(length(m) == 48 for m in bars[1:])
