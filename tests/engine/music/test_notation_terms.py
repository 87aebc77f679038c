"""Refusals and remarks in the seed's own terms: what the ABC reader stopped at, an empty score,
and the chord symbols, grace notes and ornaments a continuation leaves out (issue #25). The
seeds are real ABC and MusicXML, read by the path a user's file takes."""

from __future__ import annotations

import pytest

from engine.music.notation import BadNotation, load_notation_seed

pytest.importorskip("music21")

# a session tune with chord symbols, a grace note, a roll and a trill
CHORDS = """X:3
T:The chord-symbol reel
M:4/4
L:1/8
K:G
"G"GABc dBGB|"C"c2ec "D7"dBAF|"G"G2{A}GF G2 ~B2|"Am"A2!trill!BA "D7"FDEF|
"""
FOUR_ENDINGS = """X:4
T:Four times round
M:4/4
L:1/8
K:D
|:A2B2 c2d2|[1 e4 f4:|[2 g4 a4:|[3 b4 a4:|[4 d8|]
"""
EMPTY_ABC = """X:5
T:Nothing yet
M:3/4
L:1/4
K:C
"""
HARMONY_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="4.0">
  <part-list><score-part id="P1"><part-name>Voice</part-name></score-part></part-list>
  <part id="P1">
    <measure number="1">
      <attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type></time>
        <clef><sign>G</sign><line>2</line></clef></attributes>
      <harmony><root><root-step>A</root-step></root><kind>minor</kind></harmony>
      <note><pitch><step>A</step><octave>4</octave></pitch><duration>2</duration><type>half</type></note>
      <harmony><root><root-step>E</root-step></root><kind>dominant</kind></harmony>
      <note><grace/><pitch><step>C</step><octave>5</octave></pitch><type>eighth</type></note>
      <note><pitch><step>B</step><octave>4</octave></pitch><duration>2</duration><type>half</type>
        <notations><ornaments><trill-mark/></ornaments></notations></note>
    </measure>
  </part>
</score-partwise>
"""
EMPTY_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="4.0">
  <part-list><score-part id="P1"><part-name>Voice</part-name></score-part></part-list>
  <part id="P1"><measure number="1"><attributes><divisions>1</divisions></attributes>
    <note><rest/><duration>4</duration></note></measure></part>
</score-partwise>
"""


def test_chord_symbols_grace_notes_and_ornaments_are_named_in_the_remarks():
    seed = load_notation_seed(CHORDS.encode(), "reel.abc")
    (remark,) = [r for r in seed.remarks if "Left out" in r]
    assert "chord symbols (6: G, C, D7, Am)" in remark
    assert "grace notes (1)" in remark and "ornaments (2: ~ (roll), trill)" in remark
    # the melody itself is all there: the same notes as the tune without the extras
    assert seed.piece.notes == load_notation_seed(plain_tune().encode(), "reel.abc").piece.notes


def test_musicxml_harmony_grace_and_trill_are_named_too():
    seed = load_notation_seed(HARMONY_XML, "song.musicxml")
    (remark,) = [r for r in seed.remarks if "Left out" in r]
    assert remark.startswith("Left out of the MusicXML seed: chord symbols (2), grace notes (1), "
                             "ornaments (1).")  # fmt: skip


def plain_tune() -> str:
    plain = CHORDS.replace('"G"', "").replace('"C"', "").replace('"D7"', "").replace('"Am"', "")
    return plain.replace("{A}", "").replace("~", "").replace("!trill!", "")


def test_a_plain_tune_has_no_such_remark():
    seed = load_notation_seed(plain_tune().encode(), "reel.abc")
    assert not [r for r in seed.remarks if "Left" in r]


def test_a_fourth_ending_is_named_not_blamed_on_the_header():
    with pytest.raises(BadNotation) as refused:
        load_notation_seed(FOUR_ENDINGS.encode(), "four.abc")
    message = refused.value.user_message
    assert "ending [4" in message and "header" not in message


@pytest.mark.parametrize(
    ("data", "name", "words"),
    [(EMPTY_ABC.encode(), "empty.abc", "This ABC tune has no notes"),
     (EMPTY_XML, "empty.musicxml", "This MusicXML score has no notes")],
)  # fmt: skip
def test_an_empty_score_is_told_in_its_own_terms_not_to_send_midi(data, name, words):
    with pytest.raises(BadNotation) as refused:
        load_notation_seed(data, name)
    assert refused.value.user_message.startswith(words)
    assert "MIDI" not in refused.value.user_message
