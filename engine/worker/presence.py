"""Who is alive: processes of this machine, presence rows, and the queues live workers take.
Read by the claims, the reaper and `motif compose`'s local worker; written by the lifecycle."""

from __future__ import annotations

import os
import socket
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.settings import Settings
from engine.store.records import Worker, alive_since


def process_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (a zombie awaiting its parent does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust kill(0)


def presence_alive(node: str, pid: int) -> bool:
    """A presence row of this machine whose process is dead is not a live worker, however fresh
    its last beat (a `kill -9` leaves the row behind)."""
    return node.rpartition("@")[2] != socket.gethostname() or process_alive(pid)


def live_queues_in(
    session: Session, settings: Settings, started_before: datetime | None = None
) -> set[str]:
    """The queues that live workers take: fresh presence rows, less those whose process on this
    machine is dead; with `started_before`, only workers up since then."""
    since = alive_since(settings.worker_heartbeat_s)
    query = select(Worker.hostname, Worker.pid, Worker.queues).where(Worker.last_seen >= since)
    if started_before is not None:
        query = query.where(Worker.started_at < started_before)
    rows = session.execute(query)
    return {q for node, pid, queues in rows if presence_alive(node, pid) for q in queues.split(",")}
