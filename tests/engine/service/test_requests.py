from __future__ import annotations

import pytest
from sqlalchemy import func, select

from engine.errors import (
    BadMidi,
    BadParams,
    QueueFull,
    QueueUnreachable,
    RateLimited,
    ServiceUnavailable,
)
from engine.music.request import ComposeOptions
from engine.service.requests import JobService, Requester, validate_options
from engine.store.db import session_scope
from engine.store.records import Request, RequestKind, RequestStatus, Tune, TuneSource
from tests.conftest import example_seed_bytes, make_settings


def count(settings, model) -> int:
    with session_scope(settings.sqlalchemy_url) as s:
        return s.scalar(select(func.count(model.id))) or 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bars": 0}, "bars"),
        ({"bars": 10_000}, "bars"),
        ({"bars": True}, "bars"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 99}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"style": "dubstep"}, "unknown style"),
        ({"instrument": "theremin"}, "unknown instrument"),
        ({"instrument": 127}, "unknown instrument"),
        ({"tempo": 5}, "tempo"),
        ({"tempo": float("inf")}, "tempo"),
        ({"rng_seed": -1}, "rng_seed"),
        ({"from_bar": 1}, "from_bar"),
        ({"from_bar": True}, "from_bar"),
        ({"from_bar": 10**9}, "from_bar"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(BadParams, match=message):
        validate_options(**kwargs)


def test_good_options_are_normalised():
    o = validate_options(bars=4, style="folk", instrument="Flute", temperature=0.8, rng_seed=7)
    assert o == ComposeOptions(bars=4, style="folk", temperature=0.8, instrument=73, rng_seed=7)
    assert ComposeOptions.from_params(o.to_params()) == o


def test_compose_records_request_and_seed_tune_and_queues_it(settings):
    sent: list[int] = []
    service = JobService(settings, dispatch=sent.append)
    who = Requester(
        discord_id=42, name="ann", guild_id=1, channel_id=2, interaction_id=3, origin="slash"
    )
    rid = service.compose(who, validate_options(bars=4), example_seed_bytes(), "ode.mid")
    assert sent == [rid]
    prog = service.progress(rid)
    assert prog.status is RequestStatus.QUEUED and prog.queue_position == 1
    assert prog.seed_name == "ode.mid" and prog.user_discord_id == 42 and prog.channel_id == 2
    assert isinstance(prog.params["rng_seed"], int)  # recorded so the result can be replayed
    with session_scope(settings.sqlalchemy_url) as s:
        tune = s.scalar(select(Tune))
        assert tune.source is TuneSource.SEED and tune.note_count > 0 and not tune.consent
    # The same seed again is the same tune (deduplicated by content hash).
    rid2 = service.compose(who, validate_options(bars=4), example_seed_bytes(), "ode.mid")
    assert service.progress(rid2).queue_position == 2
    assert count(settings, Tune) == 1


def test_compose_from_a_bar_records_the_cut_and_what_the_reply_says(settings):
    service = JobService(settings, dispatch=lambda _: None)
    who = Requester(discord_id=9)
    rid = service.compose(who, validate_options(from_bar=3), example_seed_bytes(), "ode.mid")
    prog = service.progress(rid)
    assert prog.params["from_bar"] == 3
    assert prog.notes == {
        "from_bar": "The seed is bars 1-2; the continuation starts at bar 3.",
        "seed_name": "ode.mid",  # the name this requester gave (tunes are shared by hash)
    }
    with session_scope(settings.sqlalchemy_url) as s:
        request = s.get(Request, rid)
        request.status, request.result_tune_id = RequestStatus.DONE, request.seed_tune_id
    # a reroll cuts the same seed and says so again; an extension continues the whole result
    reroll = service.progress(service.follow_up(who, rid, RequestKind.REROLL))
    assert reroll.params["from_bar"] == 3 and reroll.notes == prog.notes
    extend = service.progress(service.follow_up(who, rid, RequestKind.EXTEND))
    assert extend.params["from_bar"] is None
    assert extend.notes == {"seed_name": f"the result of #{rid}"}
    # the worker cuts the stored file the same way
    from engine.worker.generation import load_job

    job = load_job(rid, settings)
    assert job.seed is not None and max(n.start for n in job.seed.notes) < 2 * 4
    assert len(job.seed.notes) < len(load_job(extend.request_id, settings).seed.notes)
    with pytest.raises(BadParams, match="from_bar needs a seed"):
        service.compose(who, validate_options(from_bar=3))
    other = Requester(discord_id=10)  # `who` is at the cap now, and limits come first
    with pytest.raises(BadMidi, match="from_bar is 99"):
        service.compose(other, validate_options(from_bar=99), example_seed_bytes(), "ode.mid")


def test_ending_is_kept_by_follow_ups_and_an_extension_continues_before_the_cadence(settings):
    service = JobService(settings, dispatch=lambda _: None)
    who = Requester(discord_id=9, channel_id=5)  # (follow-ups are clicked in the same channel)
    rid = service.compose(who, validate_options(bars=2), example_seed_bytes(), "ode.mid")
    assert service.progress(rid).params["ending"] == "close"  # the default
    # (two requests per user at once)
    who2, who3 = Requester(discord_id=10, channel_id=5), Requester(discord_id=11, channel_id=5)
    opened = service.compose(who2, validate_options(ending="open"), example_seed_bytes(), "o.mid")
    with session_scope(settings.sqlalchemy_url) as s:
        for r in (rid, opened):
            request = s.get(Request, r)
            request.status, request.result_tune_id = RequestStatus.DONE, request.seed_tune_id
    reroll = service.progress(service.follow_up(who, rid, RequestKind.REROLL))
    assert reroll.params["ending"] == "close" and not reroll.params["reopen_seed"]
    extend = service.progress(service.follow_up(who2, rid, RequestKind.EXTEND))
    assert extend.params["ending"] == "close" and extend.params["reopen_seed"]
    # an open result is extended as it is
    assert not service.progress(service.follow_up(who3, opened, RequestKind.EXTEND)).params[
        "reopen_seed"
    ]
    from engine.worker.generation import load_job

    whole = load_job(rid, settings).seed
    cut = load_job(extend.request_id, settings).seed
    assert whole is not None and cut is not None
    # the last half bar (the closing beat of 4/4) is gone, the rest kept
    end = max(n.end for n in whole.notes)
    assert max(n.end for n in cut.notes) <= end - 2 + 1e-9
    assert all(n in cut.notes for n in whole.notes if n.end <= end - 2)
    with pytest.raises(BadParams, match="ending must be one of"):
        validate_options(ending="fade")


def test_bad_seed_writes_nothing(settings):
    service = JobService(settings, dispatch=lambda _: None)
    with pytest.raises(BadMidi):
        service.compose(Requester(discord_id=1), validate_options(), b"not a midi file", "x.mid")
    assert count(settings, Request) == 0 and count(settings, Tune) == 0


def test_broker_down_is_a_clear_error_that_says_the_request_is_saved(tmp_path):
    from engine.store import db

    s = make_settings(tmp_path, broker_url="redis://127.0.0.1:1/0")
    db.upgrade(s.sqlalchemy_url)
    service = JobService(s)
    with pytest.raises(QueueUnreachable, match="queue is unreachable") as caught:
        service.compose(Requester(discord_id=1), validate_options(), example_seed_bytes(), "a.mid")
    # The row was committed before the send (the outbox): it is kept, unsent, and the message
    # says so; the reaper sends it when the broker is back
    # (tests/engine/worker/test_resends_and_takeovers.py).
    assert caught.value.saved and "#1 is saved" in caught.value.user_message
    prog = service.progress(1)
    assert prog.status is RequestStatus.QUEUED and count(s, Tune) == 1
    with session_scope(s.sqlalchemy_url) as session:
        assert session.get(Request, 1).sent_at is None


def test_database_down_is_a_clear_error(tmp_path):
    s = make_settings(tmp_path, database_url="postgresql+psycopg://x@127.0.0.1:1/none")
    service = JobService(s, dispatch=lambda _: None)
    with pytest.raises(ServiceUnavailable, match="database is unreachable"):
        service.compose(Requester(discord_id=1), validate_options(), None, "")


def test_per_user_limits_and_global_cap(tmp_path):
    from engine.store import db

    s = make_settings(tmp_path, user_max_concurrent=2, user_rate_per_min=3, queue_cap=3)
    db.upgrade(s.sqlalchemy_url)
    service = JobService(s, dispatch=lambda _: None)
    ann = Requester(discord_id=1)
    service.compose(ann, validate_options(), None)
    service.compose(ann, validate_options(), None)
    with pytest.raises(RateLimited, match="in progress") as exc:
        service.compose(ann, validate_options(), None)
    assert exc.value.retry_after_s > 0
    service.compose(Requester(discord_id=2), validate_options(), None)
    with pytest.raises(QueueFull, match="queue is full"):
        service.compose(Requester(discord_id=3), validate_options(), None)


def test_rate_limit_per_minute_says_when_to_retry(tmp_path):
    from engine.store import db

    s = make_settings(tmp_path, user_max_concurrent=10, user_rate_per_min=2)
    db.upgrade(s.sqlalchemy_url)
    service = JobService(s, dispatch=lambda _: None)
    ann = Requester(discord_id=1)
    for _ in range(2):
        service.compose(ann, validate_options(), None)
    with pytest.raises(RateLimited, match=r"try again in \d+ s"):
        service.compose(ann, validate_options(), None)


def test_follow_ups_rate_share_forget(tmp_path):
    from engine.store import db

    settings = make_settings(tmp_path, user_max_concurrent=10)
    db.upgrade(settings.sqlalchemy_url)
    service = JobService(settings, dispatch=lambda _: None)
    ann = Requester(discord_id=1)
    rid = service.compose(ann, validate_options(bars=4, temperature=0.9), example_seed_bytes(), "s")
    with pytest.raises(BadParams, match="no finished result"):
        service.follow_up(ann, rid, RequestKind.EXTEND)
    reroll = service.follow_up(ann, rid, RequestKind.REROLL)
    vary = service.follow_up(ann, rid, RequestKind.VARIATION, temperature=1.2)
    with session_scope(settings.sqlalchemy_url) as s:
        a, b, c = (s.get(Request, i) for i in (rid, reroll, vary))
        assert b.parent_id == rid and b.seed_tune_id == a.seed_tune_id
        assert b.params["temperature"] == 0.9 and b.kind is RequestKind.REROLL
        assert c.params["temperature"] == 1.2 and c.kind is RequestKind.VARIATION
    service.rate(rid, ann, 1)
    service.rate(rid, ann, -1)  # a second vote replaces the first
    with pytest.raises(BadParams):
        service.rate(rid, ann, 5)
    assert service.share(rid, ann) == 1
    with pytest.raises(Exception, match="only the person"):
        service.share(rid, Requester(discord_id=99))
    assert service.forget(ann) == 1
    with session_scope(settings.sqlalchemy_url) as s:
        tune = s.scalar(select(Tune))
        assert not tune.consent and tune.withdrawn_at is not None
    assert [p.request_id for p in service.history(ann)] == [vary, reroll, rid]
    assert service.cancel(vary, ann) is True
    assert service.progress(vary).status is RequestStatus.CANCELLED


def test_two_first_requests_from_a_new_user_do_not_collide(settings):
    import threading

    service = JobService(settings, dispatch=lambda _: None)
    errors: list[BaseException] = []

    def go() -> None:
        try:
            service.compose(Requester(discord_id=777, name="new"), validate_options(), None)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(service.history(Requester(discord_id=777))) == 2


def test_delivery_claims_let_one_bot_process_post_each_result(settings):
    from sqlalchemy import update

    service = JobService(settings, dispatch=lambda rid: None)
    who = Requester(discord_id=42, name="ann", guild_id=1, channel_id=2, origin="slash")
    rid = service.compose(who, validate_options(bars=4), None, None)
    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(update(Request).where(Request.id == rid).values(status=RequestStatus.DONE))
    assert service.undelivered() == [rid]

    assert service.claim_delivery(rid, "bot-a", lease_s=60)
    assert not service.claim_delivery(rid, "bot-b", lease_s=60)  # a live claim is exclusive
    assert service.claim_delivery(rid, "bot-a", lease_s=60)  # ... and its owner renews it
    assert service.undelivered() == []  # the sweeps of other bots leave it alone

    service.release_delivery(rid, "bot-b")  # not the owner: nothing happens
    assert not service.claim_delivery(rid, "bot-b", lease_s=60)
    service.release_delivery(rid, "bot-a")
    assert service.undelivered() == [rid]
    assert service.claim_delivery(rid, "bot-b", lease_s=-1)  # a lease that already ran out ...
    assert service.undelivered() == [rid]
    assert service.claim_delivery(rid, "bot-a", lease_s=60)  # ... is taken over (its bot died)

    service.mark_delivered(rid)
    assert not service.claim_delivery(rid, "bot-a", lease_s=60)  # delivered: nobody posts again
    assert service.undelivered() == []


@pytest.mark.services
def test_the_same_new_tune_stored_at_once_is_one_row_and_no_error(own_pg_database):
    """Two uploads of the same file race: the loser's insert waits on the unique index, then
    gets the winner's row (insert-or-get), never an IntegrityError."""
    import threading

    from engine.service.tunes import tune_for
    from engine.store import db

    url, _ = own_pg_database
    db.upgrade(url)

    def tune() -> Tune:
        return Tune(
            content_hash="ab" * 32, source=TuneSource.SEED, midi_key="k", note_count=1,
            duration_s=1.0,
        )  # fmt: skip

    got: list[int] = []
    with session_scope(url) as winner:
        winner.add(tune())
        winner.flush()  # inserted, not committed: the other insert blocks on the index
        with session_scope(url) as probe:  # the loser cannot see it yet
            assert probe.scalar(select(Tune.id)) is None

        def loser() -> None:
            with session_scope(url) as session:
                got.append(tune_for(session, tune()).id)

        thread = threading.Thread(target=loser)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive()  # waiting on the winner's uncommitted row
    thread.join(timeout=30)
    with session_scope(url) as s:
        assert got == [s.scalar(select(Tune.id))] and s.scalar(select(func.count(Tune.id))) == 1
