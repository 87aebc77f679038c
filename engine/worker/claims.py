"""A request's row as the stages hold it: claiming it (a compare-and-set on its status), taking
it over from a claimant that is gone, the order queued requests are taken in, and queuing again
a batch an outage interrupted. What a claimant may write once it holds it: worker.fencing."""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter, deque
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
from engine.worker.fencing import Claim, active_here, failed_values
from engine.worker.presence import process_alive

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RowNotVisible(Exception):
    """The request row is not committed yet (the message raced the commit): retry shortly."""


def beat_interval_s(settings: Settings) -> float:
    return min(2.0, settings.stale_after_s / 4)


def claimant_gone(
    session: Session,
    claimant: str | None,
    heartbeat_at: datetime | None,
    settings: Settings,
    request_id: int | None = None,
) -> bool:
    """Whether a claimed row's claimant can no longer finish it: its process on this machine
    is dead, its machine has no live worker presence, or it stopped beating. A claim of this
    very process on `request_id` that no stage here beats for (an attempt a database outage
    interrupted) is gone after one missed beat."""
    now = utcnow()
    if claimant is None or heartbeat_at is None:
        return True
    lease_s = min(settings.claim_lease_s, settings.stale_after_s)
    if heartbeat_at < now - timedelta(seconds=lease_s):
        return True  # a working claimant beats every couple of seconds
    host, _, pid = claimant.rpartition(":")
    if claimant == worker_name():
        # This process runs one task at a time: a claim of its own that no longer beats is
        # left over from an interrupted attempt (a database outage). No stage here beats for
        # it: gone once a beat is missed; otherwise after three.
        if request_id is not None and request_id not in active_here():
            return heartbeat_at < now - timedelta(seconds=beat_interval_s(settings))
        return heartbeat_at < now - timedelta(seconds=3 * beat_interval_s(settings))
    if host == socket.gethostname():
        return not (pid.isdigit() and process_alive(int(pid)))
    since = alive_since(settings.worker_heartbeat_s, now)
    live = session.scalars(select(Worker.hostname).where(Worker.last_seen >= since))
    return not any(name.rpartition("@")[2] == host for name in live)


_worker_queues: str | None = None


def set_worker_queues(queues: set[str] | None) -> None:
    """The queues this process's worker takes (engine.worker.signals, in each pool child):
    recorded with every claim, so the reaper knows which queues a busy worker serves."""
    global _worker_queues
    _worker_queues = ",".join(sorted(queues)) if queues else None


def _claim_values(status: RequestStatus, *, new_attempt: bool) -> dict[str, object]:
    now = utcnow()
    values: dict[str, object] = {
        "status": status,
        "heartbeat_at": now,
        "worker": worker_name(),
        "worker_queues": _worker_queues,
    }
    if new_attempt:
        values["attempts"] = Request.attempts + 1
    if status is RequestStatus.GENERATING:
        # the first start stays recorded: queue_wait_s is the wait before it, not after a fault
        values["generating_at"] = func.coalesce(Request.generating_at, now)
    return values


def _claimed(session: Session, request_id: int, status: RequestStatus) -> Claim:
    attempt = session.scalar(select(Request.attempts).where(Request.id == request_id))
    assert attempt is not None
    return Claim(request_id, worker_name(), attempt, status)


def _take_over(
    session: Session, row: Request, status: RequestStatus, settings: Settings
) -> Claim | None:
    """Take a row whose claimant is gone (compare-and-set on its claimant and attempt): a new
    attempt, so whatever the old claimant still tries to write is refused (worker.fencing)."""
    if not claimant_gone(session, row.worker, row.heartbeat_at, settings, row.id):
        return None
    if row.attempts >= settings.max_attempts:
        return None  # the reaper fails it with its message
    previous = row.worker
    result = dml(
        session,
        update(Request)
        .where(
            Request.id == row.id,
            Request.status == status,
            Request.worker.is_(None) if previous is None else Request.worker == previous,
            Request.attempts == row.attempts,
        )
        .values(**_claim_values(status, new_attempt=True)),
    )
    if not result.rowcount:
        return None
    log.warning("request %s taken over from %s (gone)", row.id, previous)
    return _claimed(session, row.id, status)


def claim_for_generation(request_id: int, settings: Settings) -> Claim | None:
    """queued → generating, for exactly one worker (compare-and-set). A row whose claimant is
    gone (see `claimant_gone`) is taken over the same way, so a redelivered message finishes
    the job instead of waiting for the reaper. None when a live worker has it."""
    status = RequestStatus.GENERATING
    with session_scope(settings.sqlalchemy_url) as session:
        result = dml(
            session,
            update(Request)
            .where(Request.id == request_id, Request.status == RequestStatus.QUEUED)
            .values(**_claim_values(status, new_attempt=True)),
        )
        if result.rowcount:
            return _claimed(session, request_id, status)
        row = session.get(Request, request_id)
        if row is None:
            raise RowNotVisible(request_id)
        if row.status is not status:
            return None
        return _take_over(session, row, status, settings)


def claim_for_render(request_id: int, settings: Settings) -> Claim | None:
    """A rendering row nobody holds (the generate stage hands it over with no claimant) is
    claimed within its attempt; one whose claimant is gone is taken over as a new attempt.
    None when it is not rendering, or a live claimant renders it."""
    status = RequestStatus.RENDERING
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(Request, request_id)
        if row is None:
            raise RowNotVisible(request_id)
        if row.status is not status:
            return None
        if row.worker is None:
            result = dml(
                session,
                update(Request)
                .where(
                    Request.id == request_id,
                    Request.status == status,
                    Request.worker.is_(None),
                    Request.attempts == row.attempts,
                )
                .values(**_claim_values(status, new_attempt=False)),
            )
            return _claimed(session, request_id, status) if result.rowcount else None
        return _take_over(session, row, status, settings)


def release_stale_own(settings: Settings) -> list[int]:
    """Queue again the generating rows this process claimed and no longer beats for (one beat
    missed): a batch whose attempt a database outage interrupted (no stage here holds them).
    Its rows are then claimed and drained as a batch again, instead of one by one after their
    lease. Returns their ids."""
    mine = (
        Request.status == RequestStatus.GENERATING,
        Request.worker == worker_name(),
        Request.id.not_in(active_here()),
        Request.heartbeat_at < utcnow() - timedelta(seconds=beat_interval_s(settings)),
    )
    with session_scope(settings.sqlalchemy_url) as session:
        ids = list(session.scalars(select(Request.id).where(*mine)))
        if ids:
            # sent_at now: their messages are on their way (or consumed); the reaper re-sends
            # the ones no batch takes, after MOTIF_RESEND_AFTER_S
            session.execute(
                update(Request)
                .where(Request.id.in_(ids), *mine)
                .values(
                    status=RequestStatus.QUEUED,
                    worker=None,
                    worker_queues=None,
                    heartbeat_at=None,
                    sent_at=utcnow(),
                )
            )
    if ids:
        log.warning("requests %s claimed here before an outage are queued again", ids)
    return ids


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


def drain_queued(settings: Settings, limit: int, exclude: set[int]) -> list[Claim]:
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
    claimed: list[Claim] = []
    for rid in fair_order(candidates, taken):
        if len(claimed) >= limit:
            break
        claim = claim_for_generation(rid, settings)
        if claim is not None:
            claimed.append(claim)
    return claimed


def upsert_artifact(
    session: Session, request_id: int, kind: ArtifactKind, key: str, data: bytes, content_type: str
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


def fail_abandoned(request_id: int, settings: Settings, user_message: str, detail: str) -> bool:
    """Fail a request whose task the pool killed at its hard time limit. Celery calls this in
    the pool's parent, not in the claimant (its child, killed right after), so it holds no
    claim: it fails the row only while no live claimant elsewhere holds it (unclaimed, held by
    one of this process's children, or by a claimant that is gone), and only the claim it
    read (compare-and-set), so a takeover since is never failed."""
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(Request, request_id)
        if row is None or row.status not in OPEN_STATES:
            return False
        claimant, pid = row.worker, (row.worker or "").rpartition(":")[2]
        ours = claimant is not None and pid.isdigit() and _child_of_here(int(pid))
        if not ours and not claimant_gone(session, claimant, row.heartbeat_at, settings):
            return False
        same_claimant = Request.worker.is_(None) if claimant is None else Request.worker == claimant
        return bool(
            dml(
                session,
                update(Request)
                .where(
                    Request.id == request_id,
                    Request.status == row.status,
                    same_claimant,
                    Request.attempts == row.attempts,
                )
                .values(**failed_values(user_message, detail)),
            ).rowcount
        )


def _child_of_here(pid: int) -> bool:
    """Whether `pid` is a child process of this one (a pool worker of this Celery worker)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):
        return False
