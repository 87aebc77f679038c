"""The seed is parsed once, at submission: the worker continues the piece kept then."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from engine.errors import NotFound
from engine.music.midi import load_seed
from engine.service.request_seeds import kept_with_the_row
from engine.service.requests import JobService, Requester, validate_options
from engine.store.artifacts import seed_piece_key, store_for
from engine.store.db import session_scope
from engine.store.records import Request, RequestKind, RequestStatus
from engine.worker.generation import load_job
from tests.conftest import example_seed_bytes


def _tune_key(settings, rid: int) -> str:
    with session_scope(settings.sqlalchemy_url) as s:
        request = s.get(Request, rid)
        assert request is not None and request.seed_tune is not None
        return request.seed_tune.midi_key


def test_the_worker_continues_the_seed_parsed_at_submission_not_the_file(settings):
    service = JobService(settings, dispatch=lambda _: None)
    options = validate_options(bars=2, instrument="flute", tempo=90, from_bar=3)
    rid = service.compose(Requester(discord_id=1), options, example_seed_bytes(), "ode.mid")
    submitted = load_seed(example_seed_bytes(), name="ode.mid", from_bar=3)
    store = store_for(settings.artifact_root)
    assert store.exists(seed_piece_key(rid))
    # the stored file is damaged after submission: the worker does not read it
    store.put(_tune_key(settings, rid), b"MThd garbage")
    job = load_job(rid, settings)
    assert job.seed is not None
    assert job.seed.notes == submitted.notes and job.seed.meta == submitted.meta
    # in the instrument and tempo asked (the continuation gets the same from the decoder)
    assert (job.seed.program, job.seed.tempo_bpm) == (73, 90.0)
    assert job.seed.time_signature == submitted.time_signature


def test_a_follow_up_keeps_its_own_seed_and_a_request_without_one_reads_the_tune(settings):
    service = JobService(settings, dispatch=lambda _: None)
    who = Requester(discord_id=2, channel_id=5)
    rid = service.compose(who, validate_options(bars=2), example_seed_bytes(), "ode.mid")
    with session_scope(settings.sqlalchemy_url) as s:
        request = s.get(Request, rid)
        assert request is not None
        request.status, request.result_tune_id = RequestStatus.DONE, request.seed_tune_id
    reroll = service.follow_up(who, rid, RequestKind.REROLL)
    store = store_for(settings.artifact_root)
    assert store.exists(seed_piece_key(reroll))
    kept = load_job(reroll, settings).seed
    # a request queued before seeds were kept has none: the worker parses the tune, as then
    store.delete(seed_piece_key(reroll))
    assert load_job(reroll, settings).seed == kept
    # a request without a seed has none
    bare = service.compose(Requester(discord_id=3), validate_options(bars=2))
    assert load_job(bare, settings).seed is None and not store.exists(seed_piece_key(bare))


def test_a_kept_seed_made_of_another_tune_or_cut_is_not_read(settings):
    # SQLite may hand a rolled-back request's id out again: a seed.json left there is another's
    service = JobService(settings, dispatch=lambda _: None)
    rid = service.compose(
        Requester(discord_id=4), validate_options(bars=2, from_bar=3), example_seed_bytes(), "o.mid"
    )
    store = store_for(settings.artifact_root)
    doc = json.loads(store.get(seed_piece_key(rid)))
    doc["made_of"]["from_bar"] = None
    doc["piece"]["notes"] = doc["piece"]["notes"][:1]  # what another request kept there
    store.put(seed_piece_key(rid), json.dumps(doc).encode())
    seed = load_job(rid, settings).seed
    assert seed is not None
    assert seed.notes == load_seed(example_seed_bytes(), from_bar=3).notes  # the tune, parsed


def test_a_request_that_is_not_written_leaves_no_seed_behind(tmp_path):
    store = store_for(str(tmp_path / "artifacts"))
    with pytest.raises(RuntimeError), kept_with_the_row(store) as kept:
        store.put("requests/7/seed.json", b"{}")
        kept.append("requests/7/seed.json")
        raise RuntimeError("the commit failed")
    assert not store.exists("requests/7/seed.json")
    with kept_with_the_row(store) as kept:  # committed: kept
        store.put("requests/8/seed.json", b"{}")
        kept.append("requests/8/seed.json")
    assert store.exists("requests/8/seed.json")


def test_a_follow_up_of_music_no_longer_stored_is_refused_and_writes_nothing(settings):
    service = JobService(settings, dispatch=lambda _: None)
    who = Requester(discord_id=5, channel_id=5)
    rid = service.compose(who, validate_options(bars=2), example_seed_bytes(), "ode.mid")
    store_for(settings.artifact_root).delete(_tune_key(settings, rid))
    with session_scope(settings.sqlalchemy_url) as s:
        before = s.scalar(select(func.count(Request.id)))
    with pytest.raises(NotFound, match="no longer stored"):
        service.follow_up(who, rid, RequestKind.REROLL)
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.scalar(select(func.count(Request.id))) == before
