"""A worker's life: register in SQL, beat, reap stale jobs, warm the model in each child."""

from __future__ import annotations

import logging
import os
import threading

from sqlalchemy import delete, select

from engine.settings import Settings
from engine.store.db import dml, ensure_schema, session_scope
from engine.store.records import Worker, utcnow
from engine.worker.reaper import reap

log = logging.getLogger(__name__)


class WorkerPresence:
    """Keeps this worker's row fresh and runs the reaper on an interval, in a daemon thread."""

    def __init__(self, settings: Settings, hostname: str, queues: str, device: str | None):
        self.settings = settings
        self.hostname = hostname
        self.queues = queues
        self.device = device
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        with session_scope(self.settings.sqlalchemy_url) as session:
            row = session.scalar(select(Worker).where(Worker.hostname == self.hostname))
            if row is None:
                session.add(
                    Worker(
                        hostname=self.hostname,
                        queues=self.queues,
                        device=self.device,
                        pid=os.getpid(),
                    )
                )
            else:
                row.last_seen = utcnow()
                row.pid = os.getpid()
                row.queues = self.queues

    def _loop(self) -> None:

        last_reap = 0.0
        import time

        while not self._stop.is_set():
            try:
                self.beat()
                now = time.monotonic()
                if now - last_reap >= self.settings.reaper_interval_s:
                    last_reap = now
                    reap(self.settings)
            except Exception:  # noqa: BLE001 - presence must never kill the worker
                log.warning("worker presence loop failed", exc_info=True)
            self._stop.wait(self.settings.worker_heartbeat_s)
        self._deregister()  # leaving: no new work is routed here by `motif compose` and /status

    def start(self) -> None:
        ensure_schema(self.settings.sqlalchemy_url, auto_create=True)
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="motif-presence", daemon=True)
        self._thread.start()

    def leave(self) -> None:
        """Stop taking part at once, without waiting: the presence thread deregisters the worker
        (safe from a signal handler; Celery's `worker_shutting_down` calls it)."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._deregister()

    def _deregister(self) -> None:
        try:
            with session_scope(self.settings.sqlalchemy_url) as session:
                session.execute(delete(Worker).where(Worker.hostname == self.hostname))
        except Exception:  # noqa: BLE001
            log.warning("could not deregister worker", exc_info=True)


def record_device(settings: Settings, hostname: str, queues: str, device: str) -> None:
    """A pool child that has loaded the model writes the device it really uses (`cpu`,
    `cuda:0 NVIDIA H200`) into its worker's row. The row may not exist yet (the main process
    registers when Celery says it is ready): then the child writes it, and the main process's
    heartbeat adopts it."""
    from sqlalchemy import update
    from sqlalchemy.exc import IntegrityError

    for _ in range(2):
        try:
            with session_scope(settings.sqlalchemy_url) as session:
                found = dml(
                    session, update(Worker).where(Worker.hostname == hostname).values(device=device)
                ).rowcount
                if not found:
                    session.add(
                        Worker(
                            hostname=hostname,
                            queues=queues,
                            device=device,
                            pid=os.getppid(),
                        )
                    )
            return
        except IntegrityError:
            continue  # the main process registered meanwhile: update its row
        except Exception:  # noqa: BLE001 - /status shows less, nothing breaks
            log.warning("could not record the worker's device", exc_info=True)
            return
