"""Fencing: what a stage's claimant may write, and its heartbeat.

A claim is the row's `(worker, attempts)` when the stage took it. Every takeover (a redelivered
message whose claimant is gone, the reaper) changes one of the two, so every write a claimant
makes — heartbeats, artifacts, status — is an UPDATE conditional on both (`Claim.holds`). A
stale claimant (hung, then resumed) finds its writes refused, and stops. Its files go under the
attempt's own key (`engine.store.artifacts.attempt_key`) and become the request's only when its fenced commit
succeeds, so it can never overwrite the winner's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, update

from engine.settings import Settings
from engine.store.artifacts import attempt_key
from engine.store.db import dml, session_scope
from engine.store.records import OPEN_STATES, Request, RequestStatus, utcnow

log = logging.getLogger(__name__)


class ClaimLost(Exception):
    """This claimant's claim was taken over: it must write nothing more and stop."""


@dataclass(frozen=True)
class Claim:
    request_id: int
    worker: str
    attempt: int
    status: RequestStatus

    def holds(self) -> tuple[ColumnElement[bool], ...]:
        """The WHERE clause of every write this claimant makes."""
        return (
            Request.id == self.request_id,
            Request.status == self.status,
            Request.worker == self.worker,
            Request.attempts == self.attempt,
        )

    def key(self, name: str) -> str:
        return attempt_key(self.request_id, self.attempt, name)


@dataclass
class Beats:
    """A stage's heartbeat: claims refused (taken over), the longest gap between beats.

    The thread beats on its schedule; the stage also calls `tick` between its steps, which
    beats when one is due. Both are needed: a C call that keeps the GIL (verovio engraving a
    256-bar score, resvg drawing it: 2-5 s each, measured) starves the thread, and the steps
    alone are too far apart in a long decode."""

    interval_s: float
    claims: list[Claim] = field(default_factory=list)
    settings: Settings | None = None
    lost: set[int] = field(default_factory=set)
    max_gap_s: float = 0.0
    last: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, claim: Claim) -> None:
        if claim.request_id in self.lost:
            raise ClaimLost(claim.request_id)

    def beat_now(self) -> None:
        """One beat for every claim not yet lost (from the thread or the stage)."""
        if self.settings is None:
            return
        with self.lock:
            live = [c for c in self.claims if c.request_id not in self.lost]
            self.lost |= beat(live, self.settings)
            now = time.monotonic()
            gap, self.last = now - self.last, now
            self.max_gap_s = max(self.max_gap_s, gap)
        if gap > 2 * self.interval_s:
            log.warning("heartbeat gap of %.1f s (interval %.1f s)", gap, self.interval_s)

    def tick(self, claim: Claim | None = None) -> None:
        """Between two steps of a stage: beat if one is due, then stop if the claim is lost."""
        if time.monotonic() - self.last >= self.interval_s:
            try:
                self.beat_now()
            except Exception:  # noqa: BLE001 - a missed beat is not fatal; the thread retries
                log.warning("heartbeat failed for %s", [c.request_id for c in self.claims])
        if claim is not None:
            self.check(claim)


def beat(claims: list[Claim], settings: Settings) -> set[int]:
    """One heartbeat for each claim, conditional on it; returns the ids whose claim is gone."""
    lost: set[int] = set()
    with session_scope(settings.sqlalchemy_url) as session:
        for claim in list(claims):
            done = dml(
                session, update(Request).where(*claim.holds()).values(heartbeat_at=utcnow())
            ).rowcount
            if not done:
                lost.add(claim.request_id)
    return lost


# The claim lists this process is beating for now (one per running stage).
_active: list[list[Claim]] = []
_active_lock = threading.Lock()


def active_here() -> set[int]:
    """The requests this process holds a live claim on (a heartbeat runs for them)."""
    with _active_lock:
        return {c.request_id for claims in _active for c in claims}


@contextmanager
def heartbeat(claims: list[Claim], settings: Settings, every_s: float) -> Iterator[Beats]:
    """Beat every `every_s` from a thread, on a fixed schedule whatever the stage is doing (a
    slow beat does not push the next ones back). `claims` may grow while it runs. A claim
    refused once is lost for good: the stage checks `Beats.check` before each write."""
    beats = Beats(every_s, claims, settings)
    stop = threading.Event()

    def run() -> None:
        due = time.monotonic() + every_s
        while not stop.wait(max(0.0, due - time.monotonic())):
            if time.monotonic() - beats.last >= every_s * 0.9:  # not just beaten by `tick`
                try:
                    beats.beat_now()
                except Exception:  # noqa: BLE001 - a missed beat is not fatal; the next is due
                    log.warning("heartbeat failed for %s", [c.request_id for c in claims])
            # the next beat is due one interval after the last due time, or now if overdue
            due = max(due + every_s, time.monotonic())

    thread = threading.Thread(target=run, name="motif-heartbeat", daemon=True)
    with _active_lock:
        _active.append(claims)
    thread.start()
    try:
        yield beats
    finally:
        stop.set()
        with _active_lock:
            _active.remove(claims)
        thread.join(timeout=5)


def failed_values(user_message: str, detail: str) -> dict[str, object]:
    """The columns a failed request gets (one home for every way a request fails)."""
    return {
        "status": RequestStatus.FAILED,
        "finished_at": utcnow(),
        "error_user": user_message,
        "error_detail": detail[:4000],
    }


def fail_claimed(claim: Claim, settings: Settings, user_message: str, detail: str) -> bool:
    """Fail the request, if this claimant still holds it (a stale claimant fails nothing)."""
    with session_scope(settings.sqlalchemy_url) as session:
        return bool(
            dml(
                session,
                update(Request)
                .where(*claim.holds(), Request.status.in_(OPEN_STATES))
                .values(**failed_values(user_message, detail)),
            ).rowcount
        )
