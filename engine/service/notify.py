"""Wake-ups when a request changes state: the worker publishes the request's id after each task,
and the bot's delivery loop wakes at once instead of at its next SQL poll.

Redis pub/sub where the broker is Redis, else Postgres LISTEN/NOTIFY where the database is
Postgres; SQLite with the `filesystem://` broker has neither, and the bot keeps polling (a short
interval: one indexed read). A lost wake-up costs one poll interval, never a result: SQL stays
the source of truth and the poll stays on as the fallback.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from engine.store.db import engine_for

if TYPE_CHECKING:
    from engine.settings import Settings

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "motif_requests_"
Kind = Literal["redis", "postgres"]
_RECONNECT_S = (0.5, 1.0, 2.0, 5.0)  # back-off between listener reconnections, then 5 s each


def channel_kind(settings: Settings) -> Kind | None:
    """Which notification channel this deployment has (None: SQLite + filesystem broker)."""
    if settings.celery_broker_url.startswith(("redis://", "rediss://")):
        return "redis"
    if settings.sqlalchemy_url.startswith("postgresql"):
        return "postgres"
    return None


def channel_name(settings: Settings) -> str:
    """One channel per Motif database: deployments that share a Redis server (pub/sub ignores
    database numbers) or a Postgres server never wake each other's bots."""
    digest = hashlib.sha1(settings.sqlalchemy_url.encode()).hexdigest()[:12]
    return CHANNEL_PREFIX + digest  # a valid Postgres identifier, well under 63 characters


def _postgres_conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


_redis_clients: dict[str, Any] = {}
_lock = threading.Lock()
os.register_at_fork(after_in_child=_redis_clients.clear)  # a child opens its own connection


def publish_request_changed(
    settings: Settings, request_ids: Iterable[int], *, channel: str | None = None
) -> None:
    """Tell listening bots that these requests changed state (call after the change commits).
    Never raises: without the wake-up the bot's poll finds the change a little later."""
    ids = [int(i) for i in request_ids]
    kind = channel_kind(settings)
    channel = channel or channel_name(settings)
    if not ids or kind is None:
        return
    try:
        if kind == "redis":
            import redis

            url = settings.celery_broker_url
            with _lock:
                client = _redis_clients.get(url)
                if client is None:
                    client = _redis_clients[url] = redis.Redis.from_url(
                        url, socket_timeout=2, socket_connect_timeout=2
                    )
            for request_id in ids:
                client.publish(channel, str(request_id))
        else:
            from sqlalchemy import text

            with engine_for(settings.sqlalchemy_url).begin() as conn:
                for request_id in ids:  # delivered when this transaction commits
                    conn.execute(
                        text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": str(request_id)}
                    )
    except Exception as exc:  # noqa: BLE001 - a wake-up is an optimisation, the poll remains
        log.warning("could not publish a wake-up for %s over %s: %s", ids, kind, exc)


class RequestWakeups:
    """The bot's listener: `watch` a request, then `wait` returns as soon as its id is published
    (or after the timeout: the caller polls SQL either way). One background task per bot."""

    def __init__(self, settings: Settings, *, channel: str | None = None) -> None:
        self.settings = settings
        self.kind = channel_kind(settings)
        self.channel = channel or channel_name(settings)
        self._events: dict[int, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # set while the listener is subscribed
        self.received = 0

    @property
    def available(self) -> bool:
        return self.kind is not None

    def start(self) -> None:
        if self.kind is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._listen_forever(), name="motif-wakeups"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.connected.clear()

    def watch(self, request_id: int) -> None:
        """Start remembering wake-ups for this request (before its first poll, so that one
        published between a poll and the wait is not lost)."""
        self._events.setdefault(request_id, asyncio.Event())

    def unwatch(self, request_id: int) -> None:
        self._events.pop(request_id, None)

    async def wait(self, request_id: int, timeout_s: float) -> bool:
        """True when woken for this request, False after `timeout_s` without a wake-up."""
        event = self._events.setdefault(request_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        event.clear()
        return True

    def _wake(self, payload: bytes | str) -> None:
        try:
            request_id = int(payload)
        except (TypeError, ValueError):
            return  # not ours
        self.received += 1
        event = self._events.get(request_id)
        if event is not None:
            event.set()

    async def _listen_forever(self) -> None:
        attempt = 0
        while True:
            try:
                if self.kind == "redis":
                    await self._listen_redis()
                else:
                    await self._listen_postgres()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; the poll covers the gap
                self.connected.clear()
                delay = _RECONNECT_S[min(attempt, len(_RECONNECT_S) - 1)]
                attempt += 1
                log.warning(
                    "wake-up listener (%s) lost: %s; retrying in %.1f s", self.kind, exc, delay
                )
                await asyncio.sleep(delay)

    async def _listen_redis(self) -> None:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.settings.celery_broker_url)
        try:
            pubsub = client.pubsub()
            await pubsub.subscribe(self.channel)
            self.connected.set()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    self._wake(message["data"])
        finally:
            self.connected.clear()
            await client.aclose()

    async def _listen_postgres(self) -> None:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            _postgres_conninfo(self.settings.sqlalchemy_url), autocommit=True
        )
        try:
            await conn.execute(f"LISTEN {self.channel}")  # a hex-suffixed name: no quoting needed
            self.connected.set()
            async for notice in conn.notifies():
                self._wake(notice.payload)
        finally:
            self.connected.clear()
            await conn.close()
