"""The Celery app: queues `gpu` (generation), `cpu` (rendering), `train` (retraining).

Configured from Motif's settings when first used (a message sent, a worker started), not when
imported: importing the queue reads no setting and creates no folder, so the service, the CLI and
the reaper import it at the top. Embedded default: `filesystem://` broker folders under the data
dir and a SQLite result backend. No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from engine.errors import ServiceUnavailable, make_folder
from engine.settings import Settings, get_settings

GPU_QUEUE, CPU_QUEUE, TRAIN_QUEUE = "gpu", "cpu", "train"
TASK_GENERATE, TASK_RENDER, TASK_RETRAIN = "motif.generate", "motif.render", "motif.retrain"


def celery_config(settings: Settings) -> dict[str, object]:
    config: dict[str, object] = {
        "broker_url": settings.celery_broker_url,
        "result_backend": settings.celery_result_backend,
        # One direct exchange per queue: a message lands in exactly the queue it was sent to.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (GPU_QUEUE, CPU_QUEUE, TRAIN_QUEUE)
        ],
        "task_default_queue": CPU_QUEUE,
        "task_routes": {
            TASK_GENERATE: {"queue": GPU_QUEUE},
            TASK_RENDER: {"queue": CPU_QUEUE},
            TASK_RETRAIN: {"queue": TRAIN_QUEUE},
        },
        # A job is acknowledged only when it finished; a dead worker's job goes back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        # A broker that accepts connections but never answers must not hang a sender.
        "broker_connection_timeout": settings.broker_timeout_s,
        "redis_socket_connect_timeout": settings.broker_timeout_s,
        "redis_socket_timeout": settings.broker_timeout_s,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "result_extended": False,
    }
    url = settings.celery_broker_url
    if url.startswith("filesystem://"):
        config.update(_filesystem_transport(settings))
    elif url.startswith(("redis://", "rediss://")):
        # Long enough for a training run's message; the reaper handles lost generation jobs.
        config["broker_transport_options"] = {
            "visibility_timeout": 3600,
            "socket_connect_timeout": settings.broker_timeout_s,
            "socket_timeout": max(settings.broker_timeout_s, 5.0),  # above BRPOP's 1 s wait
        }
    if not url.startswith("filesystem://"):
        # A send's connect is retried by kombu (retry_over_time), sleeping between tries: 8
        # sleeps (6 s) by default, for every send to a broker that is down. Bounded here; a
        # worker's own reconnect loop is Celery's (broker_connection_max_retries) and unchanged.
        options = dict(config.get("broker_transport_options") or {})  # type: ignore[call-overload]
        options.update(
            max_retries=settings.broker_connect_retries,
            interval_start=0.2,
            interval_step=0.5,
            interval_max=1.0,
        )
        config["broker_transport_options"] = options
    if settings.celery_result_backend.startswith("db+sqlite"):
        make_folder(settings.data_dir)
    return config


def _filesystem_transport(settings: Settings) -> dict[str, Any]:
    """The embedded broker: message folders under the data folder, written atomically."""
    folder = settings.broker_folder
    try:
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceUnavailable(
            f"The broker folder {folder} cannot be created: {exc.strerror or exc}.",
            detail=str(exc),
        ) from exc
    options = {
        "data_folder_in": str(folder / "out"),
        "data_folder_out": str(folder / "out"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": settings.broker_polling_interval_s,
    }
    # atomic message files
    return {
        "broker_transport": "engine.queue.broker_files:Transport",
        "broker_transport_options": options,
    }


def make_app(
    settings: Settings | None = None, *, include: Sequence[str] = (), set_as_current: bool = True
) -> Celery:
    """An app configured from `settings` (the process's settings when None) on first use:
    `add_defaults` with a callable is Celery's own lazy configuration, read when the app's
    configuration is first asked for. `include` names the modules a worker imports."""
    app = Celery("motif", include=list(include), set_as_current=set_as_current)
    app.add_defaults(lambda: celery_config(settings or get_settings()))
    return app


def configure_now(app: Celery) -> None:
    """Read `app`'s configuration now rather than at its first message: the settings checked,
    the broker folders made (a ServiceUnavailable here names the folder)."""
    app.conf.task_queues  # noqa: B018 - the first read of a key configures a pending app


@lru_cache(maxsize=1)
def get_app() -> Celery:
    """The senders' app for the process's settings. Not the current app: in a worker process
    the worker's own (engine.worker.app) stays current."""
    return make_app(set_as_current=False)
