"""The reaper: jobs whose worker vanished go back to the queue; after too many tries, they fail.
Messages that may be lost (a broker restarted empty, a send that failed) are sent again.

A claimed stage (generating or rendering) whose claimant is gone (its process dead, its machine
without a live worker, or no heartbeat for `claim_lease_s`) is re-queued or rendered again as
a new attempt. Every change is a compare-and-set on the row's claimant and attempt, and every
re-send is claimed per row first (a compare-and-set on when it was last sent), so of several
reapers at once exactly one acts on each row and sends its message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, literal, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from engine.errors import QueueUnreachable
from engine.queue import dispatch
from engine.queue.app import CPU_QUEUE, GPU_QUEUE
from engine.settings import Settings
from engine.store.db import dml, session_scope
from engine.store.records import Request, RequestStatus, RunStatus, TrainingRun, utcnow
from engine.worker.claims import claimant_gone
from engine.worker.presence import live_queues_in

log = logging.getLogger(__name__)

GAVE_UP = (
    "Your request was interrupted {n} times by worker failures and was stopped; please try again."
)

# A send claimed by this reaper: the stamp it wrote, and the value it replaced.
Stamp = tuple[datetime, datetime | None]

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
    requeue_stamps: dict[int, Stamp] = field(default_factory=dict)  # re-queued: its sent_at


def reap(settings: Settings, *, dispatch: bool = True) -> ReapReport:
    report = ReapReport()
    with session_scope(settings.sqlalchemy_url) as session:
        # a claimed stage whose claimant is gone (a render nobody claimed yet is waiting in
        # its queue: resend_lost decides whether its message may be lost)
        stale = [
            (rid, status)
            for rid, status, worker, beat in session.execute(
                select(Request.id, Request.status, Request.worker, Request.heartbeat_at).where(
                    Request.status.in_((RequestStatus.GENERATING, RequestStatus.RENDERING)),
                    Request.worker.is_not(None),
                )
            )
            if claimant_gone(session, worker, beat, settings, rid)
        ]
    for rid, status in stale:
        _act(settings, report, rid, status)
    if dispatch:
        _send_claimed(settings, report, report.requeue_stamps, render=False)
        _send(settings, report, report.rerendered, render=True)
        resend_lost(settings, report)
    else:
        _give_back(settings, report.requeue_stamps, render=False)
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


def _act(settings: Settings, report: ReapReport, rid: int, status: RequestStatus) -> None:
    """Re-queue (generating), release for a new render (rendering) or fail one stale row: a
    compare-and-set on its claimant and attempt, so one reaper acts and the old claimant is
    fenced out (its attempt no longer matches)."""
    with session_scope(settings.sqlalchemy_url) as session:
        row = session.get(Request, rid)
        if row is None or row.status is not status or row.worker is None:
            return
        if not claimant_gone(session, row.worker, row.heartbeat_at, settings, rid):
            return
        where = (
            Request.id == rid,
            Request.status == status,
            Request.worker == row.worker,
            Request.attempts == row.attempts,
        )
        now = utcnow()
        if row.attempts >= settings.max_attempts:
            values: dict[str, object] = dict(
                status=RequestStatus.FAILED,
                finished_at=now,
                worker=None,
                error_user=GAVE_UP.format(n=row.attempts),
                error_detail=f"reaper: stale in {status.value} after {row.attempts} attempts",
            )
            bucket = report.failed
        elif status is RequestStatus.GENERATING:
            # sent_at: this reaper sends its message (no other one re-sends it meanwhile)
            values = dict(status=RequestStatus.QUEUED, heartbeat_at=None, worker=None, sent_at=now)
            bucket = report.requeued
        else:
            # rendering restarts from the stored MIDI as a new attempt, claimed anew
            values = dict(heartbeat_at=now, worker=None, attempts=Request.attempts + 1)
            bucket = report.rerendered
        values["worker_queues"] = None
        if dml(session, update(Request).where(*where).values(**values)).rowcount:
            bucket.append(rid)
            if bucket is report.requeued:
                report.requeue_stamps[rid] = (now, None)


def _send(settings: Settings, report: ReapReport, ids: list[int], *, render: bool) -> list[int]:
    """Send one message per id, stopping at the first refusal (a broker that is down would
    refuse them all, each after its timeout). Returns the ids sent."""
    sent: list[int] = []
    for rid in ids:
        if report.send_failed:
            break
        try:
            (dispatch.dispatch_render if render else dispatch.dispatch_request)(rid, settings)
            sent.append(rid)
        except QueueUnreachable as exc:
            report.send_failed = True
            log.warning("reaper could not send request %s: %s", rid, exc.detail)
    return sent


def _send_claimed(
    settings: Settings, report: ReapReport, stamps: dict[int, Stamp], *, render: bool
) -> list[int]:
    """Send the messages of rows this reaper claimed for sending (their `sent_at`, or for a
    render its `heartbeat_at`, set to `stamps[id]` by a compare-and-set). A row whose send
    failed is given back (its stamp undone, if still this reaper's) for the next pass."""
    sent = _send(settings, report, sorted(stamps), render=render)
    _give_back(settings, {rid: t for rid, t in stamps.items() if rid not in sent}, render=render)
    return sent


def _give_back(settings: Settings, stamps: dict[int, Stamp], *, render: bool) -> None:
    """Undo the send claims of rows whose message did not go out (their column back to its
    value before, if still this reaper's stamp): the next pass sends them."""
    column = Request.heartbeat_at if render else Request.sent_at
    if stamps:
        with session_scope(settings.sqlalchemy_url) as session:
            for rid, (stamp, before) in stamps.items():
                session.execute(
                    update(Request)
                    .where(Request.id == rid, column == stamp)
                    .values({column.key: before})
                )


def stage_busy(session: Session, queue: str, since: datetime) -> bool:
    """Whether a worker that takes `queue` worked at any time since `since`: a claimed stage
    that beat since then, generating or rendering, whose stage is `queue` or whose worker takes
    it too (a `gpu,cpu` worker that renders does not consume its `gpu` messages meanwhile); or
    a stage of that queue finished since then (a batch generated, a render done). Asked over
    the window, not at one instant: a worker between two short tasks is not idle."""
    takes = (literal(",") + Request.worker_queues + literal(",")).contains(f",{queue},")
    claimed = and_(
        Request.status.in_((RequestStatus.GENERATING, RequestStatus.RENDERING)),
        Request.worker.is_not(None),
        Request.heartbeat_at >= since,
    )
    if queue == GPU_QUEUE:
        live = and_(claimed, or_(Request.status == RequestStatus.GENERATING, takes))
        finished = or_(
            Request.rendering_at >= since,  # a generation handed over to rendering
            and_(Request.status == RequestStatus.DONE, Request.finished_at >= since, takes),
        )
    else:
        live = and_(claimed, or_(Request.status == RequestStatus.RENDERING, takes))
        finished = or_(
            and_(Request.status == RequestStatus.DONE, Request.finished_at >= since),
            and_(Request.rendering_at >= since, takes),
        )
    return session.scalar(select(Request.id).where(or_(live, finished)).limit(1)) is not None


def resend_lost(settings: Settings, report: ReapReport | None = None) -> ReapReport:
    """The outbox's other half: a queued row never sent, or sent long ago while no worker
    taking `gpu` works (its message died with the broker), gets its message again; likewise a
    rendering row nobody claimed while no worker taking `cpu` works. While a stage is busy its
    queue is just long: nothing is sent.

    Each re-send is claimed first, per row, by a compare-and-set on the time it was last sent
    (`sent_at`; a render's `heartbeat_at`): of several reapers looking at the same row at the
    same moment, one sends it."""
    report = report or ReapReport()
    now = utcnow()
    old = now - timedelta(seconds=settings.resend_after_s)
    unsent = and_(
        Request.sent_at.is_(None), Request.created_at < now - timedelta(seconds=UNSENT_GRACE_S)
    )
    with session_scope(settings.sqlalchemy_url) as session:
        # A stage is idle when a worker that takes its queue has been up for the whole
        # window and none worked: a worker that just started has not had the time to consume
        # the waiting messages yet (a flood queued before the workers came up is not lost).
        queues = live_queues_in(session, settings, started_before=old)
        lost_ok = GPU_QUEUE in queues and not stage_busy(session, GPU_QUEUE, old)
        lost = or_(unsent, and_(Request.sent_at < old, lost_ok))
        queued = list(
            session.scalars(
                select(Request.id)
                .where(Request.status == RequestStatus.QUEUED, lost)
                .order_by(Request.id)
            )
        )
        waiting = and_(
            Request.status == RequestStatus.RENDERING,
            Request.worker.is_(None),
            Request.heartbeat_at < old,
        )
        renders: list[int] = []
        if CPU_QUEUE in queues and not stage_busy(session, CPU_QUEUE, old):
            renders = list(session.scalars(select(Request.id).where(waiting).order_by(Request.id)))
    send_stamps = _claim_sends(settings, queued, (Request.status == RequestStatus.QUEUED, lost))
    report.resent.extend(_send_claimed(settings, report, send_stamps, render=False))
    render_stamps = _claim_sends(settings, renders, (waiting,), column=Request.heartbeat_at)
    report.resent_renders.extend(_send_claimed(settings, report, render_stamps, render=True))
    return report


def _claim_sends(
    settings: Settings,
    ids: list[int],
    still: tuple[ColumnElement[bool], ...],
    column: InstrumentedAttribute[datetime | None] = Request.sent_at,
) -> dict[int, Stamp]:
    """Claim the re-send of each row that still matches `still`, by setting `column` to a
    stamp of this pass (a compare-and-set: a row another reaper claimed no longer matches)."""
    stamps: dict[int, Stamp] = {}
    for rid in ids:
        stamp = utcnow()
        with session_scope(settings.sqlalchemy_url, immediate=True) as session:
            before = session.scalar(select(column).where(Request.id == rid))
            if dml(
                session,
                update(Request).where(Request.id == rid, *still).values({column.key: stamp}),
            ).rowcount:
                stamps[rid] = (stamp, before)
    return stamps


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
