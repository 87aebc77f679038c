"""The local worker that `motif compose` starts on the embedded defaults, shared by every
`motif compose` running at once in the same data folder.

Starting, joining, leaving and stopping happen under one file lock, so concurrent composes
start one worker between them, the last one out stops it, and none stops a worker another
is still waiting on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import ServiceUnavailable, make_folder
from engine.settings import Settings
from engine.store.db import session_scope
from engine.store.records import Worker
from engine.worker.presence import live_queues_in, process_alive
from engine.worker.process import start_worker_process, wait_worker_ready

log = logging.getLogger(__name__)

NEEDED_QUEUES = ("gpu", "cpu")


def live_queues(settings: Settings) -> set[str]:
    with session_scope(settings.sqlalchemy_url) as session:
        return live_queues_in(session, settings)


def serving(settings: Settings) -> bool:
    return all(q in live_queues(settings) for q in NEEDED_QUEUES)


class LocalWorker:
    """One compose's membership of the shared local worker (see the module's docstring)."""

    def __init__(self, settings: Settings, *, keep: bool = False, ready_timeout: float = 180.0):
        self.settings = settings
        self.keep = keep
        self.ready_timeout = ready_timeout
        self.folder = settings.data_dir
        self.state_path = self.folder / "local-worker.json"
        self.started_here = False

    @contextmanager
    def _locked(self) -> Iterator[dict[str, object]]:
        make_folder(self.folder)
        with open(self.folder / "local-worker.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                state = self._read()
                yield state
                self._write(state)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self) -> dict[str, object]:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = {}
        users = [u for u in state.get("users", []) if isinstance(u, int) and process_alive(u)]
        pid = state.get("pid")
        if not isinstance(pid, int) or not process_alive(pid):
            pid = None
        return {"pid": pid, "users": users}

    def _write(self, state: dict[str, object]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    def join(self) -> bool:
        """Use the live workers, starting one when none serves. True when this call started it."""
        with self._locked() as state:
            users = state["users"]
            assert isinstance(users, list)
            if os.getpid() not in users:
                users.append(os.getpid())
            return self._ensure(state)

    def ensure(self) -> bool:
        """While waiting: start a worker if none is live any more (it died, or was stopped)."""
        with self._locked() as state:
            return self._ensure(state)

    def _ensure(self, state: dict[str, object]) -> bool:
        if serving(self.settings):
            return False
        if isinstance(state["pid"], int):
            # The shared worker's process runs (a presence beat may just be late on a busy
            # machine): starting a second one would only compete with it for the cores.
            return False
        log_path = self.settings.data_dir / "worker.log"
        print(f"starting a local worker (log: {log_path})")
        proc = start_worker_process(self.settings)
        state["pid"] = proc.pid
        self.started_here = True
        try:
            wait_worker_ready(
                self.settings,
                proc,
                self.ready_timeout,
                lambda: _tail(log_path),
                ready=lambda: serving(self.settings),
            )
        except (RuntimeError, TimeoutError) as exc:
            state["pid"] = None
            if proc.poll() is None:
                stop_pid(self.settings, proc.pid)
            last = next((ln for ln in reversed(_tail(log_path).splitlines()) if ln.strip()), "")
            raise ServiceUnavailable(
                f"The local worker did not start (its log: {log_path}): {last.strip()[:300]}",
                detail=str(exc),
            ) from exc
        return True

    def leave(self) -> None:
        """Stop being a user; the last user out stops the worker that a compose started."""
        with self._locked() as state:
            users = state["users"]
            assert isinstance(users, list)
            with contextlib.suppress(ValueError):
                users.remove(os.getpid())
            pid = state["pid"]
            if self.keep and self.started_here:
                state["pid"] = None  # left running on purpose: no compose stops it
                return
            if users or not isinstance(pid, int):
                return
            stop_pid(self.settings, pid)
            state["pid"] = None


def stop_pid(settings: Settings, pid: int, timeout: float = 10.0) -> None:
    """Warm-stop a local worker by its pid: SIGTERM, return once it has deregistered (it takes
    no new work from then on), SIGKILL its process group after `timeout` s."""
    from sqlalchemy import select

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        with session_scope(settings.sqlalchemy_url) as session:
            if session.scalar(select(Worker.id).where(Worker.pid == pid)) is None:
                return
        time.sleep(0.05)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""
