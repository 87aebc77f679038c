"""Consent follows the seed's owner: someone else's reroll or extension of your music cannot put it
into the training collection without you, and `/forget` withdraws what was made from it.

The results are made by the real pipeline (`engine.worker.pipeline.process_request`: model + render).
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.errors import NotAllowed
from engine.service.requests import JobService, Requester, validate_options
from engine.store.db import session_scope
from engine.store.records import Request, RequestKind, Tune
from engine.worker.collect import collected_tunes
from tests.bot.conftest import midi_bytes
from tests.conftest import default_model_present, example_seed_bytes

ANN = Requester(discord_id=1, name="ann", guild_id=5, channel_id=6, origin="menu")
BOB = Requester(discord_id=2, name="bob", guild_id=5, channel_id=6, origin="menu")


@pytest.fixture
def made(settings):  # type: ignore[no-untyped-def]
    """A service whose requests are generated and rendered by the real pipeline."""
    if not default_model_present():
        pytest.skip("the default model (engine/data/motif-default.pt) is not there")
    from engine.worker.pipeline import process_request

    service = JobService(settings, dispatch=lambda _: None)

    def done(request_id: int) -> int:
        process_request(request_id, settings)
        with session_scope(settings.sqlalchemy_url) as s:
            req = s.get(Request, request_id)
            assert req is not None and req.result_tune_id is not None
        return request_id

    return service, done


def tune_owner(settings, tune_id: int) -> int | None:  # type: ignore[no-untyped-def]
    with session_scope(settings.sqlalchemy_url) as s:
        from engine.store.records import User

        tune = s.get(Tune, tune_id)
        user = s.get(User, tune.owner_id) if tune and tune.owner_id else None
        return user.discord_id if user else None


def seed_and_result(settings, request_id: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with session_scope(settings.sqlalchemy_url) as s:
        req = s.get(Request, request_id)
        return req.seed_tune_id, req.result_tune_id


def test_continue_this_midi_makes_the_message_author_the_seeds_owner(settings):
    service = JobService(settings, dispatch=lambda _: None)
    service.set_share_by_default(ANN, True)  # Ann shares her seeds; Bob does not
    rid = service.compose(BOB, validate_options(bars=2), example_seed_bytes(), "ann.mid", ANN)
    seed_id, _ = seed_and_result(settings, rid)
    assert tune_owner(settings, seed_id) == ANN.discord_id
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.get(Tune, seed_id).consent is True  # by Ann's default, not Bob's

    # the other way round: Bob shares by default, Ann does not; Ann's seed stays unshared
    service.set_share_by_default(ANN, False)
    service.set_share_by_default(BOB, True)
    rid = service.compose(BOB, validate_options(bars=2), midi_bytes(12), "ann2.mid", ANN)
    seed_id, _ = seed_and_result(settings, rid)
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.get(Tune, seed_id).consent is False


def test_a_reroll_of_someone_elses_result_cannot_be_shared_without_them(settings, made):
    service, done = made
    ann_rid = done(service.compose(ANN, validate_options(bars=2), example_seed_bytes(), "a.mid"))
    bob_rid = done(service.follow_up(BOB, ann_rid, RequestKind.REROLL))
    seed_id, result_id = seed_and_result(settings, bob_rid)
    assert tune_owner(settings, seed_id) == ANN.discord_id
    assert tune_owner(settings, result_id) == BOB.discord_id

    with pytest.raises(NotAllowed, match="someone else's seed"):
        service.share(bob_rid, BOB)
    assert collected_tunes(settings) == []

    # once Ann shares her request (her seed), Bob's reroll of it may join
    assert service.share(ann_rid, ANN) == 2
    assert service.share(bob_rid, BOB) == 1
    assert {t.tune_id for t in collected_tunes(settings)} >= {seed_id, result_id}

    # Ann's /forget withdraws her tunes and what was made from them, Bob's reroll included
    assert service.forget(ANN) == 3
    assert collected_tunes(settings) == []


def test_an_extension_of_someone_elses_result_needs_them_too(settings, made):
    service, done = made
    ann_rid = done(service.compose(ANN, validate_options(bars=2), None))  # from scratch
    bob_rid = done(service.follow_up(BOB, ann_rid, RequestKind.EXTEND, bars=2))
    with pytest.raises(NotAllowed):
        service.share(bob_rid, BOB)
    assert service.share(ann_rid, ANN) == 1
    assert service.share(bob_rid, BOB) == 1
    assert service.forget(ANN) == 2
    with session_scope(settings.sqlalchemy_url) as s:
        assert not list(s.scalars(select(Tune).where(Tune.consent.is_(True))))


def test_a_tune_made_on_the_command_line_cannot_be_claimed_by_sharing(settings):
    """The CLI stores a seed nobody owns; a Discord user who sends the same bytes gets that tune
    (one row per content hash) and must not take it over with Share (was: claimed)."""
    service = JobService(settings, dispatch=lambda _: None)
    seed = midi_bytes()
    service.compose(Requester(name="cli"), validate_options(bars=2), seed, "cli.mid")
    rid = service.compose(ANN, validate_options(bars=2), seed, "mine.mid")
    seed_id, _ = seed_and_result(settings, rid)
    assert tune_owner(settings, seed_id) is None
    with pytest.raises(Exception, match="nothing of yours"):
        service.share(rid, ANN)
    assert tune_owner(settings, seed_id) is None
    with session_scope(settings.sqlalchemy_url) as s:
        assert not s.get(Tune, seed_id).consent
