"""A training run's row: claiming it, writing its progress, heartbeat and log, and reading
whether it was cancelled."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select, update

from engine.settings import Settings
from engine.store.db import dml, session_scope
from engine.store.records import RunStatus, TrainingRun, utcnow
from engine.worker.claims import worker_name

log = logging.getLogger(__name__)


class RunRecorder:
    """Writes a run's progress, heartbeat and log lines to SQL, and answers 'was it cancelled?'."""

    def __init__(self, settings: Settings, run_id: int) -> None:
        self.settings = settings
        self.run_id = run_id
        self._last_check = 0.0
        self._cancelled = False
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        log.info("training run %s: %s", self.run_id, line)
        self.lines.append(f"{utcnow():%H:%M:%S} {line}")
        self._write(log="\n".join(self.lines[-500:]))

    def _write(self, **values: Any) -> None:
        with session_scope(self.settings.sqlalchemy_url) as session:
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == self.run_id)
                .values(heartbeat_at=utcnow(), **values)
            )

    def progress(self, info: dict[str, Any]) -> None:
        clean = {k: v for k, v in info.items() if isinstance(v, int | float | str | None)}
        self._write(progress=clean)

    def status(self, status: RunStatus, **values: Any) -> None:
        self._write(status=status, **values)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_check >= 1.0:
            self._last_check = now
            with session_scope(self.settings.sqlalchemy_url) as session:
                self._cancelled = bool(
                    session.scalar(
                        select(TrainingRun.cancel_requested).where(TrainingRun.id == self.run_id)
                    )
                )
        return self._cancelled


def claim_run(settings: Settings, run_id: int) -> bool:
    with session_scope(settings.sqlalchemy_url) as session:
        done = dml(
            session,
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.QUEUED)
            .values(
                status=RunStatus.RUNNING,
                started_at=utcnow(),
                heartbeat_at=utcnow(),
                worker=worker_name(),
            ),
        ).rowcount
        return bool(done)
