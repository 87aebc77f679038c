"""Sending jobs to the queues by task name, so senders (the bot) never import torch."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery.exceptions import CeleryError
from kombu.exceptions import KombuError, OperationalError

from engine.errors import QueueUnreachable
from engine.queue.app import (
    CPU_QUEUE,
    GPU_QUEUE,
    TASK_GENERATE,
    TASK_RENDER,
    TASK_RETRAIN,
    TRAIN_QUEUE,
    get_app,
    make_app,
)
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)


@lru_cache(maxsize=16)
def _app_for(broker: str, folder: str, backend: str, settings_json: str):
    return make_app(Settings.model_validate_json(settings_json), set_as_current=False)


def _app(settings: Settings):
    if settings is get_settings():
        return get_app()
    return _app_for(
        settings.celery_broker_url,
        str(settings.broker_folder),
        settings.celery_result_backend,
        settings.model_dump_json(exclude={"discord_token"}),
    )


def _send_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (
        OperationalError,
        KombuError,
        CeleryError,
        ConnectionError,
        TimeoutError,
        OSError,
    )
    try:
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover - redis is a dependency
        return errors
    return (*errors, RedisError)


def _send(settings: Settings, what: str, fn) -> None:
    """Hand one message to the broker, or raise QueueUnreachable within the broker timeouts (a
    broker that accepts connections but never answers does not block the caller)."""
    try:
        fn(_app(settings))
    except _send_errors() as exc:
        log.warning("broker unreachable while sending %s: %s", what, exc)
        raise QueueUnreachable(
            "The job queue is unreachable right now; nothing was queued. Try again shortly.",
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc


def dispatch_request(request_id: int, settings: Settings | None = None) -> None:
    """The generate task; it sends the render of each request it generated (engine.worker.tasks),
    so a request batched by another message gets no second render."""
    _send_one(
        settings or get_settings(), f"request {request_id}", TASK_GENERATE, request_id, GPU_QUEUE
    )


def dispatch_render(request_id: int, settings: Settings | None = None) -> None:
    _send_one(
        settings or get_settings(), f"render {request_id}", TASK_RENDER, request_id, CPU_QUEUE
    )


def dispatch_retrain(run_id: int, settings: Settings | None = None) -> None:
    _send_one(
        settings or get_settings(), f"training run {run_id}", TASK_RETRAIN, run_id, TRAIN_QUEUE
    )


def _send_one(settings: Settings, what: str, task: str, task_id: int, queue: str) -> None:
    """Send one task by name, with its row's id, to `queue`."""
    _send(
        settings,
        what,
        lambda app: app.send_task(
            task, args=(task_id,), queue=queue, retry=False, ignore_result=True
        ),
    )
