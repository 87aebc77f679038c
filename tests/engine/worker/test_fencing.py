"""Fencing (issue #26): a claimant that was taken over writes nothing more, and its heartbeat
comes from a thread at a fixed interval. Plain function calls on a real embedded Motif."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from engine.service.requests import JobService, Requester, validate_options
from engine.settings import Settings
from engine.store import db
from engine.store.artifacts import store_for
from engine.store.db import session_scope
from engine.store.records import Artifact, Request, RequestStatus, utcnow
from engine.worker.claims import claim_for_generation, claim_for_render
from engine.worker.fencing import Beats, Claim, ClaimLost, beat, fail_claimed, heartbeat
from engine.worker.generation import generate_batch
from engine.worker.pipeline import run_generation
from engine.worker.rendering import _render_claimed, render_request
from tests.conftest import make_settings


def _settings(tmp_path: Path, model: Path) -> Settings:
    s = make_settings(tmp_path, default_model_path=model)
    db.upgrade(s.sqlalchemy_url)
    return s


def _request(settings: Settings) -> int:
    service = JobService(settings, dispatch=lambda _rid: None)
    options = validate_options(bars=2, style="folk", rng_seed=5, settings=settings)
    return service.compose(Requester(origin="cli", name="test"), options)


def _hang(settings: Settings, rid: int) -> None:
    """The claimant stops beating (SIGSTOP, a long GC pause): its lease runs out."""
    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(
            update(Request)
            .where(Request.id == rid)
            .values(heartbeat_at=utcnow() - timedelta(seconds=settings.claim_lease_s + 1))
        )


def _state(settings: Settings, rid: int) -> tuple[RequestStatus, int, dict, dict[str, bytes]]:
    store = store_for(settings.artifact_root)
    with session_scope(settings.sqlalchemy_url) as s:
        row = s.get(Request, rid)
        assert row is not None
        keys = list(s.scalars(select(Artifact.key).where(Artifact.request_id == rid)))
        return row.status, row.attempts, dict(row.timings), {k: store.get(k) for k in keys}


def _files(settings: Settings, rid: int) -> set[str]:
    """What the attempts wrote (not the seed kept at submission, requests/<id>/seed.json)."""
    base = Path(settings.artifact_root) / "requests" / str(rid)
    return {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and p.parent != base}


def test_a_taken_over_generator_writes_nothing(tmp_path, tiny_model_path):
    settings = _settings(tmp_path, tiny_model_path)
    rid = _request(settings)
    stale = claim_for_generation(rid, settings)
    assert stale is not None and stale.attempt == 1
    _hang(settings, rid)
    winner = claim_for_generation(rid, settings)  # the redelivered message takes it over
    assert winner is not None and winner.attempt == 2
    # The stale claimant finishes its decode while the winner is still generating (the same
    # status: only the claim's attempt tells them apart): its result is not kept.
    taken = _state(settings, rid)
    assert generate_batch([stale], settings, Beats(1.0)) == []
    assert _state(settings, rid) == taken and _files(settings, rid) == set()
    assert generate_batch([winner], settings, Beats(1.0)) == [rid]
    before = _state(settings, rid)
    assert before[0] is RequestStatus.RENDERING
    assert _files(settings, rid) == {f"attempt-2/motif-{rid}.mid"}

    # The stale claimant wakes up: each of its writes is refused, and it stops.
    assert beat([stale], settings) == {rid}
    assert generate_batch([stale], settings, Beats(1.0)) == []
    assert not fail_claimed(stale, settings, "failed", "stale")
    assert _state(settings, rid) == before  # row, artifacts and their bytes: untouched
    assert _files(settings, rid) == {f"attempt-2/motif-{rid}.mid"}  # its own file removed
    assert render_request(rid, settings)  # the winner's result renders as usual
    assert _state(settings, rid)[0] is RequestStatus.DONE


def test_a_taken_over_renderer_writes_nothing(tmp_path, tiny_model_path):
    settings = _settings(tmp_path, tiny_model_path)
    rid = _request(settings)
    assert run_generation(rid, settings) == [rid]
    stale = claim_for_render(rid, settings)
    assert stale is not None and claim_for_render(rid, settings) is None  # one renderer
    _hang(settings, rid)
    winner = claim_for_render(rid, settings)
    assert winner is not None and winner.attempt == stale.attempt + 1
    # The stale renderer finishes while the winner still renders: refused, its files removed.
    taken, generated = _state(settings, rid), _files(settings, rid)
    with pytest.raises(ClaimLost):
        _render_claimed(stale, settings)
    assert _state(settings, rid) == taken and _files(settings, rid) == generated
    assert _render_claimed(winner, settings)
    done = _state(settings, rid)
    assert done[0] is RequestStatus.DONE
    winners_files = _files(settings, rid)

    # The stale renderer finishes its render late: nothing it made is kept or left behind.
    with pytest.raises(ClaimLost):
        _render_claimed(stale, settings)
    assert _state(settings, rid) == done
    assert _files(settings, rid) == winners_files


def test_a_live_claim_is_not_taken_over_and_a_lost_one_is_seen_by_its_heartbeat(
    tmp_path, tiny_model_path
):
    settings = _settings(tmp_path, tiny_model_path)
    rid = _request(settings)
    claim = claim_for_generation(rid, settings)
    assert claim is not None
    assert claim_for_generation(rid, settings) is None  # live: a redelivery is a no-op
    with heartbeat([claim], settings, every_s=0.1) as beats:
        assert claim_for_generation(rid, settings) is None  # beating here: still a no-op
        with session_scope(settings.sqlalchemy_url) as s:  # another worker takes it over
            s.execute(
                update(Request)
                .where(Request.id == rid)
                .values(worker="elsewhere:1", attempts=claim.attempt + 1)
            )
        deadline = time.monotonic() + 30
        while rid not in beats.lost:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_heartbeats_keep_their_interval_while_the_stage_holds_the_cpu(settings):
    rid = _request(settings)
    claim = claim_for_generation(rid, settings)
    assert isinstance(claim, Claim)
    every_s = 0.5
    with heartbeat([claim], settings, every_s) as beats:
        # pure-Python work that never sleeps nor waits, like a decode or an engraving
        end = time.monotonic() + 8 * every_s
        total = 0
        while time.monotonic() < end:
            total += sum(i * i for i in range(10_000))
    assert total > 0 and not beats.lost
    assert 0 < beats.max_gap_s <= 2 * every_s


def test_a_batch_interrupted_by_an_outage_is_taken_up_again_as_a_batch(tmp_path, tiny_model_path):
    settings = _settings(tmp_path, tiny_model_path)
    rids = [_request(settings) for _ in range(3)]
    # A batch was claimed here, then the database went away mid-decode: the task raised, its
    # heartbeat stopped, the claims stayed (nothing can be written during the outage).
    claims = [claim_for_generation(rid, settings) for rid in rids]
    assert all(c is not None and c.attempt == 1 for c in claims)
    for rid in rids:
        _set_beat(settings, rid, seconds_ago=3.0)  # the database is back a little later
    # The task's retry: the whole batch is queued again, claimed and decoded together.
    assert sorted(run_generation(rids[0], settings)) == rids
    for rid in rids:
        status, attempts, timings, _ = _state(settings, rid)
        assert status is RequestStatus.RENDERING
        assert attempts == 2 and timings["batch_size"] == 3


def _set_beat(settings: Settings, rid: int, seconds_ago: float) -> None:
    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(
            update(Request)
            .where(Request.id == rid)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds_ago))
        )


def _gil_holding_call(seconds: float) -> Callable[[], object]:
    """A C call that keeps the GIL for about `seconds` (as verovio and resvg do on a long
    score): a backtracking regular expression, sized on this machine."""
    n = 16
    while True:
        started = time.monotonic()
        re.match(r"(a*)*b", "a" * n)
        if time.monotonic() - started >= seconds / 2 or n > 40:
            return lambda: re.match(r"(a*)*b", "a" * n)
        n += 1


def test_heartbeats_keep_their_interval_while_a_step_keeps_the_gil(settings):
    rid = _request(settings)
    claim = claim_for_generation(rid, settings)
    assert claim is not None
    every_s = 1.0
    step = _gil_holding_call(every_s / 3)
    with heartbeat([claim], settings, every_s) as beats:
        end = time.monotonic() + 8 * every_s
        while time.monotonic() < end:
            step()  # no other thread runs meanwhile...
            beats.tick(claim)  # ...so the stage beats between its steps when one is due
    assert not beats.lost
    assert 0 < beats.max_gap_s <= 2 * every_s
