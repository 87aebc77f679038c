"""One reaper decides (issue #26): several reapers at once re-send each lost message once, and
a queue is busy while any worker that takes it works, whatever stage it is in."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from engine.service.requests import JobService, Requester, validate_options
from engine.settings import Settings
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import Request, RequestStatus, Worker, utcnow
from engine.worker.reaper import ReapReport, resend_lost
from tests.conftest import make_settings

LONG_AGO = timedelta(seconds=600)


def _set(settings: Settings, rid: int, **values: object) -> None:
    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(update(Request).where(Request.id == rid).values(**values))


def _worker(settings: Settings, queues: str) -> None:
    """A live worker on another machine, up for a while (its presence row is fresh)."""
    with session_scope(settings.sqlalchemy_url) as s:
        name = f"motif-{queues}@elsewhere"
        s.add(Worker(hostname=name, queues=queues, pid=1, started_at=utcnow() - LONG_AGO))


def _requests(settings: Settings, n: int) -> list[int]:
    service = JobService(settings, dispatch=lambda _rid: None)
    return [service.compose(Requester(discord_id=i), validate_options()) for i in range(n)]


def _messages(settings: Settings, queue: str) -> int:
    """Messages really in the embedded broker for `queue` (one file each)."""
    return len(list((settings.broker_folder / "out").glob(f"*.{queue}.msg")))


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path) -> Settings:
    """One database that several reapers share: embedded SQLite, or the machine's Postgres."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else ""
    settings = make_settings(tmp_path, database_url=url, resend_after_s=5.0)
    db.upgrade(settings.sqlalchemy_url)
    return settings


def test_two_reapers_resend_each_lost_message_once(shared):
    settings = shared
    _worker(settings, "gpu,cpu,train")
    queued = _requests(settings, 12)
    rendering = _requests(settings, 4)
    for rid in queued:  # sent long ago, and no stage is busy: lost with the broker, maybe
        _set(settings, rid, sent_at=utcnow() - LONG_AGO)
    for rid in rendering:  # generated, render never claimed
        old = utcnow() - LONG_AGO
        _set(settings, rid, status=RequestStatus.RENDERING, heartbeat_at=old, attempts=1)
    before = _messages(settings, "gpu"), _messages(settings, "cpu")

    reports: list[ReapReport] = []
    start = threading.Barrier(2)

    def reaper() -> None:
        start.wait()
        reports.append(resend_lost(settings))

    threads = [threading.Thread(target=reaper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(reports) == 2
    assert sorted(reports[0].resent + reports[1].resent) == queued  # each row by one reaper
    assert sorted(reports[0].resent_renders + reports[1].resent_renders) == rendering
    assert _messages(settings, "gpu") - before[0] == len(queued)  # one message each
    assert _messages(settings, "cpu") - before[1] == len(rendering)
    assert resend_lost(settings).resent == []  # just sent: not again


def test_a_gpu_worker_that_renders_keeps_the_gpu_queue_busy(tmp_path):
    settings = make_settings(tmp_path, resend_after_s=5.0)
    db.upgrade(settings.sqlalchemy_url)
    _worker(settings, "cpu,gpu")
    lost, working = _requests(settings, 2)
    _set(settings, lost, sent_at=utcnow() - LONG_AGO)
    # The only gpu worker renders (concurrency 1): it consumes no gpu message meanwhile, so
    # the queued row's message is just waiting, not lost.
    busy = dict(heartbeat_at=utcnow(), worker="elsewhere:7", attempts=1)
    _set(settings, working, status=RequestStatus.RENDERING, worker_queues="cpu,gpu", **busy)
    assert resend_lost(settings).resent == []
    # A render-only worker renders: nobody works on the gpu queue, its message may be lost.
    _set(settings, working, worker_queues="cpu")
    assert resend_lost(settings).resent == [lost]


def test_a_worker_that_just_started_has_not_lost_the_waiting_messages(tmp_path):
    settings = make_settings(tmp_path, resend_after_s=5.0)
    db.upgrade(settings.sqlalchemy_url)
    (waiting,) = _requests(settings, 1)
    _set(settings, waiting, sent_at=utcnow() - LONG_AGO)  # queued before any worker came up
    with session_scope(settings.sqlalchemy_url) as s:
        s.add(Worker(hostname="motif@elsewhere", queues="gpu,cpu", pid=1))  # just started
    assert resend_lost(settings).resent == []  # it has its message to consume first
    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(update(Worker).values(started_at=utcnow() - LONG_AGO))
    assert resend_lost(settings).resent == [waiting]  # up and idle the whole window: lost


def test_a_cpu_worker_that_generates_keeps_the_cpu_queue_busy(tmp_path):
    settings = make_settings(tmp_path, resend_after_s=5.0)
    db.upgrade(settings.sqlalchemy_url)
    _worker(settings, "cpu,gpu")
    waiting, working = _requests(settings, 2)
    old = utcnow() - LONG_AGO
    _set(settings, waiting, status=RequestStatus.RENDERING, heartbeat_at=old, attempts=1)
    busy = dict(heartbeat_at=utcnow(), worker="elsewhere:7", attempts=1)
    _set(settings, working, status=RequestStatus.GENERATING, worker_queues="cpu,gpu", **busy)
    assert resend_lost(settings).resent_renders == []
    _set(settings, working, worker_queues="gpu")
    assert resend_lost(settings).resent_renders == [waiting]


def test_a_worker_between_two_short_tasks_is_not_idle(tmp_path):
    # Measured in a flood of 200: both workers rendered 0.3 s tasks back to back, and a reaper
    # that asked "is a stage running right now?" between two of them re-sent 43 queued rows.
    settings = make_settings(tmp_path, resend_after_s=5.0)
    db.upgrade(settings.sqlalchemy_url)
    _worker(settings, "cpu,gpu")
    lost, rendered, generated = _requests(settings, 3)
    _set(settings, lost, sent_at=utcnow() - LONG_AGO)
    just = utcnow() - timedelta(seconds=1)
    done = dict(status=RequestStatus.DONE, finished_at=just, worker="elsewhere:7")
    _set(settings, rendered, worker_queues="cpu,gpu", **done)  # a render finished a second ago
    assert resend_lost(settings).resent == []
    _set(settings, rendered, worker_queues="cpu")  # ...by a render-only worker: gpu idle
    _set(settings, generated, status=RequestStatus.RENDERING, rendering_at=just)  # a batch
    assert resend_lost(settings).resent == []
    _set(settings, generated, rendering_at=utcnow() - LONG_AGO)
    assert resend_lost(settings).resent == [lost]
