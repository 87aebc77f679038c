"""Celery tasks: thin wrappers that take ids and call `engine.worker.pipeline`.

Retries are declared here; the work and its idempotence live in the plain functions. The
worker's life around them (warm-up, presence, wake-ups) is in `engine.worker.signals`.
"""

from __future__ import annotations

import logging

from celery import Task

from engine.errors import QueueUnreachable, ServiceUnavailable
from engine.queue.app import TASK_GENERATE, TASK_RENDER, TASK_RETRAIN
from engine.queue.dispatch import dispatch_render
from engine.settings import get_settings
from engine.worker.app import app
from engine.worker.claims import RowNotVisible
from engine.worker.pipeline import fail_timed_out, run_generation, run_render
from engine.worker.retrain import run_training

log = logging.getLogger(__name__)

# A row not visible yet, or a database that is down: retried with back-off (up to 10 s apart,
# about 15 minutes in all), never acknowledged as failed.
RETRY = {
    "autoretry_for": (RowNotVisible, ServiceUnavailable),
    "retry_backoff": 0.5,
    "retry_backoff_max": 10,
    "max_retries": 100,
}


class _Bounded(Task):
    """A task with time limits: when the hard one kills it, its request fails with a clear
    message (the soft one is handled in `engine.worker.pipeline`)."""

    stage = ""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if args:
            fail_timed_out(self.stage, int(args[0]), get_settings(), exc)


class _Generating(_Bounded):
    stage = "Generating"


class _Rendering(_Bounded):
    stage = "Rendering"


def _limits(seconds: float) -> dict[str, float]:
    return {"soft_time_limit": seconds, "time_limit": seconds + HARD_MARGIN_S}


HARD_MARGIN_S = 15.0
_settings = get_settings()


@app.task(
    name=TASK_GENERATE,
    base=_Generating,
    **RETRY,
    **_limits(_settings.generate_time_limit_s),
)
def generate(request_id: int) -> list[int]:
    settings = get_settings()
    done = run_generation(request_id, settings)
    # One render message for each request generated here, this one and its batch-mates alike
    # (no chain: a generate message whose row was already batched elsewhere sends nothing).
    for rid in done:
        try:
            dispatch_render(rid, settings)
        except QueueUnreachable:
            # The row says `rendering`: the reaper re-sends its render when the broker
            # is back (engine.worker.reaper.resend_lost).
            log.warning("could not send the render of %s", rid)
    return done


@app.task(name=TASK_RENDER, base=_Rendering, **RETRY, **_limits(_settings.render_time_limit_s))
def render(request_id: int) -> bool:
    return run_render(request_id, get_settings())


@app.task(name=TASK_RETRAIN, autoretry_for=(RowNotVisible,), max_retries=10, retry_backoff=1)
def retrain(run_id: int) -> str:
    return run_training(run_id, get_settings())
