"""`score-timewise` MusicXML, listed as accepted in docs/notation.md: turned into partwise and
read like any other score (it was refused with "Export it again")."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from engine.music.notation import load_notation_seed
from engine.music.timewise import partwise

DUET = Path(__file__).resolve().parents[2] / "data" / "timewise-duet.musicxml"


def test_the_tree_walk_puts_each_parts_measures_under_the_part():
    root = ET.fromstring(partwise(DUET.read_bytes().split(b"\n", 2)[2]))  # without the DOCTYPE
    assert root.tag == "score-partwise" and root.get("version") == "4.0"
    assert [c.tag for c in root] == ["work", "part-list", "part", "part"]
    flute, cello = root.findall("part")
    assert (flute.get("id"), cello.get("id")) == ("P1", "P2")
    assert [m.get("number") for m in flute] == ["1", "2"]
    assert [n.findtext("pitch/step") for n in flute.iter("note")] == list("GABDCF")
    assert [n.findtext("pitch/step") for n in cello.iter("note")] == ["G", "D"]
    assert flute.find("measure/attributes/clef/sign").text == "G"


def test_a_partwise_document_comes_back_unchanged():
    text = b'<?xml version="1.0"?><score-partwise version="4.0"><part-list/></score-partwise>'
    assert partwise(text) is text


def test_a_timewise_file_is_a_seed_with_both_parts_notes_in_time():
    pytest.importorskip("music21")
    seed = load_notation_seed(DUET.read_bytes(), "duet.musicxml")
    got = sorted((n.start, n.duration, n.pitch) for n in seed.piece.notes)
    flute = [(0.0, 1.0, 79), (1.0, 0.5, 81), (1.5, 0.5, 83), (2.0, 1.0, 86), (3.0, 2.0, 84),
             (5.0, 1.0, 78)]  # fmt: skip
    cello = [(0.0, 3.0, 43), (3.0, 3.0, 50)]
    assert got == sorted(flute + cello)
    assert seed.piece.time_signature == (3, 4) and seed.piece.meta["key"] == "7 major"
