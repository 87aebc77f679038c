"""The reaper: jobs whose worker vanished go back to the queue; after too many tries, they fail.

A request in a running state whose heartbeat is older than `stale_after_s` has lost its worker
(a `kill -9`, a lost machine, a broker that dropped the message). Every change is a
compare-and-set on the row, so several reapers can run at once without double re-queues.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select, update

from engine.db import session_scope
from engine.records import Request, RequestStatus, RunStatus, TrainingRun, utcnow
from engine.settings import Settings

log = logging.getLogger(__name__)

GAVE_UP = (
    "Your request was interrupted {n} times by worker failures and was stopped; please try again."
)


@dataclass
class ReapReport:
    requeued: list[int] = field(default_factory=list)
    rerendered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    runs_failed: list[int] = field(default_factory=list)


def reap(settings: Settings, *, dispatch: bool = True) -> ReapReport:
    from engine.queueing import dispatch_render, dispatch_request

    report = ReapReport()
    cutoff = utcnow() - timedelta(seconds=settings.stale_after_s)
    stale_clause = or_(Request.heartbeat_at.is_(None), Request.heartbeat_at < cutoff)
    with session_scope(settings.sqlalchemy_url) as session:
        stale = list(
            session.execute(
                select(Request.id, Request.status, Request.attempts).where(
                    Request.status.in_((RequestStatus.GENERATING, RequestStatus.RENDERING)),
                    stale_clause,
                )
            )
        )
    for rid, status, attempts in stale:
        with session_scope(settings.sqlalchemy_url) as session:
            guard = (Request.id == rid, Request.status == status, stale_clause)
            if attempts >= settings.max_attempts:
                done = session.execute(
                    update(Request)
                    .where(*guard)
                    .values(
                        status=RequestStatus.FAILED,
                        finished_at=utcnow(),
                        error_user=GAVE_UP.format(n=attempts),
                        error_detail=f"reaper: stale in {status.value} after {attempts} attempts",
                    )
                ).rowcount
                if done:
                    report.failed.append(rid)
                continue
            if status is RequestStatus.GENERATING:
                done = session.execute(
                    update(Request)
                    .where(*guard)
                    .values(status=RequestStatus.QUEUED, heartbeat_at=None, worker=None)
                ).rowcount
                if done:
                    report.requeued.append(rid)
            else:
                # Rendering restarts from the stored MIDI; count it as an attempt.
                done = session.execute(
                    update(Request)
                    .where(*guard)
                    .values(heartbeat_at=utcnow(), attempts=Request.attempts + 1)
                ).rowcount
                if done:
                    report.rerendered.append(rid)
    if dispatch:
        for rid in report.requeued:
            dispatch_request(rid, settings)
        for rid in report.rerendered:
            dispatch_render(rid, settings)
    report.runs_failed = reap_training_runs(settings)
    for rid in report.requeued + report.rerendered + report.failed:
        log.warning("reaper acted on request %s", rid)
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
            done = session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == run_id, *stale)
                .values(
                    status=RunStatus.FAILED,
                    finished_at=utcnow(),
                    error="the training worker stopped answering; the run was abandoned",
                )
            ).rowcount
        if done:
            failed.append(run_id)
    return failed
