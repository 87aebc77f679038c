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
from engine.worker.claims import RowNotVisible, claim_for_generation, drain_queued, fail, heartbeat
from engine.worker.generation import generate_batch
from engine.worker.rendering import render_request

log = logging.getLogger(__name__)


def run_generation(request_id: int, settings: Settings | None = None) -> list[int]:
    """Claim this request, drain more waiting ones into the batch, generate. Returns ids done."""
    settings = settings or get_settings()
    if not claim_for_generation(request_id, settings):
        return []
    batch = [request_id]
    try:
        # The heartbeat covers the batching wait too: the list grows as requests are drained.
        with heartbeat(batch, settings):
            if settings.batch_wait_ms:
                time.sleep(settings.batch_wait_ms / 1000)
            batch.extend(drain_queued(settings, settings.batch_size - 1, {request_id}))
            return generate_batch(batch, settings)
    except ServiceUnavailable:
        # The database went away: nothing is failed or acknowledged as failed; the task is
        # retried with back-off, and the rows claimed here are taken over (claimant_gone).
        log.warning("database unreachable while generating %s; will retry", batch)
        raise
    except MotifError as exc:
        for rid in batch:
            fail(rid, settings, public_message(exc), exc.detail)
        return []
    except SoftTimeLimitExceeded as exc:
        log.warning("generation of %s ran past its time limit", batch)
        for rid in batch:
            fail(rid, settings, took_too_long("Generating", rid), repr(exc))
        return []
    except Exception as exc:
        log.exception("generation failed for %s", batch)
        for rid in batch:
            fail(rid, settings, f"Generation failed (request #{rid}); sorry!", repr(exc))
        return []


def run_render(request_id: int, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    try:
        return render_request(request_id, settings)
    except ServiceUnavailable:
        log.warning("database unreachable while rendering %s; will retry", request_id)
        raise
    except MotifError as exc:
        fail(request_id, settings, public_message(exc), exc.detail)
        return False
    except RowNotVisible:
        raise
    except SoftTimeLimitExceeded as exc:
        log.warning("rendering %s ran past its time limit", request_id)
        fail(request_id, settings, took_too_long("Rendering", request_id), repr(exc))
        return False
    except Exception as exc:
        log.exception("rendering failed for %s", request_id)
        fail(request_id, settings, f"Rendering failed (request #{request_id}); sorry!", repr(exc))
        return False


def took_too_long(stage: str, request_id: int) -> str:
    return (
        f"{stage} request #{request_id} took longer than Motif allows, so it was stopped. "
        "Try fewer bars or a shorter seed."
    )


def fail_timed_out(stage: str, request_id: int, settings: Settings, exc: BaseException) -> None:
    """After a hard time limit killed the task (Celery calls on_failure in the worker)."""
    if isinstance(exc, TimeLimitExceeded):
        fail(request_id, settings, took_too_long(stage, request_id), repr(exc))


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
