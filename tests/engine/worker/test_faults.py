"""Faults with real processes, each bounded in time: kill -9 of a pool child and of a whole
worker mid-generation, a broker killed and restarted empty, a database that goes away, many
first-time `motif compose` at once, read-only and full artifact stores."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from bench.queue_flood import tasks_received
from engine.errors import ServiceUnavailable, StorageUnavailable
from engine.service.requests import JobService, Requester, validate_options
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import Artifact, Request, RequestStatus
from engine.worker.pipeline import process_request
from tests.conftest import (
    PG_URL,
    ROOT,
    example_seed_bytes,
    make_settings,
    settings_env,
    wait_finished,
)

pytestmark = pytest.mark.slow


def _compose(service: JobService, user: int = 1, seed: bool = True) -> int:
    return service.compose(
        Requester(discord_id=user, name="t"),
        validate_options(bars=2),
        example_seed_bytes() if seed else None,
        "ode-to-joy.mid" if seed else "",
    )


def _wait_status(service: JobService, rid: int, status: RequestStatus, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while service.progress(rid).status is not status:
        assert time.monotonic() < deadline, service.progress(rid)
        time.sleep(0.05)


def _one_set_of_artifacts(settings, rid: int) -> None:
    with session_scope(settings.sqlalchemy_url) as s:
        kinds = sorted(
            a.kind.value for a in s.scalars(select(Artifact).where(Artifact.request_id == rid))
        )
    assert kinds == ["audio", "image", "midi", "musicxml", "pdf", "score"]
    # one set of files: an interrupted attempt keeps none (each attempt writes under its own
    # key, and a refused commit removes what it wrote)
    base = settings.data_dir / "artifacts" / "requests" / str(rid)
    # beside the attempts' folders only the seed kept at submission (engine.service.request_seeds)
    assert {p.name for p in base.iterdir() if p.is_file()} <= {"seed.json"}
    files = [p.relative_to(base) for p in base.rglob("*") if p.is_file() and p.parent != base]
    assert sorted(p.name for p in files) == sorted(
        f"motif-{rid}{end}" for end in (".mid", ".ogg", ".png", "-score.png", ".musicxml", ".pdf")
    )


def _claimant_pid(settings, rid: int) -> int:
    with session_scope(settings.sqlalchemy_url) as s:
        return int(s.get(Request, rid).worker.rpartition(":")[2])


def test_kill_9_of_the_pool_child_mid_generation_is_done_within_30_s(
    tmp_path, tiny_model_path, worker_factory
):
    # batch_wait_ms holds the claimed job in `generating` long enough to kill its process there.
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, batch_wait_ms=2000)
    db.upgrade(settings.sqlalchemy_url)
    worker = worker_factory(settings).start()
    service = JobService(settings)
    rid = _compose(service)
    _wait_status(service, rid, RequestStatus.GENERATING, 60)
    child = _claimant_pid(settings, rid)
    assert child != worker.proc.pid  # the pool child, not the worker's main process
    os.kill(child, signal.SIGKILL)
    killed = time.monotonic()
    prog = wait_finished(service, rid, timeout=30)
    recovery = time.monotonic() - killed
    assert prog.status is RequestStatus.DONE, prog.error_user
    assert worker.proc.poll() is None  # the same worker finished it, with a new child
    _one_set_of_artifacts(settings, rid)
    assert prog.timings["attempts"] == 2
    print(f"\nrecovery after kill -9 of the pool child: {recovery:.1f} s")


def test_kill_9_of_a_whole_worker_mid_generation_is_done_within_30_s(
    tmp_path, tiny_model_path, worker_factory
):
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, batch_wait_ms=2000)
    db.upgrade(settings.sqlalchemy_url)
    workers = [worker_factory(settings).start(), worker_factory(settings).start()]
    service = JobService(settings)
    rid = _compose(service)
    _wait_status(service, rid, RequestStatus.GENERATING, 60)
    child = _claimant_pid(settings, rid)
    with open(f"/proc/{child}/stat") as fh:
        parent = int(fh.read().rsplit(")", 1)[1].split()[1])
    (victim,) = [w for w in workers if w.proc.pid == parent]
    victim.kill9()  # the worker and its pool child; the filesystem broker loses the message
    killed = time.monotonic()
    prog = wait_finished(service, rid, timeout=30)
    recovery = time.monotonic() - killed
    assert prog.status is RequestStatus.DONE, prog.error_user
    _one_set_of_artifacts(settings, rid)
    print(f"\nrecovery after kill -9 of a whole worker: {recovery:.1f} s")


def test_a_broker_killed_with_requests_queued_and_restarted_empty_loses_nothing(
    tmp_path, tiny_model_path, worker_factory, own_redis
):
    own_redis.start()
    settings = make_settings(
        tmp_path,
        default_model_path=tiny_model_path,
        broker_url=own_redis.url,
        broker_timeout_s=1.0,
        resend_after_s=3.0,
        user_max_concurrent=10,
    )
    db.upgrade(settings.sqlalchemy_url)
    service = JobService(settings)
    ids = [_compose(service, user=i, seed=i % 2 == 0) for i in range(4)]
    assert own_redis.length("gpu") == 4  # no worker yet: the four messages wait in Redis
    own_redis.kill9()
    own_redis.start()  # the same port, empty: the messages died with it
    assert own_redis.length("gpu") == 0
    back = time.monotonic()
    worker_factory(settings).start()
    for rid in ids:
        prog = wait_finished(service, rid, timeout=max(5.0, 30 - (time.monotonic() - back)))
        assert prog.status is RequestStatus.DONE, prog.error_user
    print(f"\nall 4 done {time.monotonic() - back:.1f} s after the broker came back (empty)")


def _set_reachable(name: str, reachable: bool) -> None:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(reachable).lower()}'))
        if not reachable:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
    admin.dispose()


def _three_generating(
    tmp_path, tiny_model_path, worker_factory, url: str
) -> tuple[JobService, list[int]]:
    """A worker on the test's own Postgres database, three requests sent, the first generating
    (one batch claimed)."""
    settings = make_settings(
        tmp_path,
        default_model_path=tiny_model_path,
        database_url=url,
        batch_wait_ms=1500,
        user_max_concurrent=10,
    )
    db.upgrade(url)
    worker_factory(settings).start()
    service = JobService(settings)
    ids = [_compose(service, user=i) for i in range(3)]
    _wait_status(service, ids[0], RequestStatus.GENERATING, 60)
    return service, ids


@pytest.mark.services
def test_postgres_unreachable_for_a_while_loses_nothing_and_says_what_is_true(
    tmp_path, tiny_model_path, worker_factory, own_pg_database
):
    url, name = own_pg_database
    service, ids = _three_generating(tmp_path, tiny_model_path, worker_factory, url)
    _set_reachable(name, False)  # mid-run: one batch claimed, its messages acknowledged
    try:
        time.sleep(1.0)
        with pytest.raises(ServiceUnavailable) as reading:
            service.progress(ids[0])
        assert "nothing was saved" not in reading.value.user_message  # the rows exist
        with pytest.raises(ServiceUnavailable, match="nothing was saved"):
            _compose(service, user=99)  # and this one really was not saved
        time.sleep(6.0)  # the worker's tasks meet the outage and retry
    finally:
        _set_reachable(name, True)
    back = time.monotonic()
    for rid in ids:
        prog = wait_finished(service, rid, timeout=60)
        assert prog.status is RequestStatus.DONE, prog.error_user
    with session_scope(url) as s:
        assert s.scalar(select(func.count(Request.id))) == 3
    print(f"\nall 3 done {time.monotonic() - back:.1f} s after Postgres came back")


@pytest.mark.services
def test_postgres_lost_while_a_batch_decodes_is_taken_up_again_as_a_batch(
    tmp_path, tiny_model_path, worker_factory, own_pg_database
):
    # Issue #26: the outage threw the batch away and its rows were taken over one at a time,
    # each after its own lease or back-off. Now the retried task queues its batch again first.
    url, name = own_pg_database
    service, ids = _three_generating(tmp_path, tiny_model_path, worker_factory, url)
    # The first row locked: the batch is claimed and decoded, and its first write waits here
    # (its heartbeat, or its result), so the outage below hits a batch of three in flight.
    holder = create_engine(url)
    lock = holder.connect()
    try:
        lock.execute(text("SELECT id FROM requests WHERE id = :id FOR UPDATE"), {"id": ids[0]})
        for rid in ids[1:]:  # drained into the batch after its wait
            _wait_status(service, rid, RequestStatus.GENERATING, 30)
        _set_reachable(name, False)  # ends every session, the lock's too
        time.sleep(4.0)  # longer than a beat (2 s): the batch's claims are stale on return
    finally:
        _set_reachable(name, True)
        with contextlib.suppress(Exception):
            lock.close()
        holder.dispose()
    back = time.monotonic()
    for rid in ids:
        prog = wait_finished(service, rid, timeout=max(5.0, 30 - (time.monotonic() - back)))
        assert prog.status is RequestStatus.DONE, prog.error_user
        # decoded again together, as the second attempt of each
        assert prog.timings["batch_size"] == 3 and prog.timings["attempts"] == 2, prog.timings
    print(f"\nthe batch of 3 done {time.monotonic() - back:.1f} s after Postgres came back")


def _claim_of(settings, rid: int) -> tuple[RequestStatus, int]:
    with session_scope(settings.sqlalchemy_url) as s:
        req = s.get(Request, rid)
        return req.status, req.attempts


def test_a_hung_claimant_taken_over_writes_nothing_when_it_resumes(
    tmp_path, tiny_model_path, worker_factory
):
    # Issue #26: a SIGSTOPped pool child, taken over by the other worker, overwrote the
    # winner's MIDI after SIGCONT and rendered it again. Here it resumes while the winner is
    # still generating (the same status: only the claim tells them apart). A short lease
    # (6 s, not 30 s; a live claimant beats every 2 s) and a batch wait (3 s) that holds each
    # claimant in `generating`.
    settings = make_settings(
        tmp_path, default_model_path=tiny_model_path, batch_wait_ms=3000, claim_lease_s=6.0
    )
    db.upgrade(settings.sqlalchemy_url)
    workers = [worker_factory(settings).start(wait=False) for _ in range(2)]
    for w in workers:
        w.wait_ready()
    service = JobService(settings)
    rid = _compose(service)
    _wait_status(service, rid, RequestStatus.GENERATING, 60)
    child = _claimant_pid(settings, rid)  # in its batch wait
    with open(f"/proc/{child}/stat") as fh:
        parent = int(fh.read().rsplit(")", 1)[1].split()[1])
    (hung,) = [w for w in workers if w.proc.pid == parent]
    os.kill(child, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60  # the other worker's reaper takes it over
        while _claim_of(settings, rid) != (RequestStatus.GENERATING, 2):
            assert time.monotonic() < deadline, _claim_of(settings, rid)
            time.sleep(0.05)
    finally:
        os.kill(child, signal.SIGCONT)  # the winner is in its batch wait
    prog = wait_finished(service, rid, timeout=60)
    assert prog.status is RequestStatus.DONE, prog.error_user
    assert prog.timings["attempts"] == 2
    # The resumed claimant beats (refused), decodes, and keeps nothing.
    deadline = time.monotonic() + 60
    while not re.search(r"Task motif\.generate\[[^\]]+\] succeeded", hung.tail()):
        assert time.monotonic() < deadline, hung.tail()
        time.sleep(0.2)
    time.sleep(1.0)  # a render it sent would be consumed by now (polling every 0.05 s)
    _one_set_of_artifacts(settings, rid)
    base = settings.data_dir / "artifacts" / "requests" / str(rid)
    assert {p.parent.name for p in base.rglob("*") if p.is_file() and p.parent != base} == {
        "attempt-2"
    }
    assert all(a.key.startswith(f"requests/{rid}/attempt-2/") for a in prog.artifacts)
    assert tasks_received(w.log for w in workers)["motif.render"] == 1  # no second render


def test_sqlite_locked_for_a_while_loses_nothing(tmp_path, tiny_model_path, worker_factory):
    import sqlite3

    settings = make_settings(tmp_path, default_model_path=tiny_model_path, user_max_concurrent=10)
    db.upgrade(settings.sqlalchemy_url)
    worker_factory(settings).start()
    service = JobService(settings)
    ids = [_compose(service, user=i) for i in range(3)]
    lock = sqlite3.connect(settings.data_dir / "motif.db", timeout=30)
    lock.execute("BEGIN EXCLUSIVE")  # another program holds the file: every writer waits
    time.sleep(5.0)
    lock.rollback()
    lock.close()
    for rid in ids:
        prog = wait_finished(service, rid, timeout=60)
        assert prog.status is RequestStatus.DONE, prog.error_user


def test_four_first_time_composes_at_once_share_one_worker(tmp_path, tiny_model_path):
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, user_rate_per_min=60)
    env = settings_env(settings)
    seed = ROOT / "engine" / "data" / "examples" / "ode-to-joy.mid"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "compose",
                str(seed),
                "--bars",
                "2",
                "--out",
                str(tmp_path / f"out{i}"),
                "--timeout",
                "200",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out + err
        assert "Traceback" not in err, err
    started = sum(out.count("starting a local worker") for out, _ in outputs)
    assert started == 1, outputs
    for i in range(4):
        assert sorted(p.suffix for p in (tmp_path / f"out{i}").iterdir()) == [
            ".mid",
            ".musicxml",
            ".ogg",
            ".pdf",
            ".png",
            ".png",
        ]
    from engine.worker.local import live_queues

    deadline = time.monotonic() + 15
    while live_queues(settings) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_queues(settings) == set()  # the last compose out stopped it


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for where in made:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("options, reason", [("size=64k,ro", "read-only"), ("size=64k", "is full")])
def test_read_only_or_full_artifact_store_gives_a_clear_reason(
    tmp_path, tiny_model_path, mounts, options, reason
):
    store = tmp_path / "store"
    _mount_tmpfs(store, options)
    mounts.append(store)
    if "ro" not in options.split(","):
        (store / "filler").write_bytes(b"\0" * 64 * 1024)  # fill it
        with pytest.raises(OSError):
            (store / "more").write_bytes(b"\0" * 8192)
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, artifact_url=str(store))
    db.upgrade(settings.sqlalchemy_url)
    service = JobService(settings, dispatch=lambda _: None)
    # A new seed is stored with the request: refused with the reason, nothing half-written.
    with pytest.raises(StorageUnavailable, match=reason):
        _compose(service)
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.scalar(select(func.count(Request.id))) == 0
    # No seed: the request is taken, then its result cannot be stored: it fails, saying why.
    rid = _compose(service, seed=False)
    assert process_request(rid, settings) is RequestStatus.FAILED
    assert reason in service.progress(rid).error_user
    # And the CLI says it in one line, rc 2.
    seed = ROOT / "engine" / "data" / "examples" / "ode-to-joy.mid"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "compose", str(seed), "--no-worker"],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and reason in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
