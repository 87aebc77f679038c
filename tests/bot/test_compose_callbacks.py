"""Layer 1: command callbacks called directly with mocked interactions and real attachments."""

from __future__ import annotations

import asyncio
import logging

import discord
import pytest
from discord import app_commands

from bot.client import MotifBot
from bot.cogs.compose import Compose
from bot.cogs.info import Info
from bot.errors import answer_error
from engine.errors import BadMidi, BadParams, RateLimited
from engine.store.records import RequestStatus
from tests.bot.conftest import midi_bytes, mock_interaction, real_attachment, until


def make_bot(settings, jobs) -> MotifBot:  # type: ignore[no-untyped-def]
    return MotifBot(settings, jobs, poll_interval_s=0.02, sync_on_start=False)


def test_compose_with_a_seed_defers_downloads_records_and_shows_progress(bot_settings, jobs):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        it = mock_interaction(bot)
        seed, download = real_attachment("ode.mid", midi_bytes())
        await cog.compose.callback(
            cog, it, seed=seed, style="folk", bars=4, temperature=0.8, instrument="flute"
        )
        it.response.defer.assert_awaited_once_with(thinking=True)
        download.assert_awaited_once_with(seed.url)
        request_id = it.extras["request_id"]
        progress = jobs.progress(request_id)
        assert progress.status is RequestStatus.QUEUED
        assert progress.seed_name == "ode.mid"
        assert progress.params["bars"] == 4 and progress.params["style"] == "folk"
        assert progress.params["instrument"] == 73 and progress.params["temperature"] == 0.8
        assert progress.user_discord_id == 42 and progress.channel_id == it.channel_id
        await until(lambda: it.edit_original_response.await_count)
        text = it.edit_original_response.await_args.kwargs["content"]
        assert f"#{request_id}" in text and "queue" in text
        await bot.deliveries.stop()

    asyncio.run(scenario())


def test_compose_from_a_bar_of_a_whole_song(bot_settings, jobs):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        it = mock_interaction(bot)
        seed, _ = real_attachment("song.mid", midi_bytes(n_notes=32))  # 4 bars of eighths
        await cog.compose.callback(cog, it, seed=seed, from_bar=3)
        progress = jobs.progress(it.extras["request_id"])
        assert progress.params["from_bar"] == 3
        assert progress.notes["from_bar"].startswith("The seed is bars 1-2;")
        await bot.deliveries.stop()

    asyncio.run(scenario())


def test_compose_asks_for_an_open_ending(bot_settings, jobs):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        it = mock_interaction(bot)
        await cog.compose.callback(cog, it, rng_seed=3, ending="open")
        assert jobs.progress(it.extras["request_id"]).params["ending"] == "open"
        await bot.deliveries.stop()

    asyncio.run(scenario())


def test_compose_without_a_seed_starts_from_scratch(bot_settings, jobs, dispatched):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        it = mock_interaction(bot)
        await cog.compose.callback(cog, it, rng_seed=7)
        assert dispatched == [it.extras["request_id"]]
        progress = jobs.progress(dispatched[0])
        assert progress.seed_name is None and progress.params["rng_seed"] == 7
        await bot.deliveries.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "filename, size, expected",
    [
        ("song.mp3", 1000, "not a seed Motif can read"),
        ("huge.mid", 5 * 1024 * 1024, "the limit for a seed is 1 MiB"),
    ],
)
def test_unusable_attachments_are_refused_before_deferring(
    bot_settings, jobs, dispatched, filename, size, expected
):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        it = mock_interaction(bot)
        seed, download = real_attachment(filename, b"x", size=size)
        with pytest.raises(BadMidi) as caught:
            await cog.compose.callback(cog, it, seed=seed)
        await answer_error(it, app_commands.CommandInvokeError(cog.compose, caught.value))
        it.response.defer.assert_not_awaited()
        download.assert_not_awaited()  # never downloaded
        args, kwargs = it.response.send_message.await_args
        assert expected in args[0] and kwargs["ephemeral"] is True
        assert dispatched == []

    asyncio.run(scenario())


def test_a_corrupt_midi_file_gets_an_ephemeral_answer_after_the_deferral(bot_settings, jobs):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        it = mock_interaction(bot)
        seed, _ = real_attachment("broken.mid", b"MThd\x00\x00\x00\x06garbage")
        with pytest.raises(BadMidi) as caught:
            await cog.compose.callback(cog, it, seed=seed)
        await answer_error(it, app_commands.CommandInvokeError(cog.compose, caught.value))
        it.delete_original_response.assert_awaited_once()  # the public "thinking…" goes away
        args, kwargs = it.followup.send.await_args
        assert "not a valid MIDI file" in args[0] and kwargs["ephemeral"] is True

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"bars": 0}, "bars"),
        ({"temperature": 5.0}, "temperature"),
        ({"tempo": 1.0}, "tempo"),
        ({"from_bar": 1}, "from_bar"),
    ],
)
def test_options_are_validated_server_side(bot_settings, jobs, options, expected):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        it = mock_interaction(bot)
        with pytest.raises(BadParams, match=expected):
            await cog.compose.callback(cog, it, **options)
        it.response.defer.assert_not_awaited()

    asyncio.run(scenario())


def test_rate_limit_refusal_says_when_to_try_again(bot_settings, jobs):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        for _ in range(bot_settings.user_max_concurrent):
            await cog.compose.callback(cog, mock_interaction(bot))
        it = mock_interaction(bot)
        with pytest.raises(RateLimited) as caught:
            await cog.compose.callback(cog, it)
        await answer_error(it, app_commands.CommandInvokeError(cog.compose, caught.value))
        text = it.followup.send.await_args.args[0]
        assert "try again" in text and "<t:" in text  # a live countdown in the user's client
        await bot.deliveries.stop()

    asyncio.run(scenario())


def test_unexpected_errors_are_logged_with_an_id_the_apology_repeats(bot_settings, jobs, caplog):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        it = mock_interaction(bot)
        it.extras["request_id"] = 99
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            await answer_error(it, app_commands.CommandInvokeError(Info(bot).status, exc))
        return it.response.send_message.await_args

    with caplog.at_level(logging.ERROR, logger="bot.errors"):
        args, kwargs = asyncio.run(scenario())
    record = next(r for r in caplog.records if r.name == "bot.errors")
    assert record.exc_info and "boom" in str(record.exc_info[1])
    error_id = record.args[0]
    assert error_id in args[0] and "request #99" in args[0] and kwargs["ephemeral"] is True
    assert "99" in record.getMessage()


def test_context_menu_on_a_message_without_midi_explains(bot_settings, jobs):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        cog = Compose(bot)
        it = mock_interaction(bot)
        message = discord.Object(1)
        message.attachments = []  # type: ignore[attr-defined]
        message.content = "no seed here"  # type: ignore[attr-defined]
        with pytest.raises(BadMidi, match="no MIDI, ABC or MusicXML file"):
            await cog.continue_this_midi(it, message)  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_history_and_status_answer_ephemerally(bot_settings, jobs, worker):
    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        compose, info = Compose(bot), Info(bot)
        await compose.compose.callback(compose, mock_interaction(bot))
        it = mock_interaction(bot)
        await info.history.callback(info, it)
        assert it.response.defer.await_args.kwargs["ephemeral"]  # deferred first, ephemeral
        embed = it.edit_original_response.await_args.kwargs["embed"]
        assert "#1" in embed.description
        it = mock_interaction(bot)
        await info.status.callback(info, it)
        assert it.response.defer.await_args.kwargs["ephemeral"]
        embed = it.edit_original_response.await_args.kwargs["embed"]
        assert {f.name: f.value for f in embed.fields}["Queued"] == "1"
        await bot.deliveries.stop()

    asyncio.run(scenario())


def test_share_default_then_forget(bot_settings, jobs):
    from sqlalchemy import select

    from engine.store.db import session_scope
    from engine.store.records import Tune

    async def scenario() -> None:
        bot = make_bot(bot_settings, jobs)
        info, compose = Info(bot), Compose(bot)
        it = mock_interaction(bot)
        await info.share_default.callback(info, it, True)
        assert "shared for training" in it.edit_original_response.await_args.kwargs["content"]
        it = mock_interaction(bot)
        seed, _ = real_attachment("tune.mid", midi_bytes())
        await compose.compose.callback(compose, it, seed=seed)
        with session_scope(bot_settings.sqlalchemy_url) as s:
            assert s.scalar(select(Tune)).consent is True  # opted in: the seed is shared
        it = mock_interaction(bot)
        await info.forget.callback(info, it)
        assert "1 shared tune withdrawn" in it.edit_original_response.await_args.kwargs["content"]
        await bot.deliveries.stop()

    asyncio.run(scenario())
