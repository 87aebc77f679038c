"""The work behind the Celery tasks, as plain functions: claim, generate, render, finish.

Every stage re-reads the request row, claims it with a compare-and-set on its status, and writes
its files under keys derived from the request id, so a redelivered task neither duplicates rows
nor files. The SQL row is the source of truth.
"""

from __future__ import annotations

import logging
import time

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from engine.errors import MotifError, ServiceUnavailable, public_message
from engine.settings import Settings, get_settings
from engine.store.db import session_scope
from engine.store.records import (
    Request,
    RequestKind,
    RequestStatus,
)
from engine.worker.claims import (
    beat_interval_s,
    claim_for_generation,
    drain_queued,
    fail_abandoned,
    release_stale_own,
)
from engine.worker.fencing import Claim, fail_claimed, heartbeat
from engine.worker.generation import generate_batch
from engine.worker.rendering import render_request, took_too_long

log = logging.getLogger(__name__)


def run_generation(request_id: int, settings: Settings | None = None) -> list[int]:
    """Claim this request, drain more waiting ones into the batch, generate. Returns ids done."""
    settings = settings or get_settings()
    # A batch this process claimed before a database outage is queued again first, so the
    # claim below takes it up again as a batch (engine.worker.claims.release_stale_own).
    release_stale_own(settings)
    claim = claim_for_generation(request_id, settings)
    if claim is None:
        return []
    claims = [claim]
    try:
        # The heartbeat covers the batching wait too: the list grows as requests are drained.
        with heartbeat(claims, settings, beat_interval_s(settings)) as beats:
            if settings.batch_wait_ms:
                time.sleep(settings.batch_wait_ms / 1000)
            claims.extend(drain_queued(settings, settings.batch_size - 1, {request_id}))
            return generate_batch(claims, settings, beats)
    except ServiceUnavailable:
        # The database went away: nothing is failed or acknowledged as failed; the task is
        # retried with back-off, and its retry queues this batch again (release_stale_own).
        log.warning("database unreachable while generating %s; will retry", _ids(claims))
        raise
    except MotifError as exc:
        for c in claims:
            fail_claimed(c, settings, public_message(exc), exc.detail)
        return []
    except SoftTimeLimitExceeded as exc:
        log.warning("generation of %s ran past its time limit", _ids(claims))
        for c in claims:
            message = took_too_long("Generating", c.request_id)
            fail_claimed(c, settings, message, repr(exc))
        return []
    except Exception as exc:
        log.exception("generation failed for %s", _ids(claims))
        for c in claims:
            rid = c.request_id
            fail_claimed(c, settings, f"Generation failed (request #{rid}); sorry!", repr(exc))
        return []


def _ids(claims: list[Claim]) -> list[int]:
    return [c.request_id for c in claims]


def run_render(request_id: int, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    try:
        return render_request(request_id, settings)
    except ServiceUnavailable:
        log.warning("database unreachable while rendering %s; will retry", request_id)
        raise


def fail_timed_out(stage: str, request_id: int, settings: Settings, exc: BaseException) -> None:
    """After a hard time limit killed the task (Celery calls on_failure in the pool's parent,
    not in the claimant: see `fail_abandoned` for what it may fail)."""
    if isinstance(exc, TimeLimitExceeded):
        fail_abandoned(request_id, settings, took_too_long(stage, request_id), repr(exc))


def process_request(request_id: int, settings: Settings | None = None) -> RequestStatus:
    """Both stages in this process (tests, tools): the same functions the workers run."""
    settings = settings or get_settings()
    done = run_generation(request_id, settings)
    for rid in done:
        run_render(rid, settings)
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        assert req is not None
        return req.status


__all__ = ["RequestKind", "process_request", "run_generation", "run_render"]
