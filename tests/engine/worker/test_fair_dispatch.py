"""A GPU worker drains waiting requests into its batch fairly between guilds, not strictly FIFO."""

from __future__ import annotations

from engine.service.requests import JobService, Requester, validate_options
from engine.worker.claims import claim_for_generation, drain_queued
from tests.conftest import make_settings


def test_fair_order_takes_turns_between_guilds_oldest_first():
    from engine.worker.claims import fair_order

    waiting = [(1, 10), (2, 10), (3, 10), (4, 10), (5, 20), (6, None), (7, 20)]
    assert fair_order(waiting) == [1, 5, 6, 2, 7, 3, 4]
    # guild 10 already has a request in the batch: the others go first
    assert fair_order(waiting, taken=[10]) == [5, 6, 1, 7, 2, 3, 4]
    assert fair_order([]) == []


def test_one_guilds_flood_does_not_fill_the_batch(tmp_path):
    from engine.store import db

    settings = make_settings(tmp_path, user_rate_per_min=100, user_max_concurrent=100)
    db.upgrade(settings.sqlalchemy_url)
    service = JobService(settings, dispatch=lambda _: None)

    def ask(user: int, guild: int) -> int:
        return service.compose(Requester(discord_id=user, guild_id=guild), validate_options())

    flood = [ask(1, 10) for _ in range(8)]  # one guild fills the queue first...
    late = [ask(2, 20), ask(3, 30)]  # ...then two other guilds ask once each
    assert claim_for_generation(flood[0], settings)  # the message the worker got
    batch = [c.request_id for c in drain_queued(settings, 3, {flood[0]})]
    assert set(late) <= set(batch)
    assert batch == [late[0], late[1], flood[1]]
