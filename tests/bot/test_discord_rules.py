"""The review's findings, each through the stricter fake Discord: 3-second first responses,
15-minute tokens, 429s on edits, 2,000 characters, upload limits, custom ids, allowed mentions,
DMs and a second guild (`tests/bot/fake_discord.py`)."""

from __future__ import annotations

import asyncio
import threading
import time

import discord

from bot.views import ShareConsentButton, result_view
from engine import db
from engine.db import session_scope
from engine.jobs import JobService, Requester, validate_options
from engine.records import ModelStatus, ModelVersion
from tests.bot.conftest import discord_harness, midi_bytes
from tests.bot.fake_discord import CHANNEL_ID, FIRST_RESPONSE_S, GUILD_ID
from tests.conftest import make_settings

ORIGINAL = r"/webhooks/\d+/[\w-]+/messages/@original"
FOLLOWUP = r"/webhooks/\d+/[\w-]+"
CALLBACK = r"/interactions/\d+/[\w-]+/callback"
MANAGE = discord.Permissions(manage_guild=True).value
LOCKED_TABLES = "users, requests, tunes, feedback, workers, audit_log, models"


def hold_tables(url: str, seconds: float, locked: threading.Event) -> threading.Thread:
    """Another client locks Motif's tables (reads included) for a while: a slow database."""
    from sqlalchemy import create_engine, text

    def run() -> None:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text(f"LOCK TABLE {LOCKED_TABLES} IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            time.sleep(seconds)
            conn.rollback()
        engine.dispose()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_handlers_acknowledge_before_a_slow_database(tmp_path, own_pg_url):
    """With the database stuck for 4 s, every handler that reads or writes it still answers
    Discord within 3 s (deferred first), and its real answer follows."""
    settings = make_settings(
        tmp_path,
        database_url=own_pg_url,
        dev_guild_id=GUILD_ID,
        home_guild_id=GUILD_ID,
        progress_edit_interval_s=0.5,
    )
    db.upgrade(settings.sqlalchemy_url)
    jobs = JobService(settings, dispatch=lambda _: None)
    rid = jobs.compose(
        Requester(discord_id=42, guild_id=GUILD_ID), validate_options(), midi_bytes()
    )
    with session_scope(settings.sqlalchemy_url) as s:
        s.add(ModelVersion(version="v1", checkpoint_key="k", status=ModelStatus.ACTIVE))

    async def scenario() -> None:
        async with discord_harness(settings, jobs, sweep_interval_s=30) as h:
            p = h.payloads
            consent = discord.ui.View(timeout=None)
            consent.add_item(ShareConsentButton(rid))
            result, question = (
                h.fake.message(CHANNEL_ID, {"content": "…", "components": v.to_components()}, [])
                for v in (result_view(rid), consent)
            )
            interactions = [
                p.slash("history"),
                p.slash("status"),
                p.slash("forget", user_id=43),
                p.slash("share-default", {"enabled": True}, user_id=44),
                p.slash("stats", permissions=MANAGE),
                p.button(f"motif:rate:up:{rid}", result),
                p.button(f"motif:consent:{rid}", question),
            ]
            locked = threading.Event()
            holder = hold_tables(own_pg_url, 4.0, locked)
            assert await asyncio.to_thread(locked.wait, 10)
            started = time.monotonic()
            for payload in interactions:
                h.inject(payload)
            callbacks = await h.fake.wait_for("POST", CALLBACK, count=len(interactions))
            assert all(c.status == 200 for c in callbacks), [c.status for c in callbacks]
            assert max(c.at for c in callbacks) - started < FIRST_RESPONSE_S
            await asyncio.to_thread(holder.join, 10)
            # then the answers, in the acknowledged responses
            answers = await h.fake.wait_for("PATCH", ORIGINAL, count=len(interactions), timeout=20)
            assert all(a.status == 200 for a in answers)

    asyncio.run(scenario())
