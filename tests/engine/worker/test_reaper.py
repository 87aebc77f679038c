from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from engine.service.requests import JobService, Requester, validate_options
from engine.store.db import session_scope
from engine.store.records import Request, RequestStatus, RunStatus, TrainingRun, utcnow
from engine.worker.claims import claim_for_generation, drain_queued
from engine.worker.reaper import reap


def _age(settings, rid: int, seconds: float, **values) -> None:
    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(
            update(Request)
            .where(Request.id == rid)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds), **values)
        )


def test_claim_is_exclusive_and_drain_takes_the_oldest(settings):
    service = JobService(settings, dispatch=lambda _: None)
    ids = [service.compose(Requester(discord_id=i), validate_options(), None) for i in range(4)]
    assert claim_for_generation(ids[2], settings) is not None
    assert claim_for_generation(ids[2], settings) is None  # a redelivered message is a no-op
    assert [c.request_id for c in drain_queued(settings, 2, {ids[2]})] == [ids[0], ids[1]]
    assert [service.progress(i).status for i in ids] == [RequestStatus.GENERATING] * 3 + [
        RequestStatus.QUEUED
    ]


def test_stale_jobs_are_requeued_then_failed_after_max_attempts(settings):
    sent: list[int] = []
    service = JobService(settings, dispatch=sent.append)
    rid = service.compose(Requester(discord_id=1), validate_options(), None)
    assert claim_for_generation(rid, settings)
    # A live heartbeat is left alone.
    assert reap(settings, dispatch=False).requeued == []
    _age(settings, rid, settings.stale_after_s + 5)
    report = reap(settings, dispatch=False)
    assert report.requeued == [rid]
    assert service.progress(rid).status is RequestStatus.QUEUED
    # Each claim counts an attempt; at the limit the reaper gives up with a clear message.
    for _ in range(settings.max_attempts - 2):
        assert claim_for_generation(rid, settings)
        _age(settings, rid, settings.stale_after_s + 5)
        reap(settings, dispatch=False)
    assert claim_for_generation(rid, settings)
    _age(settings, rid, settings.stale_after_s + 5)
    assert reap(settings, dispatch=False).failed == [rid]
    prog = service.progress(rid)
    assert prog.status is RequestStatus.FAILED and "interrupted" in prog.error_user


def test_stale_rendering_is_sent_to_render_again(settings):
    service = JobService(settings, dispatch=lambda _: None)
    rid = service.compose(Requester(discord_id=1), validate_options(), None)
    _age(settings, rid, 999, status=RequestStatus.RENDERING, attempts=1, worker="gone:1")
    report = reap(settings, dispatch=False)
    assert report.rerendered == [rid]
    assert service.progress(rid).status is RequestStatus.RENDERING


def test_dead_training_run_is_failed_never_half_active(settings):
    with session_scope(settings.sqlalchemy_url) as s:
        run = TrainingRun(
            params={}, status=RunStatus.RUNNING, heartbeat_at=utcnow() - timedelta(hours=1)
        )
        s.add(run)
        s.flush()
        run_id = run.id
    assert reap(settings, dispatch=False).runs_failed == [run_id]
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.get(TrainingRun, run_id).status is RunStatus.FAILED


def test_a_run_that_finishes_while_the_reaper_looks_is_left_alone(settings):
    """The run finishes between the reaper's SELECT and its UPDATE (a real second writer, timed
    by a hook on the engine's own statements): the finished run must stay done."""
    from sqlalchemy import event

    from engine.store.db import engine_for

    url = settings.sqlalchemy_url
    with session_scope(url) as s:
        run = TrainingRun(
            params={}, status=RunStatus.EVALUATING, heartbeat_at=utcnow() - timedelta(hours=1)
        )
        s.add(run)
        s.flush()
        run_id = run.id
    finished: list[str] = []

    def finish_first(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE TRAINING_RUNS") and not finished:
            finished.append(statement)
            with session_scope(url) as s:
                s.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id == run_id)
                    .values(status=RunStatus.DONE, heartbeat_at=utcnow(), finished_at=utcnow())
                )

    engine = engine_for(url)
    event.listen(engine, "before_cursor_execute", finish_first)
    try:
        report = reap(settings, dispatch=False)
    finally:
        event.remove(engine, "before_cursor_execute", finish_first)
    assert finished  # the second writer did run between the SELECT and the UPDATE
    assert report.runs_failed == []
    with session_scope(url) as s:
        row = s.get(TrainingRun, run_id)
        assert row.status is RunStatus.DONE and row.error is None
