"""Fencing: what a stage's claimant may write, and its heartbeat.

A claim is the row's `(worker, attempts)` when the stage took it. Every takeover (a redelivered
message whose claimant is gone, the reaper) changes one of the two, so every write a claimant
makes — heartbeats, artifacts, status — is an UPDATE conditional on both (`Claim.holds`). A
stale claimant (hung, then resumed) finds its writes refused, and stops. Its files go under the
attempt's own key (`attempt_key`) and become the request's only when its fenced commit
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


def attempt_key(request_id: int, attempt: int, name: str) -> str:
    """Where an attempt writes a file: its own folder, so attempts never share a key (the file
    name, which users see, stays `name`)."""
    return f"requests/{request_id}/attempt-{attempt}/{name}"


@dataclass
class Beats:
    """What the heartbeat thread saw: claims refused (taken over), and the longest gap."""

    interval_s: float
    lost: set[int] = field(default_factory=set)
    max_gap_s: float = 0.0

    def check(self, claim: Claim) -> None:
        if claim.request_id in self.lost:
            raise ClaimLost(claim.request_id)


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
    beats = Beats(every_s)
    stop = threading.Event()

    def run() -> None:
        last = time.monotonic()
        due = last + every_s
        while not stop.wait(max(0.0, due - time.monotonic())):
            try:
                beats.lost |= beat([c for c in claims if c.request_id not in beats.lost], settings)
            except Exception:  # noqa: BLE001 - a missed beat is not fatal; the next one is due
                log.warning("heartbeat failed for %s", [c.request_id for c in claims])
            else:
                now = time.monotonic()
                beats.max_gap_s = max(beats.max_gap_s, now - last)
                if now - last > 2 * every_s:
                    log.warning("heartbeat gap of %.1f s (interval %.1f s)", now - last, every_s)
                last = now
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


def fail_claimed(claim: Claim, settings: Settings, user_message: str, detail: str) -> bool:
    """Fail the request, if this claimant still holds it (a stale claimant fails nothing)."""
    with session_scope(settings.sqlalchemy_url) as session:
        return bool(
            dml(
                session,
                update(Request)
                .where(*claim.holds(), Request.status.in_(OPEN_STATES))
                .values(
                    status=RequestStatus.FAILED,
                    finished_at=utcnow(),
                    error_user=user_message,
                    error_detail=detail[:4000],
                ),
            ).rowcount
        )
