"""A worker's life, as Celery signals: warm the model and the renderer in each child, keep the
worker's presence row, wake the bot after each task. Loaded with the tasks (the `include` of
engine.worker.app)."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from engine.audio.encode import render_audio
from engine.audio.pianoroll import piano_roll_png
from engine.audio.synth import renderer_description
from engine.music.notes import Note, Piece
from engine.music.result_midi import to_midi_bytes
from engine.queue.app import TASK_GENERATE, TASK_RENDER
from engine.service.notify import publish_request_changed
from engine.settings import Settings, get_settings
from engine.worker.app import app
from engine.worker.claims import set_worker_queues
from engine.worker.lifecycle import WorkerPresence, record_device

log = logging.getLogger(__name__)

_presence: WorkerPresence | None = None


@signals.task_postrun.connect
def _wake_the_bot(task: Any = None, args: Any = None, retval: Any = None, **_: object) -> None:
    """After a generate or render task (its rows committed): wake bots that follow the request,
    over Redis pub/sub or Postgres NOTIFY where the deployment has them (engine.service.notify)."""
    if task is None or task.name not in (TASK_GENERATE, TASK_RENDER) or not args:
        return
    ids = retval if task.name == TASK_GENERATE and isinstance(retval, list) else [args[0]]
    publish_request_changed(get_settings(), {int(args[0]), *ids})


@signals.worker_process_init.connect
def _warm_up(sender: object = None, **_: object) -> None:
    """Before any job, load what this worker's queues need, once per worker process: the active
    model for `gpu`, the synthesizer for `cpu` (a render-only worker loads no model). Then log
    one line saying what is in use, and record the model's real device in the worker's row."""
    settings = get_settings()
    queues = consumed_queues()
    set_worker_queues(queues)  # recorded with each claim: what a busy worker here serves
    device = "cpu"
    model_text = "none (no gpu queue)"
    if queues is None or "gpu" in queues:
        try:
            if settings.torch_threads > 0:
                # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
                import torch

                torch.set_num_threads(settings.torch_threads)
            # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
            from engine.model.checkpoint import device_label
            from engine.worker.loaded import get_model

            version, model = get_model(settings)
            device = device_label(next(model.model.parameters()).device)
            model_text = version
        except Exception:  # noqa: BLE001 - a cold start is slower, not broken
            log.warning("could not preload the model", exc_info=True)
            model_text = "not loaded (see the warning above)"
    renderer_text = "none (no cpu queue)"
    if queues is None or "cpu" in queues:
        try:
            _render_once(settings)
        except Exception:  # noqa: BLE001
            log.warning("could not preload the renderer", exc_info=True)
        renderer_text = renderer_description(settings)
    log.info(
        "worker process ready: queues %s; model %s on %s; renderer %s",
        ",".join(sorted(queues)) if queues is not None else "?",
        model_text,
        device,
        renderer_text,
    )
    if isinstance(sender, str) and queues is not None and "gpu" in queues:
        record_device(settings, sender, ",".join(sorted(queues)), device)


def consumed_queues() -> set[str] | None:
    """The queues this worker consumes (the pool children inherit them from the main process
    that forked them); None when unknown."""
    try:
        names = {q.name for q in app.amqp.queues.consume_from.values()}
    except Exception:  # noqa: BLE001 - outside a worker there are none to read
        return None
    return names or None


def _render_once(settings: Settings) -> None:
    """One tiny render: the first call pays for imports, the soundfont and font caches (~9 s
    measured on a busy 2-core machine), so no user's request does."""

    piece = Piece((Note(0.0, 1.0, 60, 80), Note(1.0, 1.0, 64, 80)))
    render_audio(to_midi_bytes(piece), settings, program=0)
    piano_roll_png(None, piece, title="warm-up")


@signals.worker_ready.connect
def _start_presence(sender: Any = None, **_: object) -> None:
    global _presence
    settings = get_settings()
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values()))
    hostname = getattr(sender, "hostname", None) or "worker"
    _presence = WorkerPresence(settings, hostname, queues, _device_name(settings, queues))
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


def _device_name(settings: Settings, queues: str) -> str | None:
    """The device known before any child starts: `cpu` for a render-only worker or one set to
    cpu. Otherwise None until a child has loaded the model and recorded the device it
    really uses (`record_device`): the main process must not touch CUDA before it forks."""
    if settings.device == "cpu" or not {"gpu", "train"} & set(queues.split(",")):
        return "cpu"
    return None
