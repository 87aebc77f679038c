"""What an attacker in a server can try, through the real bot and the fake Discord: pasted ABC
at the cap, a slow Cancel, a forged button id, a bot's message claimed through Share, seeds
parsed on their own threads, and pasted ABC scanned after the deferral, off the event loop."""

from __future__ import annotations

import asyncio
import threading

import discord
import pytest
from sqlalchemy import select

from bot.views import ShareConsentButton, result_view
from engine.music import notation
from engine.music.parsers import ParserPool
from engine.store.db import session_scope
from engine.store.records import Request, Tune
from tests.bot.conftest import (
    discord_harness,
    midi_bytes,
    mock_interaction,
    queued,
    until,
)
from tests.bot.fake_discord import CHANNEL_ID, user_payload
from tests.bot.test_discord_flows import EPHEMERAL, ORIGINAL, answer_text

music21 = pytest.importorskip("music21")

JIG = "X:1 T:Jig M:6/8 L:1/8 K:Em B|EFG BAG|FGA B2B|EFG BAG|FDF E2:|"


@pytest.fixture
def parsers(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    pool = ParserPool()
    monkeypatch.setattr(notation, "PARSERS", pool)
    yield pool
    pool.close()


def test_pasted_abc_at_the_cap_is_refused_before_any_parse(bot_settings, jobs, dispatched, parsers):
    settings = bot_settings.model_copy(update={"user_max_concurrent": 1})
    jobs.settings = settings

    async def scenario() -> None:
        async with discord_harness(settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {"abc": JIG}))
            await queued(jobs, dispatched)
            assert parsers.parses == 1
            second = h.payloads.slash("compose", {"abc": JIG})
            h.inject(second)
            flags, text = await answer_text(h.fake, second)
            assert flags == EPHEMERAL and "in progress" in text
            assert parsers.parses == 1  # refused by one query, not a parse
            assert len(dispatched) == 1

    asyncio.run(scenario())


def test_seeds_are_read_on_the_seed_threads_not_the_default_executor(
    bot_settings, jobs, dispatched, parsers, monkeypatch
):
    threads: list[str] = []
    compose = jobs.compose

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return compose(*args, **kwargs)

    monkeypatch.setattr(jobs, "compose", recorded)

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {"abc": JIG}))
            await queued(jobs, dispatched)
            h.inject(h.payloads.slash("compose", {}))  # no seed: nothing to parse
            await queued(jobs, dispatched, 2)

    asyncio.run(scenario())
    assert threads[0].startswith("motif-seed") and not threads[1].startswith("motif-seed")


def test_pasted_abc_is_scanned_after_the_deferral_off_the_event_loop(
    bot_settings, jobs, monkeypatch
):
    from bot.client import MotifBot
    from bot.cogs import compose as compose_cog

    seen: list[tuple[bool, bool]] = []
    scan = compose_cog.pasted_abc
    bot = MotifBot(bot_settings, jobs)
    cog = compose_cog.Compose(bot)
    interaction = mock_interaction(bot)

    def recorded(text: str) -> bytes:
        seen.append((interaction.response.is_done(), threading.current_thread() is main))
        return scan(text)

    main = threading.current_thread()
    monkeypatch.setattr(compose_cog, "pasted_abc", recorded)
    monkeypatch.setattr(jobs, "compose", lambda *args: 1)

    async def scenario() -> None:
        await cog.compose.callback(cog, interaction, abc="x" + " " * 5990 + "K:C")

    asyncio.run(scenario())
    assert seen == [(True, False)]
    bot.seed_threads.close()


def test_cancel_answers_before_its_database_work(bot_settings, jobs, dispatched, monkeypatch):
    answered: list[int] = []
    cancel = jobs.cancel

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {"bars": 2}))
            (rid,) = await queued(jobs, dispatched)
            (first,) = await h.fake.wait_for("PATCH", ORIGINAL)
            message = next(iter(h.fake.originals.values()))
            press = h.payloads.button(f"motif:cancel:{rid}", message)

            def slow_database(*args):  # type: ignore[no-untyped-def]
                # what Discord had received from the bot for this press when the DB was asked
                answered.append(len(h.fake.find("POST", rf"/interactions/{press['id']}/.*")))
                return cancel(*args)

            monkeypatch.setattr(jobs, "cancel", slow_database)
            h.inject(press)
            flags, text = await answer_text(h.fake, press)
            assert flags == EPHEMERAL and text == f"Request #{rid} is cancelled."

    asyncio.run(scenario())
    assert answered == [1]  # the deferral went out first


def test_a_forged_reroll_of_someone_elses_dm_request_is_refused(bot_settings, jobs, dispatched):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment("private.mid", midi_bytes())
            h.inject(h.payloads.slash("compose", {"seed": seed}, user_id=41, guild_id=None))
            (ann,) = await queued(jobs, dispatched)
            # Bob, in a server channel, sends a component interaction with Ann's request id
            decoy = h.fake.message(CHANNEL_ID, {"components": result_view(ann).to_components()}, [])
            forged = h.payloads.button(f"motif:reroll:{ann}", decoy, user_id=43)
            h.inject(forged)
            flags, text = await answer_text(h.fake, forged)
            assert flags == EPHEMERAL and f"#{ann} does not exist" in text
            vary = h.payloads.button(f"motif:vary:hi:{ann}", decoy, user_id=43)
            h.inject(vary)
            assert f"#{ann} does not exist" in (await answer_text(h.fake, vary))[1]
            rate = h.payloads.button(f"motif:rate:up:{ann}", decoy, user_id=43)
            h.inject(rate)
            assert f"#{ann} does not exist" in (await answer_text(h.fake, rate))[1]
            assert dispatched == [ann]
            # Ann herself, in her DM, still rerolls
            mine = h.payloads.button(f"motif:reroll:{ann}", decoy, user_id=41)
            mine["channel_id"] = str(h.payloads.channel_of(None, 41))
            mine["channel"] = h.payloads.channel(None, 41)
            h.inject(mine)
            await queued(jobs, dispatched, 2)

    asyncio.run(scenario())


def test_a_bots_message_seed_cannot_be_claimed_with_share(bot_settings, jobs, dispatched, worker):
    """ "Continue this MIDI" on a bridge's message: the seed belongs to nobody, and the presser
    cannot make it theirs by sharing (was: claimed and shared)."""

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            attachment = h.payloads.attachment("bridged.mid", midi_bytes())
            target = h.payloads.user_message("from the bridge", [attachment], author_id=99)
            target["author"] = user_payload(99, "bridge", bot=True)
            h.inject(h.payloads.message_command("Continue this MIDI", target, user_id=42))
            (rid,) = await queued(jobs, dispatched)
            worker.complete(rid)
            await h.fake.wait_for("POST", r"/webhooks/\d+/[\w-]+")
            consent = discord.ui.View(timeout=None)
            consent.add_item(ShareConsentButton(rid))
            question = h.fake.message(CHANNEL_ID, {"components": consent.to_components()}, [])
            press = h.payloads.button(f"motif:consent:{rid}", question, user_id=42)
            h.inject(press)
            flags, text = await answer_text(h.fake, press)
            assert "nothing of yours" in text

    asyncio.run(scenario())
    with session_scope(bot_settings.sqlalchemy_url) as s:
        seed = s.get(Tune, s.get(Request, 1).seed_tune_id)
        assert seed.owner_id is None and not seed.consent


# --- the same findings by direct callback calls (layer 1) --------------------------------------
def test_cancel_callback_defers_before_the_database(bot_settings, jobs, monkeypatch):
    from bot.client import MotifBot
    from bot.views import CancelButton
    from engine.service.requests import Requester, validate_options

    bot = MotifBot(bot_settings, jobs, sync_on_start=False)
    rid = jobs.compose(Requester(discord_id=42), validate_options(bars=2))
    interaction = mock_interaction(bot, user_id=42)
    seen: list[bool] = []
    cancel = jobs.cancel

    def recorded(*args):  # type: ignore[no-untyped-def]
        seen.append(interaction.response.is_done())
        return cancel(*args)

    monkeypatch.setattr(jobs, "cancel", recorded)
    asyncio.run(CancelButton(rid).callback(interaction))
    interaction.response.defer.assert_awaited_once_with(ephemeral=True, thinking=True)
    assert seen == [True]
    text = interaction.edit_original_response.await_args.kwargs["content"]
    assert text == f"Request #{rid} is cancelled."
    bot.seed_threads.close()


def test_follow_up_callbacks_refuse_a_request_the_clicker_cannot_see(bot_settings, jobs):
    from bot.client import MotifBot
    from bot.views import FollowUpButton, VariationButton
    from engine.service.requests import Requester, validate_options
    from engine.store.records import RequestKind

    bot = MotifBot(bot_settings, jobs, sync_on_start=False)
    # Ann's request, made in a DM channel (9001)
    ann = jobs.compose(Requester(discord_id=41, channel_id=9001), validate_options(bars=2))
    for button in (FollowUpButton(ann, RequestKind.REROLL), VariationButton(ann, "hi")):
        bob = mock_interaction(bot, user_id=43)  # in the server's channel
        asyncio.run(button.callback(bob))
        text = bob.followup.send.await_args.args[0]
        assert f"#{ann} does not exist" in text
    with session_scope(bot_settings.sqlalchemy_url) as s:
        assert list(s.scalars(select(Request.id))) == [ann]
    bot.seed_threads.close()


def test_seed_threads_answer_busy_when_all_are_taken():
    from bot.seeds import SeedThreads
    from engine.music.parsers import ParserBusy

    threads = SeedThreads(threads=1)
    release = threading.Event()

    async def scenario() -> None:
        first = asyncio.create_task(threads.run(release.wait, 10))
        await until(lambda: threads.in_flight == 1)
        with pytest.raises(ParserBusy):
            await threads.run(len, "x")
        release.set()
        assert await first is True
        assert await threads.run(len, "abc") == 3  # free again

    asyncio.run(scenario())
    threads.close()
