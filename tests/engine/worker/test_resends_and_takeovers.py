"""The outbox and takeovers: a queued row always has a message on its way, lost messages are
sent again, a job whose claimant is gone is taken over, double sends are harmless."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from engine.errors import QueueUnreachable
from engine.queue.dispatch import dispatch_request
from engine.service.requests import JobService, Requester, validate_options
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import Artifact, Request, RequestStatus, Worker, utcnow
from engine.worker.claims import claim_for_generation
from engine.worker.pipeline import process_request, run_generation, run_render
from engine.worker.reaper import reap, resend_lost
from tests.conftest import example_seed_bytes, make_settings


def _set(settings, rid: int, **values) -> None:
    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(update(Request).where(Request.id == rid).values(**values))


def _row(settings, rid: int) -> Request:
    with session_scope(settings.sqlalchemy_url) as s:
        return s.get(Request, rid)


def _presence(settings, name: str, queues: str = "gpu,cpu,train", age_s: float = 0.0) -> None:
    with session_scope(settings.sqlalchemy_url) as s:
        s.add(
            Worker(
                hostname=name,
                queues=queues,
                pid=1,
                last_seen=utcnow() - timedelta(seconds=age_s),
                started_at=utcnow() - timedelta(seconds=age_s + 600),  # up for a while
            )
        )


def test_broker_down_then_back_the_reaper_sends_the_saved_request(tmp_path, own_redis):
    s = make_settings(tmp_path, broker_url=own_redis.url, broker_timeout_s=1.0)
    db.upgrade(s.sqlalchemy_url)
    service = JobService(s)
    with pytest.raises(QueueUnreachable) as caught:
        service.compose(Requester(discord_id=1), validate_options(), example_seed_bytes(), "a.mid")
    assert caught.value.saved
    _set(s, 1, created_at=utcnow() - timedelta(seconds=10))
    # The broker is still down: the reaper tries, is refused, and leaves the row unsent.
    report = resend_lost(s)
    assert report.send_failed and report.resent == [] and _row(s, 1).sent_at is None
    own_redis.start()
    report = resend_lost(s)
    assert report.resent == [1] and _row(s, 1).sent_at is not None
    assert own_redis.length("gpu") == 1  # the message really is in the broker
    assert resend_lost(s).resent == []  # sent: not again while it is young


def test_a_hung_broker_does_not_block_dispatch(tmp_path):
    # A server that accepts connections and never answers (a wedged Redis).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    s = make_settings(tmp_path, broker_url=f"redis://127.0.0.1:{port}/0", broker_timeout_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(QueueUnreachable, match="unreachable"):
            dispatch_request(1, s)
        # bounded by the broker timeouts (1 s each here), not forever; generous for load
        assert time.monotonic() - started < 20
    finally:
        stop.set()
        thread.join(timeout=5)
        for c in held:
            c.close()
        server.close()


@pytest.mark.parametrize("retries", [0, 2])
def test_a_send_connects_at_most_1_plus_broker_connect_retries_times(tmp_path, retries):
    # A server that accepts each connection and closes it at once: every connect fails, and
    # kombu retried it 8 times (6 s of sleeps) before; MOTIF_BROKER_CONNECT_RETRIES bounds it.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    connects = 0
    stop = threading.Event()

    def accept() -> None:
        nonlocal connects
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                server.accept()[0].close()
                connects += 1

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    s = make_settings(
        tmp_path, broker_url=f"redis://127.0.0.1:{port}/0", broker_connect_retries=retries
    )
    try:
        with pytest.raises(QueueUnreachable):
            dispatch_request(1, s)
        time.sleep(0.3)  # the last connection's accept
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
    assert connects == 1 + retries


def test_lost_queued_messages_are_resent_only_when_generation_is_idle(tmp_path):
    s = make_settings(tmp_path, resend_after_s=5.0)
    db.upgrade(s.sqlalchemy_url)
    sent: list[int] = []
    service = JobService(s, dispatch=sent.append)
    a = service.compose(Requester(discord_id=1), validate_options(), None)
    b = service.compose(Requester(discord_id=2), validate_options(), None)
    assert sent == [a, b] and _row(s, a).sent_at is not None
    old = utcnow() - timedelta(seconds=60)
    _set(s, a, sent_at=old)
    _set(s, b, sent_at=old)

    def resent() -> list[int]:
        sent.clear()
        import engine.queue.dispatch as q

        real = q.dispatch_request
        q.dispatch_request = lambda rid, settings=None: sent.append(rid)
        try:
            return resend_lost(s).resent
        finally:
            q.dispatch_request = real

    # No live worker takes the gpu queue: a re-send would only pile up in the broker.
    assert resent() == []
    _presence(s, "motif-gpu-cpu-train-1@elsewhere")
    # Generation is busy (a row beats): the queue is just long, its messages are on their way.
    c = service.compose(Requester(discord_id=3), validate_options(), None)
    _set(s, c, status=RequestStatus.GENERATING, heartbeat_at=utcnow(), worker="elsewhere:1")
    assert resent() == []
    # Idle generation and old messages: they may have died with the broker; send them again.
    _set(s, c, status=RequestStatus.DONE)
    assert resent() == [a, b] == sent
    assert resent() == []  # sent_at renewed


def test_a_double_send_is_harmless(settings, tiny_model_path):
    s = settings.model_copy(update={"default_model_path": tiny_model_path})
    service = JobService(s, dispatch=lambda _: None)
    rid = service.compose(Requester(discord_id=1), validate_options(bars=2), example_seed_bytes())
    assert process_request(rid, s) is RequestStatus.DONE
    before = _row(s, rid)
    # The same messages again (a re-send that crossed a live one): both stages are no-ops.
    assert run_generation(rid, s) == [] and run_render(rid, s) is False
    after = _row(s, rid)
    assert after.status is RequestStatus.DONE and after.attempts == before.attempts == 1
    assert after.finished_at == before.finished_at
    with session_scope(s.sqlalchemy_url) as session:
        assert session.scalar(select(func.count(Artifact.id))) == 6  # one set (with the PDF)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_job_whose_claimant_is_gone_is_taken_over(settings):
    service = JobService(settings, dispatch=lambda _: None)
    rid = service.compose(Requester(discord_id=1), validate_options(), None)
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fresh = {"status": RequestStatus.GENERATING, "heartbeat_at": utcnow(), "attempts": 1}
        # A live claimant on this machine keeps its job.
        _set(settings, rid, worker=f"{host}:{sleeper.pid}", **fresh)
        assert claim_for_generation(rid, settings) is None
        # Its process died (kill -9 of a pool child): taken over at once, counted as a try.
        _set(settings, rid, worker=f"{host}:{_dead_pid()}", **fresh)
        assert claim_for_generation(rid, settings) is not None
        row = _row(settings, rid)
        assert row.attempts == 2 and row.worker.endswith(f":{__import__('os').getpid()}")
        # Another machine with a live worker presence keeps its job; without one, it is gone.
        _set(settings, rid, worker="far-away:123", **fresh)
        _presence(settings, "motif-gpu-9@far-away")
        assert claim_for_generation(rid, settings) is None
        with session_scope(settings.sqlalchemy_url) as session:
            session.execute(update(Worker).values(last_seen=utcnow() - timedelta(seconds=3600)))
        assert claim_for_generation(rid, settings) is not None
        # A claimant that stopped beating (wedged) loses it after the claim lease.
        stale = utcnow() - timedelta(seconds=settings.claim_lease_s + 1)
        _set(settings, rid, worker=f"{host}:{sleeper.pid}", **{**fresh, "heartbeat_at": stale})
        assert claim_for_generation(rid, settings) is not None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_reaper_requeues_a_dead_claimants_job_without_waiting(settings):
    sent: list[int] = []
    service = JobService(settings, dispatch=sent.append)
    rid = service.compose(Requester(discord_id=1), validate_options(), None)
    host = socket.gethostname()
    _set(
        settings,
        rid,
        status=RequestStatus.GENERATING,
        heartbeat_at=utcnow(),
        attempts=1,
        worker=f"{host}:{_dead_pid()}",
    )
    report = reap(settings, dispatch=False)
    assert report.requeued == [rid]
    row = _row(settings, rid)
    assert row.status is RequestStatus.QUEUED and row.sent_at is None  # the reaper sends it


def test_queue_wait_counts_to_the_first_start_after_a_recovery(settings, tiny_model_path):
    s = settings.model_copy(update={"default_model_path": tiny_model_path})
    service = JobService(s, dispatch=lambda _: None)
    rid = service.compose(Requester(discord_id=1), validate_options(bars=2), None)
    created = _row(s, rid).created_at
    # Started 30 s after it was queued, then its worker died; 100 s later it is taken over.
    _set(
        s,
        rid,
        created_at=created - timedelta(seconds=130),
        generating_at=created - timedelta(seconds=100),
        status=RequestStatus.GENERATING,
        heartbeat_at=created - timedelta(seconds=100),
        attempts=1,
        worker=f"{socket.gethostname()}:{_dead_pid()}",
    )
    assert process_request(rid, s) is RequestStatus.DONE
    t = _row(s, rid).timings
    assert t["queue_wait_s"] == pytest.approx(30.0, abs=0.5)
    assert t["recovery_s"] == pytest.approx(100.0, abs=15.0) and t["attempts"] == 2


def test_a_reaper_pass_while_the_broker_is_down_resends_once_it_is_back(tmp_path, own_redis):
    s = make_settings(tmp_path, broker_url=own_redis.url, broker_timeout_s=1.0)
    db.upgrade(s.sqlalchemy_url)
    rid = JobService(s, dispatch=lambda _: None).compose(
        Requester(discord_id=1), validate_options(), None
    )
    _set(
        s,
        rid,
        status=RequestStatus.GENERATING,
        heartbeat_at=utcnow(),
        attempts=1,
        worker=f"{socket.gethostname()}:{_dead_pid()}",
        created_at=utcnow() - timedelta(seconds=60),
    )
    # The broker is down: the job is re-queued, its send refused, and nothing raises.
    report = reap(s)
    assert report.requeued == [rid] and report.send_failed
    assert _row(s, rid).status is RequestStatus.QUEUED and _row(s, rid).sent_at is None
    own_redis.start()
    report = reap(s)
    assert report.resent == [rid] and not report.send_failed
    assert own_redis.length("gpu") == 1 and _row(s, rid).sent_at is not None
