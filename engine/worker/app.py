"""The worker's Celery app: the queue's app (engine.queue.app) with the tasks and the worker's
signals. `celery -A engine.worker.app worker` and `motif worker` find it here; like every Motif
app it reads the settings when the worker starts, not on import."""

from __future__ import annotations

from engine.queue.app import make_app

app = make_app(include=["engine.worker.tasks", "engine.worker.signals"])
