"""The request limits hold under real concurrency, on SQLite and on Postgres.

Threads submit at the same moment (a barrier); the dispatch waits a little inside the
transaction, as a broker round trip does, which is where check-then-insert used to race.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select

from engine.errors import QueueFull, RateLimited
from engine.service.requests import JobService, Requester, validate_options
from engine.settings import Settings
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import Request
from tests.conftest import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
def limit_settings(request: pytest.FixtureRequest, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    overrides: dict[str, object] = {"user_max_concurrent": 2, "guild_max_open": 3}
    if request.param == "postgres":
        overrides["database_url"] = request.getfixturevalue("pg_url")
    s = make_settings(tmp_path, **overrides)
    db.upgrade(s.sqlalchemy_url)
    return s


def submit_together(settings: Settings, requesters: list[Requester]) -> tuple[int, list[str]]:
    def slow_dispatch(request_id: int) -> None:
        time.sleep(0.2)  # a broker round trip inside the transaction

    service = JobService(settings, dispatch=slow_dispatch)
    for who in {r.discord_id: r for r in requesters}.values():
        service.history(who)  # the user rows exist: only the limits race
    barrier = threading.Barrier(len(requesters))
    accepted: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def one(who: Requester) -> None:
        barrier.wait()
        try:
            rid = service.compose(who, validate_options(bars=2))
        except (RateLimited, QueueFull) as exc:
            with lock:
                refused.append(exc.user_message)
        else:
            with lock:
                accepted.append(rid)

    threads = [threading.Thread(target=one, args=(who,)) for who in requesters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return len(accepted), refused


def open_rows(settings: Settings) -> int:
    with session_scope(settings.sqlalchemy_url) as s:
        return s.scalar(select(func.count(Request.id))) or 0


def test_concurrent_requests_of_one_user_respect_the_cap(limit_settings):
    who = Requester(discord_id=42, name="ann", guild_id=1, channel_id=2, origin="slash")
    accepted, refused = submit_together(limit_settings, [who] * 6)
    assert accepted == 2 and len(refused) == 4
    assert all("limit 2" in text for text in refused)
    assert open_rows(limit_settings) == 2


def test_concurrent_requests_of_one_guild_respect_its_cap(limit_settings):
    members = [Requester(discord_id=100 + i, guild_id=7, channel_id=2) for i in range(6)]
    accepted, refused = submit_together(limit_settings, members)
    assert accepted == 3 and len(refused) == 3
    assert all("This server already has 3" in text for text in refused)
    # another guild is not held up by this one's flood
    other = JobService(limit_settings, dispatch=lambda _: None)
    other.compose(Requester(discord_id=200, guild_id=8, channel_id=3), validate_options(bars=2))
    assert open_rows(limit_settings) == 4
