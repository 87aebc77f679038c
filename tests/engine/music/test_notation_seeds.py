"""ABC and MusicXML seeds: read right, and hostile files refused cheaply, in bounded time and
memory, with a clear domain error each. The real parser process (music21) runs in every test."""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import BadMidi, MotifError
from engine.music import notation as notation_seeds
from engine.music.measures import TICKS
from engine.music.musicxml import score_xml
from engine.music.notation import (
    PARSERS,
    BadNotation,
    NotationLimits,
    NotationTimeout,
    NotationTooLarge,
    UnreadableNotation,
    UnsafeXml,
    load_notation_seed,
)
from engine.music.notes import Note, Piece

music21 = pytest.importorskip("music21")

JIG = b"""X:1
T:Motif's Test Jig
M:6/8
L:1/8
Q:3/8=100
K:Em
B|EFG BAG|FGA B2B|EFG BAG|FDF E2B|
EFG BAG|FGA B2c|dcB AGF|E3-E2:|
"""
TWO_TUNES = (
    JIG
    + b"""
X:2
T:A Second Tune
M:4/4
K:D
DEFG ABcd|
"""
)
PUBLIC_DOCTYPE = (
    b'<!DOCTYPE score-partwise PUBLIC "-//Recordare//DTD MusicXML 4.0 Partwise//EN" '
    b'"http://www.musicxml.org/dtds/partwise.dtd">'
)


def on_beats(piece: Piece) -> list[tuple[float, float, int]]:
    return [(round(n.start * TICKS), round(n.duration * TICKS), n.pitch) for n in piece.notes]


def chorale_mxl() -> bytes:
    return Path(music21.corpus.getWork("bach/bwv66.6")).read_bytes()


def test_an_abc_tune_keeps_its_key_metre_tempo_upbeat_and_title():
    seed = load_notation_seed(JIG, "jig.abc")
    piece = seed.piece
    assert piece.time_signature == (6, 8)
    assert piece.tempo_bpm == pytest.approx(150.0)  # dotted quarter = 100
    assert piece.meta["key"] == "4 minor"  # K:Em
    assert seed.title == "Motif's Test Jig" and seed.remarks == ()
    first = piece.notes[0]
    assert (first.start, first.pitch) == (2.5, 71)  # the upbeat B is the bar's last eighth
    assert len(piece.notes) == 41  # E3-E2 is one tied note
    assert piece.notes[-1].duration == pytest.approx(2.5)
    assert seed.midi[:4] == b"MThd"


def test_multi_tune_abc_takes_the_first_and_says_so():
    seed = load_notation_seed(TWO_TUNES, "book.abc")
    assert seed.title == "Motif's Test Jig" and seed.piece.time_signature == (6, 8)
    assert seed.remarks == ("The ABC held 2 tunes; Motif continued the first one.",)


def test_musicxml_in_every_wrapping_gives_the_same_notes():
    melody = Piece(
        tuple(Note(i * 0.5, 0.5, 62 + (i * 3) % 10) for i in range(24)),
        tempo_bpm=84.0,
        time_signature=(3, 4),
        program=40,
    )
    xml = score_xml(melody, Piece(()), key=(2, "major"), title="Round trip").encode()
    plain = load_notation_seed(xml, "tune.musicxml").piece
    assert on_beats(plain) == on_beats(melody)
    assert plain.time_signature == (3, 4) and plain.tempo_bpm == pytest.approx(84.0)
    assert plain.meta["key"] == "2 major" and plain.program == 40
    with_doctype = xml.replace(b"?>", b"?>" + PUBLIC_DOCTYPE, 1)
    assert on_beats(load_notation_seed(with_doctype, "tune.xml").piece) == on_beats(melody)
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "META-INF/container.xml",
            '<container><rootfiles><rootfile full-path="score.xml"/></rootfiles></container>',
        )
        z.writestr("score.xml", with_doctype)
    assert on_beats(load_notation_seed(packed.getvalue(), "tune.mxl").piece) == on_beats(melody)


def test_a_four_part_chorale_merges_its_parts():
    seed = load_notation_seed(chorale_mxl(), "bwv66.6.mxl")
    assert seed.piece.time_signature == (4, 4) and seed.piece.meta["key"] == "6 minor"
    assert seed.piece.meta["tracks"] == "1" and len(seed.piece.notes) > 150
    assert len({n.start for n in seed.piece.notes}) < len(seed.piece.notes)  # chords


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<score-partwise><part-list/><part id="P1"><measure><note>&lol3;</note></measure></part>
</score-partwise>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE score-partwise [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<score-partwise><work><work-title>&xxe;</work-title></work></score-partwise>"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE score-partwise SYSTEM "http://127.0.0.1:9/evil.dtd" [<!ELEMENT a ANY>]>
<score-partwise/>"""


@pytest.mark.parametrize("hostile", [BILLION_LAUGHS, EXTERNAL_ENTITY, PARAMETER_ENTITY])
def test_entities_and_internal_dtds_are_refused_before_parsing(hostile, monkeypatch):
    monkeypatch.setattr(PARSERS, "parse", _never)
    for name in ("evil.musicxml", "evil.xml"):
        with pytest.raises(UnsafeXml):
            load_notation_seed(hostile, name)


def _never(*args, **kwargs):  # the parser must not be reached
    raise AssertionError("a refused file reached the parser")


def test_files_too_large_are_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(PARSERS, "parse", _never)
    small = NotationLimits(max_bytes=1000)
    with pytest.raises(NotationTooLarge):
        load_notation_seed(JIG * 20, "big.abc", small)
    with pytest.raises(NotationTooLarge):  # one tune may not be a novel
        load_notation_seed(b"X:1\nK:C\n" + b"CDEF" * 20_000, "long.abc")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("score.xml", b"<score-partwise>" + b" " * (8 * 1024 * 1024))
    assert len(bomb.getvalue()) < 20_000
    with pytest.raises(NotationTooLarge):
        load_notation_seed(bomb.getvalue(), "bomb.mxl")
    crowded = io.BytesIO()
    with zipfile.ZipFile(crowded, "w") as z:
        for i in range(40):
            z.writestr(f"f{i}.xml", b"<score-partwise/>")
    with pytest.raises(NotationTooLarge):
        load_notation_seed(crowded.getvalue(), "crowded.mxl")


def test_a_zip_whose_header_lies_about_its_size_is_still_bounded():
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("score.xml", b"<score-partwise>" + b" " * 200_000 + b"</score-partwise>")
    data = bytearray(packed.getvalue())
    # claim 100 bytes uncompressed in the central directory
    at = data.rfind(b"PK\x01\x02")
    data[at + 24 : at + 28] = (100).to_bytes(4, "little")
    with pytest.raises((NotationTooLarge, UnreadableNotation)):
        load_notation_seed(bytes(data), "liar.mxl", NotationLimits(max_xml_bytes=1000))


@pytest.mark.parametrize(
    ("data", "name", "error"),
    [
        (b"T:no key field\nCDEF|\n", "nokey.abc", UnreadableNotation),
        (b"X:1\nK:C\n", "empty.abc", BadNotation),  # no notes, said of the ABC (not of MIDI)
        (b"<html><body>hi</body></html>", "page.xml", UnreadableNotation),
        (b"<score-partwise><part", "cut.musicxml", UnreadableNotation),
        (b"PK\x03\x04 not really a zip", "fake.mxl", UnreadableNotation),
        (b"\x00\xff" * 100, "binary.musicxml", UnreadableNotation),
        (b"X:1\nL:1/8\nQ:1/4=2000\nK:C\nCDEF|\n", "fast.abc", BadMidi),  # absurd tempo
        (b"anything", "tune.txt", BadNotation),
    ],
)
def test_bad_seeds_get_a_clear_domain_error(data, name, error):
    with pytest.raises(error) as info:
        load_notation_seed(data, name)
    assert info.value.user_message and "Traceback" not in info.value.user_message


def big_score() -> bytes:
    notes = tuple(Note(i * 0.25, 0.25, 48 + (i * 7) % 36, 80) for i in range(64 * 16)) + tuple(
        Note(i * 1.0, 1.0, 40 + i % 12) for i in range(256)
    )
    return score_xml(
        Piece(tuple(sorted(notes, key=lambda n: (n.start, n.pitch)))), Piece(()), key=None
    ).encode()


def test_a_parse_past_its_time_limit_is_stopped_and_the_next_one_works():
    xml = big_score()
    started = time.monotonic()
    with pytest.raises(NotationTimeout) as info:
        load_notation_seed(xml, "slow.musicxml", NotationLimits(parse_timeout_s=0.05))
    assert time.monotonic() - started < 5.0
    assert "took longer than 0.05 s" in info.value.user_message
    assert len(load_notation_seed(JIG, "jig.abc").piece.notes) == 41


def test_a_parse_past_its_memory_limit_is_stopped_and_the_next_one_works():
    with pytest.raises(BadNotation):
        load_notation_seed(big_score(), "fat.musicxml", NotationLimits(parse_memory_bytes=1 << 20))
    assert len(load_notation_seed(JIG, "jig.abc").piece.notes) == 41


def test_note_and_part_limits_stop_the_parse():
    with pytest.raises(NotationTooLarge):
        load_notation_seed(big_score(), "many.musicxml", NotationLimits(max_notes=100))
    with pytest.raises(NotationTooLarge):
        load_notation_seed(chorale_mxl(), "parts.mxl", NotationLimits(max_parts=2))
    midi_limits = replace(NotationLimits().midi, max_duration_s=5.0)
    # the MIDI seed's duration limit applies too: a longer tune is cropped to its opening
    cropped = load_notation_seed(JIG, "jig.abc", NotationLimits(midi=midi_limits)).piece
    assert cropped.meta.get("cropped") and 0 < len(cropped.notes) < 41
    assert max(n.start for n in cropped.notes) * 60 / cropped.tempo_bpm <= 5.0 + 1e-6


def test_a_dead_parser_process_is_restarted():
    load_notation_seed(JIG, "jig.abc")
    proc = PARSERS._free[-1].proc
    assert proc is not None
    proc.kill()
    proc.wait(5)
    assert len(load_notation_seed(JIG, "jig.abc").piece.notes) == 41
    assert PARSERS._free[-1].proc is not proc


def test_a_parser_killed_mid_parse_gives_a_clear_error_and_the_next_parse_works():
    import threading

    load_notation_seed(JIG, "jig.abc")  # the parser process is up
    proc = PARSERS._free[-1].proc
    assert proc is not None
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")

    def kill_during_the_parse() -> None:  # once the parser has forked the child that parses
        deadline = time.monotonic() + 30
        while not children.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()

    killer = threading.Thread(target=kill_during_the_parse)
    killer.start()
    with pytest.raises(UnreadableNotation) as info:
        load_notation_seed(big_score(), "big.musicxml")  # over a second of parsing
    killer.join()
    assert info.value.detail == "the parser process died"
    assert len(load_notation_seed(JIG, "jig.abc").piece.notes) == 41


def test_this_process_never_imports_music21():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from engine.music.notation import load_notation_seed\n"
        f"s = load_notation_seed({JIG!r}, 'jig.abc')\n"
        "assert len(s.piece.notes) == 41\n"
        "assert 'music21' not in sys.modules, 'music21 imported in the caller'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_only_motif_errors_leave_the_loader_for_surprises(monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("a surprise")

    monkeypatch.setattr(notation_seeds, "to_midi_bytes", explode)
    with pytest.raises(MotifError):
        load_notation_seed(JIG, "jig.abc")


# --- mutated files: only the domain error escapes, in bounded time ------------------------------

TOKENS = [
    b"<!ENTITY a 'b'>",
    b"&a;",
    b"<!DOCTYPE x [",
    b"X:2\n",
    b"K:",
    b"M:0/0\n",
    b"L:1/0\n",
    b"Q:1/4=0\n",
    b"999999999",
    b"-1",
    b"<note>",
    b"</measure>",
    b"<divisions>0</divisions>",
    b"<duration>99999999</duration>",
    b"(3",
    b"|:",
    b"\x00",
]
SMALL_XML = score_xml(
    Piece(tuple(Note(i * 0.5, 0.5, 60 + i % 7) for i in range(16)), time_signature=(3, 4)),
    Piece(()),
    key=(7, "major"),
).encode()
FUZZ_LIMITS = NotationLimits(parse_timeout_s=3.0)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "delete", "insert", "token", "repeat", "cut"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif kind == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "repeat":
            data[at:at] = bytes(data[at : at + draw(st.integers(1, 200))]) * draw(
                st.integers(2, 50)
            )
        elif kind == "cut":
            del data[at:]
    return bytes(data)


def _only_domain_errors(data: bytes, name: str) -> None:
    started = time.monotonic()
    try:
        seed = load_notation_seed(data, name, FUZZ_LIMITS)
    except MotifError as exc:
        assert exc.user_message
    else:
        assert 0 < len(seed.piece.notes) <= FUZZ_LIMITS.midi.max_seed_notes
        assert seed.midi[:4] == b"MThd"
    # the parse limit plus the parser's start (it may have been restarted) on a loaded machine
    assert time.monotonic() - started < FUZZ_LIMITS.parse_timeout_s + 20.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(JIG), name=st.sampled_from(["tune.abc"]))
def test_mutated_abc_only_raises_the_domain_error(data, name):
    _only_domain_errors(data, name)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(SMALL_XML), name=st.sampled_from(["tune.musicxml", "tune.xml"]))
def test_mutated_musicxml_only_raises_the_domain_error(data, name):
    _only_domain_errors(data, name)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(b"PK"), tail=st.binary(max_size=200))
def test_mutated_mxl_only_raises_the_domain_error(data, tail):
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("score.xml", SMALL_XML)
    raw = bytearray(packed.getvalue())
    cut = len(data) % max(1, len(raw))
    raw[cut : cut + len(tail)] = tail
    _only_domain_errors(bytes(raw), "tune.mxl")
