"""The bot's delivery is woken by the worker (Redis pub/sub here, real Redis) instead of waiting
for its next SQL poll; and the worker's Celery signal publishes after each task."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from engine.queue.app import TASK_GENERATE, TASK_RENDER
from engine.service.notify import channel_name, publish_request_changed
from engine.service.requests import JobService
from tests.bot.conftest import SimulatedWorker, discord_harness, midi_bytes, queued, until
from tests.conftest import REDIS_URL, port_open

FOLLOWUP = r"/webhooks/\d+/[\w-]+"


@pytest.fixture
def redis_settings(bot_settings):  # type: ignore[no-untyped-def]
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    # pub/sub only (the channel is named after this test's own SQLite file); no key is written
    return bot_settings.model_copy(update={"broker_url": REDIS_URL})


def test_a_finished_request_is_posted_at_the_wake_up_not_the_next_poll(redis_settings):
    dispatched: list[int] = []
    jobs = JobService(redis_settings, dispatch=dispatched.append)
    worker = SimulatedWorker(redis_settings)

    async def scenario() -> None:
        # a poll every 30 s: only the wake-up can deliver within the few seconds allowed
        async with discord_harness(redis_settings, jobs, poll_interval_s=30.0) as h:
            wakeups = h.bot.deliveries.wakeups
            assert wakeups is not None and wakeups.kind == "redis"
            await asyncio.wait_for(wakeups.connected.wait(), 20)
            seed = h.payloads.attachment("ode.mid", midi_bytes())
            h.inject(h.payloads.slash("compose", {"seed": seed, "bars": 2, "rng_seed": 3}))
            (rid,) = await queued(jobs, dispatched)
            await until(lambda: rid in h.bot.deliveries._watching)  # its first poll is done
            await asyncio.to_thread(worker.complete, rid)
            t0 = time.monotonic()
            await asyncio.to_thread(publish_request_changed, redis_settings, [rid])
            (result,) = await h.fake.wait_for("POST", FOLLOWUP, timeout=8)
            assert time.monotonic() - t0 < 8 and len(result.filenames) == 5

    asyncio.run(scenario())


def test_sqlite_bots_poll_often_and_woken_bots_rarely(bot_settings, redis_settings):
    from bot.client import POLL_SQLITE_S, POLL_WITH_WAKEUPS_S, MotifBot

    sqlite_bot = MotifBot(bot_settings, JobService(bot_settings, dispatch=lambda _: None))
    assert sqlite_bot.deliveries.wakeups is None
    assert sqlite_bot.deliveries.poll_interval_s == POLL_SQLITE_S <= 0.2
    redis_bot = MotifBot(redis_settings, JobService(redis_settings, dispatch=lambda _: None))
    assert redis_bot.deliveries.wakeups is not None
    assert redis_bot.deliveries.poll_interval_s == POLL_WITH_WAKEUPS_S


def test_the_worker_publishes_after_generate_and_render(redis_settings, monkeypatch):
    import redis

    import engine.worker.signals

    monkeypatch.setattr(engine.worker.signals, "get_settings", lambda: redis_settings)
    client = redis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    pubsub.subscribe(channel_name(redis_settings))
    pubsub.get_message(timeout=5)  # the subscription's confirmation
    # a generate task that batched requests 4 and 5, then request 4's render
    engine.worker.signals._wake_the_bot(
        task=SimpleNamespace(name=TASK_GENERATE), args=(4,), retval=[4, 5]
    )
    engine.worker.signals._wake_the_bot(
        task=SimpleNamespace(name=TASK_RENDER), args=(4,), retval=True
    )
    engine.worker.signals._wake_the_bot(
        task=SimpleNamespace(name="motif.other"), args=(9,), retval=None
    )
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 3 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message and message["type"] == "message":
            got.append(int(message["data"]))
    assert sorted(got) == [4, 4, 5]
    assert pubsub.get_message(timeout=0.3) is None  # nothing for the other task
    pubsub.close()
    client.close()
