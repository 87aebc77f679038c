"""Container health checks: is this bot or worker able to do its job right now?

`python -m engine.health worker|bot|db` (the images' HEALTHCHECK) prints one line and exits 0
(healthy) or 1 (not). No torch here: the bot image runs it too.
"""

from __future__ import annotations

import logging
import socket
import sys
from datetime import UTC, datetime, timedelta
from typing import Literal

from engine.errors import MotifError
from engine.queue.app import make_app
from engine.settings import Settings, bad_setting_line, get_settings, hide_password
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import ALIVE_HEARTBEATS, Worker, utcnow

log = logging.getLogger(__name__)

Role = Literal["worker", "bot", "db"]
ROLES: tuple[Role, ...] = ("worker", "bot", "db")

# A presence row older than this many heartbeats means the worker's main process stopped beating.


class Unhealthy(Exception):
    """One check failed; the message is the line a person reads in `docker ps` / `inspect`."""


def check_schema(settings: Settings) -> str:
    """The database answers and is migrated to the code's head revision."""
    url = settings.sqlalchemy_url
    try:
        current = db.current_revision(url)
    except MotifError as exc:
        raise Unhealthy(exc.user_message) from exc
    head = db.head_revision(url)
    if current != head:
        raise Unhealthy(
            f"schema at revision {current or 'none'}, code needs {head}: run `motif db upgrade`"
        )
    return f"database {db.safe_url(url)} at head {head}"


def check_broker(settings: Settings, timeout_s: float = 3.0) -> str:
    """The Celery broker accepts a connection (the bot sends to it, workers consume from it)."""
    app = make_app(settings)
    url = settings.celery_broker_url
    shown = f"{url} ({settings.broker_folder})" if url == "filesystem://" else hide_password(url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - any transport error means "cannot reach it"
        raise Unhealthy(f"broker unreachable ({shown}): {type(exc).__name__}: {exc}") from exc
    return f"broker {shown}"


def check_backend(settings: Settings, timeout_s: float = 3.0) -> str:
    """The Celery result backend answers (a database it can open, a Redis that pings)."""
    url = settings.celery_result_backend
    shown = hide_password(url)
    try:
        if url.startswith("db+"):
            from sqlalchemy import text

            with db.engine_for(url[3:]).connect() as conn:
                conn.execute(text("SELECT 1"))
        elif url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(
                url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
            )
            try:
                client.ping()
            finally:
                client.close()
        # rpc:// keeps results on the broker, checked by check_broker
    except Exception as exc:  # noqa: BLE001 - any error means "cannot reach it"
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        raise Unhealthy(
            f"result backend unreachable ({shown}): {type(exc).__name__}: {reason}"
        ) from exc
    return f"result backend {shown}"


def host_of(worker_hostname: str) -> str:
    """The machine part of a presence row's name: `motif-gpu-train-7@abc123` -> `abc123`."""
    host = worker_hostname.rsplit("@", 1)[-1]
    return host.split(":", 1)[0]


def check_presence(settings: Settings, hostname: str | None = None) -> str:
    """A worker on this host refreshed its row in `workers` within a few heartbeats."""
    from sqlalchemy import select

    host = hostname or socket.gethostname()
    limit = timedelta(seconds=settings.worker_heartbeat_s * ALIVE_HEARTBEATS)
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            rows = [
                (w.hostname, w.last_seen)
                for w in session.scalars(select(Worker))
                if host_of(w.hostname) in (host, host.split(".", 1)[0])
            ]
    except MotifError as exc:
        raise Unhealthy(exc.user_message) from exc
    if not rows:
        raise Unhealthy(f"no worker row for host {host} (starting, stopped or never registered)")
    name, last_seen = max(rows, key=lambda r: r[1])
    age = (utcnow() - _aware(last_seen)).total_seconds()
    if age > limit.total_seconds():
        raise Unhealthy(
            f"worker {name} last beat {age:.0f} s ago (limit {limit.total_seconds():.0f} s)"
        )
    return f"worker {name} beat {age:.1f} s ago"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def health(settings: Settings, role: Role) -> int:
    """Run the checks for `role`, print one line, return the exit status (0 healthy, 1 not)."""
    if role not in ROLES:
        print(f"unhealthy: unknown role {role!r} (one of {', '.join(ROLES)})")
        return 1
    try:
        parts = [check_schema(settings)]
        if role in ("bot", "worker"):
            parts.append(check_broker(settings))
        if role == "worker":
            parts.append(check_presence(settings))
    except Unhealthy as exc:
        print(f"unhealthy ({role}): {exc}")
        return 1
    print(f"healthy ({role}): " + "; ".join(parts))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="motif health", description=__doc__)
    p.add_argument("role", choices=ROLES, help="which process this container runs")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # one line of output, nothing else
    try:
        settings = get_settings()
    except Exception as exc:  # noqa: BLE001 - a bad setting is a reason, not a traceback
        print(f"unhealthy ({args.role}): {bad_setting_line(exc)}")
        return 1
    return health(settings, args.role)


if __name__ == "__main__":
    sys.exit(main())
