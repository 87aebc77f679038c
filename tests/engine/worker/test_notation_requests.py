"""An ABC or MusicXML seed through a whole request: stored as MIDI, continued by the shipped
model, and handed back as MusicXML that keeps the tune's key and metre."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.music.midi import load_seed
from engine.music.notation import UnsafeXml
from engine.music.result_midi import split_result
from engine.service.requests import JobService, Requester, validate_options
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import Request, RequestStatus, Tune
from engine.worker.pipeline import process_request
from tests.conftest import make_settings
from tests.engine.music.test_notation_seeds import BILLION_LAUGHS, JIG, TWO_TUNES

music21 = pytest.importorskip("music21")
pytestmark = pytest.mark.slow
E_MINOR = frozenset({4, 6, 7, 9, 11, 0, 2, 3})


def _service(tmp_path) -> tuple[JobService, list[int]]:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    db.upgrade(settings.sqlalchemy_url)
    sent: list[int] = []
    return JobService(settings, dispatch=sent.append), sent


def test_an_abc_seed_is_stored_as_midi_and_the_first_of_many_tunes_is_said(tmp_path):
    service, sent = _service(tmp_path)
    rid = service.compose(Requester(discord_id=5), validate_options(bars=4), TWO_TUNES, "book.abc")
    assert sent == [rid]
    with session_scope(service.url) as s:
        req = s.get(Request, rid)
        tune = s.get(Tune, req.seed_tune_id)
        assert req.notes["seed_remarks"] == ["The ABC held 2 tunes; Motif continued the first one."]
        assert tune.midi_key.endswith(".mid") and tune.name == "book.abc"
        midi = service.store.get(tune.midi_key)
    piece = load_seed(midi)
    assert piece.time_signature == (6, 8) and piece.meta["key"] == "4 minor"
    assert len(piece.notes) == 41


def test_hostile_xml_writes_nothing(tmp_path):
    service, sent = _service(tmp_path)
    with pytest.raises(UnsafeXml):
        service.compose(Requester(discord_id=5), validate_options(), BILLION_LAUGHS, "x.musicxml")
    with session_scope(service.url) as s:
        assert (
            s.scalars(select(Request)).first() is None and s.scalars(select(Tune)).first() is None
        )
    assert sent == []


def test_an_abc_seeds_continuation_keeps_the_tunes_key_and_metre(tmp_path):
    service, _ = _service(tmp_path)
    rid = service.compose(
        Requester(discord_id=5), validate_options(bars=8, rng_seed=3), JIG, "jig.abc"
    )
    assert process_request(rid, service.settings) is RequestStatus.DONE
    prog = service.progress(rid)
    kinds = {a.kind: a for a in prog.artifacts}
    score = music21.converter.parse(service.artifact_bytes(kinds["musicxml"]), format="musicxml")
    key = score.recurse().getElementsByClass("KeySignature").first()
    meter = score.recurse().getElementsByClass("TimeSignature").first()
    assert key.sharps == 1 and (meter.numerator, meter.denominator) == (6, 8)  # E minor, 6/8
    result = load_seed(service.artifact_bytes(kinds["midi"]))
    assert result.meta["key"] == "4 minor" and result.time_signature == (6, 8)
    seed, cont = split_result(service.artifact_bytes(kinds["midi"]))
    assert seed is not None and len(seed.notes) == 41 and len(cont.notes) > 20
    # the continuation stays in E minor (G major's notes, and D# as a leading note)
    in_key = sum(n.pitch % 12 in E_MINOR for n in cont.notes) / len(cont.notes)
    assert in_key >= 0.8, in_key


def test_the_inline_picture_option_is_checked_and_kept_by_follow_ups(tmp_path):
    from engine.errors import BadParams
    from engine.store.records import RequestKind

    with pytest.raises(BadParams, match="image must be one of"):
        validate_options(image="banana")
    service, _ = _service(tmp_path)
    who = Requester(discord_id=5)
    rid = service.compose(who, validate_options(image="pianoroll"))
    child = service.follow_up(who, rid, RequestKind.REROLL)
    assert service.progress(child).params["image"] == "pianoroll"


def test_a_user_at_the_cap_costs_no_parse_with_pasted_abc(tmp_path, monkeypatch):
    """The limits come before any parse, for every kind of seed."""
    from engine.errors import RateLimited
    from engine.music import notation
    from engine.music.parsers import ParserPool

    pool = ParserPool()
    monkeypatch.setattr(notation, "PARSERS", pool)
    settings = make_settings(tmp_path, user_max_concurrent=1)
    db.upgrade(settings.sqlalchemy_url)
    service = JobService(settings, dispatch=lambda rid: None)
    ann = Requester(discord_id=5)
    try:
        service.compose(ann, validate_options(bars=4), JIG, "pasted.abc")
        assert pool.parses == 1
        for name in ("pasted.abc", "tune.musicxml", "seed.mid"):
            with pytest.raises(RateLimited):
                service.compose(ann, validate_options(bars=4), JIG, name)
        assert pool.parses == 1
    finally:
        pool.close()


def test_the_same_bytes_from_someone_else_show_their_own_name(tmp_path):
    service, _ = _service(tmp_path)
    first = service.compose(
        Requester(discord_id=5), validate_options(bars=4), JIG, "ann-secret.abc"
    )
    second = service.compose(Requester(discord_id=6), validate_options(bars=4), JIG, "bob.abc")
    assert service.progress(first).seed_name == "ann-secret.abc"
    assert service.progress(second).seed_name == "bob.abc"
    with session_scope(service.url) as s:  # one tune, stored once
        assert len(list(s.scalars(select(Tune)))) == 1
    # a row from before the name was kept per request: only the tune's owner sees its name
    with session_scope(service.url) as s:
        s.get(Request, second).notes = {}
    assert service.progress(second).seed_name == "a seed"


def test_a_seed_that_changes_metre_and_key_is_continued_in_the_last(tmp_path):
    """ABC inline fields through a whole request: the seed's bars keep 4/4 then 3/4 and G then
    D major in the score; the continuation, by the shipped model, is barred in 3/4 from the
    seed's change (its closing note holds to a 3/4 bar line) and is mostly in D major (the key
    bias is soft: the notes from the seed's G major bars still come; the bias itself is
    tested in test_metre_changes)."""
    from tests.engine.music.test_metre_changes import INLINE, key_fifths_at, measures, times

    service, _ = _service(tmp_path)
    rid = service.compose(
        Requester(discord_id=5), validate_options(bars=4, rng_seed=3), INLINE.encode(), "x.abc"
    )
    assert process_request(rid, service.settings) is RequestStatus.DONE
    kinds = {a.kind: a for a in service.progress(rid).artifacts}
    bars = measures(service.artifact_bytes(kinds["musicxml"]).decode())
    assert times(bars) == {0: "4/4", 2: "3/4"}
    assert key_fifths_at(bars) == {0: 1, 3: 2}
    seed, cont = split_result(service.artifact_bytes(kinds["midi"]))
    assert seed is not None and seed.metre_changes == ((0.0, 4, 4), (8.0, 3, 4))
    assert cont.time_signature == (3, 4)
    end = max(n.end for n in cont.notes)
    assert end > seed.end_beat and (end - 8.0) % 3 == pytest.approx(0.0, abs=1e-6)
    d_major = {2, 4, 6, 7, 9, 11, 1}
    assert sum(n.pitch % 12 in d_major for n in cont.notes) / len(cont.notes) >= 0.8
