"""A worker as a child process of `motif`: start it, wait until it has registered, stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from engine.settings import Settings
from engine.store.db import session_scope
from engine.store.records import Worker, alive_since


def live_workers(settings: Settings) -> list[str]:
    from sqlalchemy import select

    since = alive_since(settings.worker_heartbeat_s)
    with session_scope(settings.sqlalchemy_url) as session:
        return [w.queues for w in session.scalars(select(Worker).where(Worker.last_seen >= since))]


def wait_worker_ready(
    settings: Settings,
    proc: subprocess.Popen,
    timeout: float,
    log_tail: Callable[[], str],
    ready: Callable[[], object] | None = None,
) -> None:
    """Wait until a worker started for `settings` has registered (or `ready()` is true);
    RuntimeError if it exits first, TimeoutError after `timeout` s (both with its log's end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log_tail()}")
        if (ready or (lambda: live_workers(settings)))():
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready: {log_tail()}")


def _wait_deregistered(settings: Settings, proc: subprocess.Popen, timeout: float) -> bool:
    from sqlalchemy import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with session_scope(settings.sqlalchemy_url) as session:
            if session.scalar(select(Worker.id).where(Worker.pid == proc.pid)) is None:
                return True
        time.sleep(0.05)
    return proc.poll() is not None


def start_worker_process(settings: Settings, queues: str = "gpu,cpu,train") -> subprocess.Popen:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(settings.data_dir / "worker.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "worker", "-Q", queues],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker_process(
    proc: subprocess.Popen, *, settings: Settings | None = None, timeout: float = 10.0
) -> None:
    """Warm-stop a worker started by `start_worker_process` (SIGTERM to its main process, which
    stops its own children), SIGKILL for the whole group after `timeout` s.

    With `settings`, return as soon as the worker has deregistered (it takes no new work from
    then on) and let it finish shutting down on its own: Celery's shutdown takes ~7 s."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        if settings is not None and _wait_deregistered(settings, proc, timeout):
            return
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
