"""Wake-ups from workers to bots over the real Redis and PostgreSQL (no mocks): each test uses a
channel of its own, so it reads and writes nothing anybody else uses."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from engine.service.notify import (
    RequestWakeups,
    channel_kind,
    channel_name,
    publish_request_changed,
)
from tests.conftest import PG_URL, REDIS_URL, make_settings, port_open


def unique_channel() -> str:
    return f"motif_requests_test{uuid.uuid4().hex[:12]}"


def test_each_deployment_has_its_own_channel(tmp_path):
    sqlite = make_settings(tmp_path)
    assert channel_kind(sqlite) is None  # SQLite + filesystem broker: the bot polls
    assert channel_kind(make_settings(tmp_path, broker_url=REDIS_URL)) == "redis"
    assert channel_kind(make_settings(tmp_path, database_url=PG_URL)) == "postgres"
    assert channel_kind(make_settings(tmp_path, database_url=PG_URL, broker_url=REDIS_URL)) == (
        "redis"
    )
    other = make_settings(tmp_path / "other")
    assert channel_name(sqlite) != channel_name(other)
    assert channel_name(sqlite) == channel_name(make_settings(tmp_path))  # bot and worker agree
    publish_request_changed(sqlite, [1])  # no channel: nothing to do, nothing raised


async def _round_trip(settings, channel: str) -> None:
    wakeups = RequestWakeups(settings, channel=channel)
    assert wakeups.available
    wakeups.start()
    try:
        await asyncio.wait_for(wakeups.connected.wait(), 20)
        wakeups.watch(7)
        # published before anybody waits: remembered for the wait that follows
        await asyncio.to_thread(publish_request_changed, settings, [7], channel=channel)
        t0 = time.monotonic()
        assert await wakeups.wait(7, 10.0) is True
        assert time.monotonic() - t0 < 5.0
        # and while waiting; another request's wake-up and foreign payloads wake nobody else
        waiter = asyncio.create_task(wakeups.wait(7, 10.0))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(publish_request_changed, settings, [8, 7], channel=channel)
        assert await waiter is True
        assert await wakeups.wait(7, 0.2) is False  # consumed
        assert await wakeups.wait(9, 0.2) is False
    finally:
        await wakeups.stop()
    assert not wakeups.connected.is_set()


def test_redis_wakes_the_waiting_request(tmp_path):
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    settings = make_settings(tmp_path, broker_url=REDIS_URL)
    asyncio.run(_round_trip(settings, unique_channel()))


def test_postgres_notify_wakes_the_waiting_request(tmp_path):
    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    settings = make_settings(tmp_path, database_url=PG_URL)
    asyncio.run(_round_trip(settings, unique_channel()))


def test_an_unreachable_channel_costs_a_warning_not_a_failure(tmp_path, caplog):
    dead = make_settings(tmp_path, broker_url="redis://127.0.0.1:1/0")  # nothing listens on 1
    with caplog.at_level(logging.WARNING, logger="engine.service.notify"):
        publish_request_changed(dead, [3])
    assert "could not publish a wake-up" in caplog.text

    async def listener_retries() -> None:
        wakeups = RequestWakeups(dead)
        wakeups.start()
        wakeups.watch(3)
        assert await wakeups.wait(3, 0.3) is False  # the caller's poll carries on
        await wakeups.stop()

    asyncio.run(listener_retries())
