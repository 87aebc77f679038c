"""The reaper: jobs whose worker vanished go back to the queue; after too many tries, they fail.
Messages that may be lost (a broker restarted empty, a send that failed) are sent again.

A generating request whose claimant is gone (its process dead, its machine without a live
worker, or no heartbeat for `claim_lease_s`) is re-queued; a rendering one whose heartbeat is
older than `stale_after_s` is rendered again. Every change is a compare-and-set on the row, so
several reapers can run at once without double re-queues, and every task is idempotent, so a
message sent twice is harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from engine.errors import QueueUnreachable
from engine.service.requests import mark_sent
from engine.settings import Settings
from engine.store.db import dml, session_scope
from engine.store.records import Request, RequestStatus, RunStatus, TrainingRun, utcnow
from engine.worker.claims import claimant_gone
from engine.worker.lifecycle import live_queues_in

log = logging.getLogger(__name__)

GAVE_UP = (
    "Your request was interrupted {n} times by worker failures and was stopped; please try again."
)

# An unsent row this young may be in the middle of its own first send.
UNSENT_GRACE_S = 2.0


@dataclass
class ReapReport:
    requeued: list[int] = field(default_factory=list)
    rerendered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    runs_failed: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)  # queued rows whose message went out again
    resent_renders: list[int] = field(default_factory=list)
    send_failed: bool = False  # the broker refused a send: the rest waits for the next pass


def reap(settings: Settings, *, dispatch: bool = True) -> ReapReport:
    report = ReapReport()
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.stale_after_s)
    with session_scope(settings.sqlalchemy_url) as session:
        generating = [
            (rid, attempts)
            for rid, attempts, worker, beat in session.execute(
                select(Request.id, Request.attempts, Request.worker, Request.heartbeat_at).where(
                    Request.status == RequestStatus.GENERATING
                )
            )
            if claimant_gone(session, worker, beat, settings)
        ]
        rendering = list(
            session.execute(
                select(Request.id, Request.attempts).where(
                    Request.status == RequestStatus.RENDERING,
                    or_(Request.heartbeat_at.is_(None), Request.heartbeat_at < cutoff),
                )
            )
        )
    for status, rows in (
        (RequestStatus.GENERATING, generating),
        (RequestStatus.RENDERING, rendering),
    ):
        for rid, attempts in rows:
            _act(settings, report, rid, status, attempts, cutoff)
    if dispatch:
        _send(settings, report, report.requeued, render=False)
        _send(settings, report, report.rerendered, render=True)
        resend_lost(settings, report)
    report.runs_failed = reap_training_runs(settings)
    for rid in report.requeued + report.rerendered + report.failed:
        log.warning("reaper acted on request %s", rid)
    if report.resent or report.resent_renders:
        log.warning(
            "reaper re-sent possibly lost messages: generate %s, render %s",
            report.resent,
            report.resent_renders,
        )
    return report


def _act(
    settings: Settings,
    report: ReapReport,
    rid: int,
    status: RequestStatus,
    attempts: int,
    cutoff: datetime,
) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(Request, rid)
        if row is None or row.status is not status:
            return
        if status is RequestStatus.GENERATING:
            if not claimant_gone(session, row.worker, row.heartbeat_at, settings):
                return
            guard = (Request.id == rid, Request.status == status, Request.worker == row.worker)
        else:
            guard = (
                Request.id == rid,
                Request.status == status,
                or_(Request.heartbeat_at.is_(None), Request.heartbeat_at < cutoff),
            )
        if attempts >= settings.max_attempts:
            done = dml(
                session,
                update(Request)
                .where(*guard)
                .values(
                    status=RequestStatus.FAILED,
                    finished_at=utcnow(),
                    error_user=GAVE_UP.format(n=attempts),
                    error_detail=f"reaper: stale in {status.value} after {attempts} attempts",
                ),
            ).rowcount
            if done:
                report.failed.append(rid)
        elif status is RequestStatus.GENERATING:
            done = dml(
                session,
                update(Request)
                .where(*guard)
                .values(status=RequestStatus.QUEUED, heartbeat_at=None, worker=None, sent_at=None),
            ).rowcount
            if done:
                report.requeued.append(rid)
        else:
            # Rendering restarts from the stored MIDI; count it as an attempt.
            done = dml(
                session,
                update(Request)
                .where(*guard)
                .values(heartbeat_at=utcnow(), attempts=Request.attempts + 1),
            ).rowcount
            if done:
                report.rerendered.append(rid)


def _send(settings: Settings, report: ReapReport, ids: list[int], *, render: bool) -> list[int]:
    """Send one message per id, stopping at the first refusal (a broker that is down would
    refuse them all, each after its timeout). Returns the ids sent."""
    # deferred: engine.worker.app builds the Celery app from the settings on import
    from engine.worker.dispatch import dispatch_render, dispatch_request

    sent: list[int] = []
    for rid in ids:
        if report.send_failed:
            break
        try:
            (dispatch_render if render else dispatch_request)(rid, settings)
            sent.append(rid)
        except QueueUnreachable as exc:
            report.send_failed = True
            log.warning("reaper could not send request %s: %s", rid, exc.detail)
    if sent and not render:
        mark_sent(sent, settings)
    return sent


def _stage_busy(session: Session, status: RequestStatus, since: datetime) -> bool:
    return (
        session.scalar(
            select(Request.id)
            .where(Request.status == status, Request.heartbeat_at >= since)
            .limit(1)
        )
        is not None
    )


def resend_lost(settings: Settings, report: ReapReport | None = None) -> ReapReport:
    """The outbox's other half: a queued row never sent, or sent long ago while no generation
    runs (its message died with the broker), gets its message again; likewise a rendering row
    whose render nobody is doing. While a stage is busy its queue is just long: nothing is sent.
    A message sent twice is harmless (the claim is a compare-and-set)."""
    report = report or ReapReport()
    now = utcnow()
    old = now - timedelta(seconds=settings.resend_after_s)
    with session_scope(settings.sqlalchemy_url) as session:
        queues = live_queues_in(session, settings)
        lost_ok = "gpu" in queues and not _stage_busy(session, RequestStatus.GENERATING, old)
        queued = list(
            session.scalars(
                select(Request.id)
                .where(
                    Request.status == RequestStatus.QUEUED,
                    or_(
                        and_(
                            Request.sent_at.is_(None),
                            Request.created_at < now - timedelta(seconds=UNSENT_GRACE_S),
                        ),
                        and_(Request.sent_at < old, lost_ok),
                    ),
                )
                .order_by(Request.id)
            )
        )
        renders: list[int] = []
        if "cpu" in queues and not _stage_busy(session, RequestStatus.RENDERING, old):
            renders = list(
                session.scalars(
                    select(Request.id)
                    .where(Request.status == RequestStatus.RENDERING, Request.heartbeat_at < old)
                    .order_by(Request.id)
                )
            )
    report.resent.extend(_send(settings, report, queued, render=False))
    sent = _send(settings, report, renders, render=True)
    if sent:
        with session_scope(settings.sqlalchemy_url) as session:
            session.execute(
                update(Request)
                .where(Request.id.in_(sent), Request.status == RequestStatus.RENDERING)
                .values(heartbeat_at=utcnow())
            )
    report.resent_renders.extend(sent)
    return report


def reap_training_runs(settings: Settings) -> list[int]:
    """A training run whose worker died is failed (never half-active)."""
    cutoff = utcnow() - timedelta(seconds=max(settings.stale_after_s, 60.0))
    stale = (
        TrainingRun.status.in_((RunStatus.RUNNING, RunStatus.EVALUATING)),
        or_(TrainingRun.heartbeat_at.is_(None), TrainingRun.heartbeat_at < cutoff),
    )
    with session_scope(settings.sqlalchemy_url) as session:
        ids = list(session.scalars(select(TrainingRun.id).where(*stale)))
    failed: list[int] = []
    for run_id in ids:
        # compare-and-set: a run that finished (or beat) since the SELECT is left as it is
        with session_scope(settings.sqlalchemy_url) as session:
            done = dml(
                session,
                update(TrainingRun)
                .where(TrainingRun.id == run_id, *stale)
                .values(
                    status=RunStatus.FAILED,
                    finished_at=utcnow(),
                    error="the training worker stopped answering; the run was abandoned",
                ),
            ).rowcount
        if done:
            failed.append(run_id)
    return failed
