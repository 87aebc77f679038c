"""The Celery app: queues `gpu` (generation), `cpu` (rendering), `train` (retraining).

Configured from Motif's settings. Embedded default: `filesystem://` broker folders under the data
dir and a SQLite result backend. No torch here.
"""

from __future__ import annotations

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
        "broker_transport": "engine.worker.broker_files:Transport",
        "broker_transport_options": options,
    }


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("motif", include=["engine.worker.tasks", "engine.worker.signals"])
    app.conf.update(celery_config(settings))
    return app


@lru_cache(maxsize=1)
def get_app() -> Celery:
    return make_app()


# `celery -A engine.worker.app worker` and `motif worker` both find the app here.
app = get_app()
