"""A request's row as the stages hold it: claiming it (a compare-and-set on its status), the
order queued requests are taken in, the heartbeat while working, and failing it."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from engine.settings import Settings
from engine.store.db import dml, session_scope
from engine.store.records import (
    OPEN_STATES,
    Artifact,
    ArtifactKind,
    Request,
    RequestStatus,
    Worker,
    alive_since,
    utcnow,
)
from engine.worker.lifecycle import process_alive

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RowNotVisible(Exception):
    """The request row is not committed yet (the message raced the commit): retry shortly."""


def beat_interval_s(settings: Settings) -> float:
    return min(2.0, settings.stale_after_s / 4)


def claimant_gone(
    session: Session, claimant: str | None, heartbeat_at: datetime | None, settings: Settings
) -> bool:
    """Whether a generating row's claimant can no longer finish it: its process on this
    machine is dead, its machine has no live worker presence, or it stopped beating."""
    now = utcnow()
    if claimant is None or heartbeat_at is None:
        return True
    lease_s = min(settings.claim_lease_s, settings.stale_after_s)
    if heartbeat_at < now - timedelta(seconds=lease_s):
        return True  # a working claimant beats every couple of seconds
    host, _, pid = claimant.rpartition(":")
    if claimant == worker_name():
        # This process runs one task at a time: a claim of its own that no longer beats is
        # left over from an interrupted attempt (a database outage).
        return heartbeat_at < now - timedelta(seconds=3 * beat_interval_s(settings))
    if host == socket.gethostname():
        return not (pid.isdigit() and process_alive(int(pid)))
    since = alive_since(settings.worker_heartbeat_s, now)
    live = session.scalars(select(Worker.hostname).where(Worker.last_seen >= since))
    return not any(name.rpartition("@")[2] == host for name in live)


def _claim_values() -> dict[str, object]:
    now = utcnow()
    return {
        "status": RequestStatus.GENERATING,
        # the first start stays recorded: queue_wait_s is the wait before it, not after a fault
        "generating_at": func.coalesce(Request.generating_at, now),
        "heartbeat_at": now,
        "attempts": Request.attempts + 1,
        "worker": worker_name(),
    }


def claim_for_generation(request_id: int, settings: Settings) -> bool:
    """queued → generating, for exactly one worker (compare-and-set). A row whose claimant is
    gone (see `claimant_gone`) is taken over the same way, so a redelivered message finishes
    the job instead of waiting for the reaper. False when a live worker has it."""
    with session_scope(settings.sqlalchemy_url) as session:
        result = dml(
            session,
            update(Request)
            .where(Request.id == request_id, Request.status == RequestStatus.QUEUED)
            .values(**_claim_values()),
        )
        if result.rowcount:
            return True
        row = session.get(Request, request_id)
        if row is None:
            raise RowNotVisible(request_id)
        if row.status is not RequestStatus.GENERATING:
            return False
        if not claimant_gone(session, row.worker, row.heartbeat_at, settings):
            return False
        if row.attempts >= settings.max_attempts:
            return False  # the reaper fails it with its message
        previous = row.worker
        result = dml(
            session,
            update(Request)
            .where(
                Request.id == request_id,
                Request.status == RequestStatus.GENERATING,
                Request.worker.is_(None) if previous is None else Request.worker == previous,
            )
            .values(**_claim_values()),
        )
        if result.rowcount:
            log.warning("request %s taken over from %s (gone)", request_id, previous)
        return bool(result.rowcount)


def fair_order(
    waiting: list[tuple[int, int | None]], taken: list[int | None] | None = None
) -> list[int]:
    """The order in which a batch takes waiting requests `(id, guild_id)`: round-robin over
    guilds, the guild with the fewest requests in the batch first (ties: the oldest request),
    oldest first within a guild. One guild's flood cannot fill every batch."""
    queues: dict[int | None, deque[int]] = {}
    for rid, guild in sorted(waiting):
        queues.setdefault(guild, deque()).append(rid)
    counts = Counter(taken or [])
    order = []
    while queues:
        guild = min(queues, key=lambda g: (counts[g], queues[g][0]))
        order.append(queues[guild].popleft())
        counts[guild] += 1
        if not queues[guild]:
            del queues[guild]
    return order


def drain_queued(settings: Settings, limit: int, exclude: set[int]) -> list[int]:
    """Claim up to `limit` more queued requests to decode in the same batch, fairly between
    guilds (`fair_order`): the oldest `limit` of each guild are the candidates."""
    if limit <= 0:
        return []
    with session_scope(settings.sqlalchemy_url) as session:
        rank = (
            func.row_number().over(partition_by=Request.guild_id, order_by=Request.id).label("rank")
        )
        waiting = (
            select(Request.id, Request.guild_id, rank)
            .where(Request.status == RequestStatus.QUEUED, Request.id.not_in(exclude))
            .subquery()
        )
        candidates = [
            (rid, guild)
            for rid, guild in session.execute(
                select(waiting.c.id, waiting.c.guild_id).where(waiting.c.rank <= limit)
            )
        ]
        taken = list(session.scalars(select(Request.guild_id).where(Request.id.in_(exclude))))
    claimed: list[int] = []
    for rid in fair_order(candidates, taken):
        if len(claimed) >= limit:
            break
        if claim_for_generation(rid, settings):
            claimed.append(rid)
    return claimed


@contextmanager
def heartbeat(request_ids: list[int], settings: Settings) -> Iterator[None]:
    """Keep `heartbeat_at` fresh while a batch runs, so the reaper leaves live work alone."""
    stop = threading.Event()
    every_s = beat_interval_s(settings)

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                with session_scope(settings.sqlalchemy_url) as session:
                    session.execute(
                        update(Request)
                        .where(Request.id.in_(list(request_ids)))
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:  # noqa: BLE001 - a missed beat is not fatal
                log.warning("heartbeat failed for %s", request_ids, exc_info=True)

    thread = threading.Thread(target=beat, name="motif-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def fail(request_id: int, settings: Settings, user_message: str, detail: str) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(
            update(Request)
            .where(
                Request.id == request_id,
                Request.status.in_(OPEN_STATES),
            )
            .values(
                status=RequestStatus.FAILED,
                finished_at=utcnow(),
                error_user=user_message,
                error_detail=detail[:4000],
            )
        )


def upsert_artifact(
    session, request_id: int, kind: ArtifactKind, key: str, data: bytes, content_type: str
) -> None:
    existing = session.scalar(
        select(Artifact).where(Artifact.request_id == request_id, Artifact.kind == kind)
    )
    if existing is None:
        session.add(
            Artifact(
                request_id=request_id, kind=kind, key=key, size=len(data), content_type=content_type
            )
        )
    else:
        existing.key, existing.size, existing.content_type = key, len(data), content_type
