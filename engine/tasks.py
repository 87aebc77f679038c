"""Celery tasks: thin wrappers that take ids and call `engine.pipeline`.

Retries are declared here; the work and its idempotence live in the plain functions.
"""

from __future__ import annotations

import logging

from celery import signals

from engine.celery_app import TASK_GENERATE, TASK_RENDER, TASK_RETRAIN, app
from engine.pipeline import RowNotVisible, run_generation, run_render
from engine.settings import get_settings

log = logging.getLogger(__name__)

_presence = None


@app.task(
    name=TASK_GENERATE,
    autoretry_for=(RowNotVisible,),
    retry_backoff=0.5,
    retry_backoff_max=5,
    max_retries=20,
)
def generate(request_id: int) -> list[int]:
    from engine.queueing import dispatch_render

    settings = get_settings()
    done = run_generation(request_id, settings)
    # This request's render follows through the chain; batch-mates get their own render.
    for other in done:
        if other != request_id:
            dispatch_render(other, settings)
    return done


@app.task(
    name=TASK_RENDER,
    autoretry_for=(RowNotVisible,),
    retry_backoff=0.5,
    retry_backoff_max=5,
    max_retries=20,
)
def render(request_id: int) -> bool:
    return run_render(request_id, get_settings())


@app.task(name=TASK_RETRAIN, autoretry_for=(RowNotVisible,), max_retries=10, retry_backoff=1)
def retrain(run_id: int) -> str:
    from engine.retrain import run_training

    return run_training(run_id, get_settings())


@signals.task_postrun.connect
def _wake_the_bot(task=None, args=None, retval=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    """After a generate or render task (its rows committed): wake bots that follow the request,
    over Redis pub/sub or Postgres NOTIFY where the deployment has them (engine.notify)."""
    if task is None or task.name not in (TASK_GENERATE, TASK_RENDER) or not args:
        return
    from engine.notify import publish_request_changed

    ids = retval if task.name == TASK_GENERATE and isinstance(retval, list) else [args[0]]
    publish_request_changed(get_settings(), {int(args[0]), *ids})


@signals.worker_process_init.connect
def _warm_up(**_: object) -> None:
    """Load the active model and the synthesizer once per worker process, before any job."""
    settings = get_settings()
    try:
        if settings.torch_threads > 0:
            import torch

            torch.set_num_threads(settings.torch_threads)
        from engine.model_registry import get_model

        get_model(settings)
    except Exception:  # noqa: BLE001 - a cold start is slower, not broken
        log.warning("could not preload the model", exc_info=True)
    try:
        _render_once(settings)
    except Exception:  # noqa: BLE001
        log.warning("could not preload the renderer", exc_info=True)


def _render_once(settings) -> None:  # type: ignore[no-untyped-def]
    """One tiny render: the first call pays for imports, the soundfont and font caches (~9 s
    measured on a busy 2-core machine), so no user's request does."""
    from engine.audio import render_audio
    from engine.midi_io import to_midi_bytes
    from engine.music import Note, Piece
    from engine.pianoroll import piano_roll_png

    piece = Piece((Note(0.0, 1.0, 60, 80), Note(1.0, 1.0, 64, 80)))
    render_audio(to_midi_bytes(piece), settings, program=0)
    piano_roll_png(None, piece, title="warm-up")


@signals.worker_ready.connect
def _start_presence(sender=None, **_: object) -> None:  # type: ignore[no-untyped-def]
    global _presence
    from engine.worker_life import WorkerPresence

    settings = get_settings()
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    hostname = getattr(sender, "hostname", None) or "worker"
    _presence = WorkerPresence(settings, hostname, queues, _device_name(settings))
    _presence.start()


@signals.worker_shutting_down.connect
def _leave(**_: object) -> None:
    # The first moment of a shutdown (a signal handler): deregister without blocking.
    if _presence is not None:
        _presence.leave()


@signals.worker_shutdown.connect
def _stop_presence(**_: object) -> None:
    if _presence is not None:
        _presence.stop()


def _device_name(settings) -> str:  # type: ignore[no-untyped-def]
    # The parent must not touch CUDA before forking; children report the real device per job.
    return settings.device
