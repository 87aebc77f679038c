"""Layer 2: a real discord.py bot against the fake Discord REST API and CDN on 127.0.0.1.

Every assertion is about what the fake received: routes, JSON bodies, multipart file names.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re

import pytest
from sqlalchemy import select

from engine.store.db import session_scope
from engine.store.records import AuditLog, RequestKind, RequestStatus
from tests.bot.conftest import TOKEN, discord_harness, midi_bytes, queued, until
from tests.bot.fake_discord import APP_ID, CHANNEL_ID, GUILD_ID

ORIGINAL = r"/webhooks/\d+/[\w-]+/messages/@original"
FOLLOWUP = r"/webhooks/\d+/[\w-]+"
CALLBACK = r"/interactions/\d+/[\w-]+/callback"
CHANNEL_POST = rf"/channels/{CHANNEL_ID}/messages"
EPHEMERAL = 64


def custom_ids(message_json: dict) -> list[str]:
    return [c["custom_id"] for row in message_json["components"] for c in row["components"]]


def test_compose_with_an_attachment_defers_edits_progress_and_follows_up_with_files(
    bot_settings, jobs, dispatched, worker, caplog
):
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            fake = h.fake
            # synced to the dev guild on start, never globally
            (sync,) = fake.find("PUT", rf"/applications/{APP_ID}/guilds/{GUILD_ID}/commands")
            names = {c["name"] for c in sync.json}
            assert {"compose", "Continue this MIDI", "history", "status", "help"} <= names
            assert {"retrain", "model", "stats"} <= names
            assert not fake.find("PUT", rf"/applications/{APP_ID}/commands")

            seed = h.payloads.attachment("ode.mid", midi_bytes())
            h.inject(h.payloads.slash("compose", {"seed": seed, "bars": 4, "style": "folk"}))
            (callback,) = await fake.wait_for("POST", CALLBACK)
            assert callback.json == {"type": 5}  # deferred, "thinking…", public
            await fake.wait_for("GET", r"/cdn/attachments/.*/ode\.mid")  # read at command time
            await queued(jobs, dispatched)
            (rid,) = dispatched
            (first_edit,) = await fake.wait_for("PATCH", ORIGINAL)
            assert f"Request #{rid} is queued" in first_edit.json["content"]

            worker.generating(rid)
            await fake.wait_for("PATCH", ORIGINAL, count=2)
            worker.rendering(rid)
            await fake.wait_for("PATCH", ORIGINAL, count=3)
            worker.finish(rid, shortened=True)
            (result,) = await fake.wait_for("POST", FOLLOWUP)

            edits = fake.find("PATCH", ORIGINAL)
            texts = [e.json["content"] for e in edits]
            assert "generating" in texts[1] and "rendering" in texts[2] and "ready" in texts[-1]
            gaps = [b.at - a.at for a, b in zip(edits, edits[1:], strict=False)]
            assert min(gaps) >= bot_settings.progress_edit_interval_s - 0.05  # coalesced
            assert result.filenames == [
                f"motif-{rid}.mid",
                f"motif-{rid}.musicxml",
                f"motif-{rid}.ogg",
                f"SPOILER_motif-{rid}.png",  # the piano roll, one click away
                f"motif-{rid}-score.png",
            ]
            (embed,) = result.json["embeds"]
            fields = {f["name"]: f["value"] for f in embed["fields"]}
            assert fields["Bars"] == "4" and fields["Style"] == "folk"
            assert fields["Model"] == worker.model_version and "shortened" in fields["Note"]
            assert "ode.mid" in embed["description"]
            assert embed["image"]["url"] == f"attachment://motif-{rid}-score.png"
            assert f"motif:reroll:{rid}" in custom_ids(result.json)
            assert not result.json.get("flags")
            await until(lambda: not jobs.undelivered())
            await asyncio.sleep(0.3)  # a sweep runs meanwhile and must not post it twice
            assert not fake.find("POST", CHANNEL_POST)

    asyncio.run(scenario())
    assert TOKEN not in caplog.text  # never logged, not even at DEBUG


def test_compose_end_to_end_with_each_worker(bot_settings, jobs, dispatched, any_worker):
    """The same flow with the simulated worker and with engine.worker.pipeline's real one."""

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment("ode.mid", midi_bytes())
            h.inject(h.payloads.slash("compose", {"seed": seed, "bars": 2, "rng_seed": 3}))
            await queued(jobs, dispatched)
            status = await asyncio.to_thread(any_worker.complete, dispatched[0])
            assert status is RequestStatus.DONE
            (result,) = await h.fake.wait_for("POST", FOLLOWUP, timeout=30)
            kinds = sorted(name.rsplit(".", 1)[1] for name in result.filenames)
            pdf = ["pdf"] if any_worker.writes_pdf else []  # the whole score, from the real one
            assert kinds == sorted(["mid", "musicxml", "ogg", "png", "png", *pdf])

    asyncio.run(scenario())


def test_a_button_pressed_after_a_restart_still_works(bot_settings, jobs, dispatched, worker):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {"temperature": 1.0}))
            await queued(jobs, dispatched)
            worker.complete(dispatched[0])
            (result,) = await h.fake.wait_for("POST", FOLLOWUP)
            message = h.fake.messages[max(h.fake.messages)]  # the result message as stored
            assert message["components"]

            await h.restart()  # a new bot on the same database; the old views are gone
            for custom_id, kind in (
                (f"motif:reroll:{dispatched[0]}", RequestKind.REROLL),
                (f"motif:vary:hi:{dispatched[0]}", RequestKind.VARIATION),
            ):
                h.inject(h.payloads.button(custom_id, message, user_id=43))
                await queued(jobs, dispatched, len(dispatched) + 1)
                child = jobs.progress(dispatched[-1])
                assert child.kind is kind and child.user_discord_id == 43
            assert jobs.progress(dispatched[-1]).params["temperature"] == 1.25
            callbacks = h.fake.find("POST", CALLBACK)[-2:]
            assert [c.json for c in callbacks] == [{"type": 5}, {"type": 5}]
            await h.fake.wait_for("PATCH", ORIGINAL, count=3)  # the new jobs' progress

            h.inject(h.payloads.button(f"motif:rate:up:{dispatched[0]}", message))
            deferred = (await h.fake.wait_for("POST", CALLBACK, count=4))[-1]
            assert deferred.json == {"type": 5, "data": {"flags": EPHEMERAL}}  # before the DB
            await until(
                lambda: any(
                    "Thanks for the feedback" in (e.json.get("content") or "")
                    for e in h.fake.find("PATCH", ORIGINAL)
                )
            )

    asyncio.run(scenario())


def test_share_asks_for_consent_then_shares(bot_settings, jobs, dispatched, worker):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment("mine.mid", midi_bytes())
            h.inject(h.payloads.slash("compose", {"seed": seed}))
            await queued(jobs, dispatched)
            rid = dispatched[0]
            worker.complete(rid)
            await h.fake.wait_for("POST", FOLLOWUP)
            result = h.fake.messages[max(h.fake.messages)]
            h.inject(h.payloads.button(f"motif:share:{rid}", result))
            await h.fake.wait_for("POST", CALLBACK, count=2)
            question = h.fake.find("POST", CALLBACK)[-1].json
            assert question["type"] == 4 and question["data"]["flags"] == EPHEMERAL
            assert "/forget" in question["data"]["content"]
            assert custom_ids(question["data"]) == [f"motif:consent:{rid}"]
            ephemeral = h.fake.message(CHANNEL_ID, question["data"], [])
            before = len(h.fake.find("PATCH", ORIGINAL))
            h.inject(h.payloads.button(f"motif:consent:{rid}", ephemeral))
            await h.fake.wait_for("POST", CALLBACK, count=3)
            assert h.fake.find("POST", CALLBACK)[-1].json == {"type": 6}  # deferred before the DB
            done = (await h.fake.wait_for("PATCH", ORIGINAL, count=before + 1))[-1]
            assert "shared" in done.json["content"] and done.json["components"] == []
            forget = h.payloads.slash("forget")
            h.inject(forget)
            await h.fake.wait_for("POST", CALLBACK, count=4)
            edits = await h.fake.wait_for("PATCH", ORIGINAL, count=before + 2)
            assert "1 shared tune withdrawn" in edits[-1].json["content"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "filename, data, size, expected",
    [
        ("notes.mid", b"this is not midi at all, just text", None, "not a valid MIDI file"),
        ("song.mp3", b"ID3\x03\x00", None, "not a seed Motif can read"),
        ("huge.mid", b"", 3 * 1024 * 1024, "too large"),
    ],
)
def test_bad_attachments_get_a_clear_ephemeral_answer(
    bot_settings, jobs, dispatched, filename, data, size, expected
):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment(filename, data, size=size)
            h.inject(h.payloads.slash("compose", {"seed": seed}))
            (callback,) = await h.fake.wait_for("POST", CALLBACK)
            if callback.json["type"] == 5:  # refused after the download: the placeholder goes
                await h.fake.wait_for("DELETE", ORIGINAL)
                (answer,) = await h.fake.wait_for("POST", FOLLOWUP)
                body = answer.json
            else:
                body = callback.json["data"]
            assert expected in body["content"]
            assert body["flags"] == EPHEMERAL
            assert dispatched == []
            if size:  # refused from the metadata alone
                assert not h.fake.find("GET", r"/cdn/.*")

    asyncio.run(scenario())


def test_a_result_after_the_token_expires_goes_to_the_channel_with_a_mention(
    bot_settings, jobs, dispatched, worker
):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs, token_ttl_s=0.5) as h:
            h.inject(h.payloads.slash("compose", {}, user_id=77))
            await queued(jobs, dispatched)
            await asyncio.sleep(0.6)  # the "15 minutes" pass
            worker.complete(dispatched[0])
            (post,) = await h.fake.wait_for("POST", CHANNEL_POST)
            assert post.json["content"].startswith("<@77>")
            assert [str(u) for u in post.json["allowed_mentions"]["users"]] == ["77"]
            assert len(post.filenames) == 5
            assert not h.fake.find("POST", FOLLOWUP)
            await until(lambda: not jobs.undelivered())

    asyncio.run(scenario())


def test_results_pending_at_a_restart_are_delivered_when_the_bot_is_back(
    bot_settings, jobs, dispatched, worker
):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {}, user_id=55))
            h.inject(h.payloads.slash("compose", {}, user_id=56))
            await queued(jobs, dispatched, 2)
            await h.fake.wait_for("PATCH", ORIGINAL, count=2)  # "…is queued", each
            await h.stop_bot()  # the bot goes down with two jobs in flight
            # each progress message says where the result will come instead of staying "queued"
            last = {}
            for call in h.fake.find("PATCH", ORIGINAL):
                last[call.path] = call.json["content"]
            assert len(last) == 2 and all("Motif is restarting" in t for t in last.values()), last
            assert {int(t.split("#")[1].split(" ")[0]) for t in last.values()} == set(dispatched)
            owner = {jobs.progress(rid).user_discord_id: rid for rid in dispatched}
            worker.complete(owner[55])
            worker.fail(owner[56], "the model could not continue this seed")
            assert sorted(jobs.undelivered()) == sorted(dispatched)
            await h.start()
            posts = await h.fake.wait_for("POST", CHANNEL_POST, count=2)
            by_user = {p.json["content"].split()[0]: p for p in posts}
            assert len(by_user["<@55>"].filenames) == 5
            assert "could not continue" in by_user["<@56>"].json["content"]
            await until(lambda: not jobs.undelivered())

    asyncio.run(scenario())


def test_two_bot_processes_on_one_database_post_each_result_once(
    bot_settings, jobs, dispatched, worker
):
    from bot.client import MotifBot

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            for user in (61, 62, 63):
                h.inject(h.payloads.slash("compose", {}, user_id=user))
            await queued(jobs, dispatched, 3)
            await h.stop_bot()  # results finish while no bot follows them
            for rid in dispatched:
                worker.complete(rid)
            # two bot processes come up at once and both sweep the same database
            first = await h.start()
            second = MotifBot(bot_settings, jobs, **h.bot_options)
            await second.login(TOKEN)
            try:
                assert first.deliveries.owner != second.deliveries.owner
                await h.fake.wait_for("POST", CHANNEL_POST, count=3)
                await until(lambda: not jobs.undelivered())
                await asyncio.sleep(1.0)  # several more sweeps of both bots
                posts = h.fake.find("POST", CHANNEL_POST)
                mentions = sorted(p.json["content"].split()[0] for p in posts)
                assert mentions == ["<@61>", "<@62>", "<@63>"]  # each result exactly once
            finally:
                await second.close()

    asyncio.run(scenario())


def test_continue_this_midi_context_menu(bot_settings, jobs, dispatched):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            target = h.payloads.user_message(
                "here's my tune", [h.payloads.attachment("riff.midi", midi_bytes())]
            )
            h.inject(h.payloads.message_command("Continue this MIDI", target))
            (callback,) = await h.fake.wait_for("POST", CALLBACK)
            assert callback.json == {"type": 5}
            await queued(jobs, dispatched)
            assert jobs.progress(dispatched[0]).seed_name == "riff.midi"

    asyncio.run(scenario())


def test_mentioning_the_bot_with_a_midi_file_composes(bot_settings, jobs, dispatched, worker):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            msg = h.payloads.user_message(
                f"<@{APP_ID}> continue this",
                [h.payloads.attachment("hum.mid", midi_bytes())],
                mention_bot=True,
            )
            h.inject_message(msg)
            (reply,) = await h.fake.wait_for("POST", CHANNEL_POST)
            assert str(reply.json["message_reference"]["message_id"]) == msg["id"]
            await queued(jobs, dispatched)
            worker.complete(dispatched[0])
            posts = await h.fake.wait_for("POST", CHANNEL_POST, count=2)
            assert len(posts[1].filenames) == 5
            assert str(posts[1].json["message_reference"]["message_id"]) == msg["id"]
            assert h.fake.find("PATCH", rf"/channels/{CHANNEL_ID}/messages/\d+")  # progress

    asyncio.run(scenario())


def test_a_non_admin_is_refused_retrain_and_the_attempt_is_audited(bot_settings, jobs):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("retrain", {"epochs": 3}, user_id=66, permissions=0))
            (callback,) = await h.fake.wait_for("POST", CALLBACK)
            assert callback.json == {"type": 5, "data": {"flags": EPHEMERAL}}  # deferred first
            (answer,) = await h.fake.wait_for("POST", FOLLOWUP)
            assert answer.json["flags"] == EPHEMERAL
            assert "Motif's admins only" in answer.json["content"]

    asyncio.run(scenario())
    with session_scope(bot_settings.sqlalchemy_url) as s:
        (row,) = s.scalars(select(AuditLog))
        assert (row.user_discord_id, row.action, row.allowed) == (66, "retrain", False)


def test_only_owners_can_sync_globally(bot_settings, jobs):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            for author in (8, 7):  # owner_user_ids is "7"
                msg = h.payloads.user_message(
                    f"<@{APP_ID}> sync global", [], author_id=author, mention_bot=True
                )
                h.inject_message(msg)
            replies = await h.fake.wait_for("POST", CHANNEL_POST, count=2)
            texts = sorted(r.json["content"] for r in replies)
            assert texts[0].startswith("Only the bot's owners") and "globally" in texts[1]
            assert len(h.fake.find("PUT", rf"/applications/{APP_ID}/commands")) == 1

    asyncio.run(scenario())


def test_sigterm_closes_the_bot_like_ctrl_c_with_the_restart_notice(bot_settings, jobs, dispatched):
    """`docker stop` sends SIGTERM: the bot closes (deliveries stopped, progress messages told)
    instead of dying where it stands."""
    import os
    import signal

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {}, user_id=71))
            (rid,) = await queued(jobs, dispatched)
            await h.fake.wait_for("PATCH", ORIGINAL)
            bot = h.bot
            bot.close_on_sigterm()
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                await until(bot.is_closed)
            finally:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
            h.bot = None  # closed by the signal
            last = h.fake.find("PATCH", ORIGINAL)[-1].json["content"]
            assert last.startswith(f"🔄 Motif is restarting. Request #{rid} "), last

    asyncio.run(scenario())


def _callback_of(fake, payload: dict) -> dict:  # type: ignore[no-untyped-def]
    """The JSON body of the bot's answer to the interaction `payload`."""
    (call,) = fake.find("POST", rf"/interactions/{payload['id']}/[\w-]+/callback")
    return call.json


async def answer_text(fake, payload: dict) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """(flags, text) that the person finally sees: the callback's message or, after a deferral,
    the edit of its original response or its follow-up."""
    await until(lambda: fake.find("POST", rf"/interactions/{payload['id']}/.*"))
    callback = _callback_of(fake, payload)
    data = callback.get("data") or {}
    if callback["type"] == 4:
        return data.get("flags", 0), data["content"]
    token = re.escape(payload["token"])
    later = await until(
        lambda: [
            c
            for c in fake.calls
            if c.method in ("PATCH", "POST")
            and re.fullmatch(rf"/webhooks/\d+/{token}(/messages/@original)?", c.path)
        ]
    )
    return later[-1].json.get("flags", data.get("flags", 0)), later[-1].json["content"]


def test_the_owner_cancels_a_queued_request_with_its_button(bot_settings, jobs, dispatched, worker):
    """Queued: a Cancel button under the progress. Someone else's press is refused; the owner's
    cancels; the progress ends on "cancelled" with no buttons; a worker never runs it."""
    from engine.worker.pipeline import run_generation

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            compose = h.payloads.slash("compose", {"bars": 2}, user_id=42)
            h.inject(compose)
            (rid,) = await queued(jobs, dispatched)
            (first,) = await h.fake.wait_for("PATCH", ORIGINAL)
            assert f"motif:cancel:{rid}" in custom_ids(first.json)
            message = copy.deepcopy(next(iter(h.fake.originals.values())))  # with the button

            stranger = h.payloads.button(f"motif:cancel:{rid}", message, user_id=43)
            h.inject(stranger)
            flags, text = await answer_text(h.fake, stranger)
            assert flags == EPHEMERAL and "only" in text
            assert jobs.progress(rid).status is RequestStatus.QUEUED

            owner = h.payloads.button(f"motif:cancel:{rid}", message, user_id=42)
            h.inject(owner)
            flags, text = await answer_text(h.fake, owner)
            assert flags == EPHEMERAL and text == f"Request #{rid} is cancelled."
            assert jobs.progress(rid).status is RequestStatus.CANCELLED

            final = await until(
                lambda: [
                    e
                    for e in h.fake.find("PATCH", ORIGINAL)
                    if compose["token"] in e.path and "cancelled" in e.json["content"]
                ]
            )
            assert final[-1].json["components"] == []  # the button is gone
            assert await asyncio.to_thread(run_generation, rid, bot_settings) == []

            # a press from a view not yet refreshed (a stale client) is answered plainly
            again = h.payloads.button(f"motif:cancel:{rid}", message, user_id=42)
            h.inject(again)
            assert "can no longer be cancelled" in (await answer_text(h.fake, again))[1]

    asyncio.run(scenario())


def test_a_started_request_loses_its_cancel_button(bot_settings, jobs, dispatched, worker):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {"bars": 2}))
            (rid,) = await queued(jobs, dispatched)
            (first,) = await h.fake.wait_for("PATCH", ORIGINAL)
            assert f"motif:cancel:{rid}" in custom_ids(first.json)
            worker.generating(rid)
            edits = await h.fake.wait_for("PATCH", ORIGINAL, count=2)
            assert "generating" in edits[1].json["content"]
            assert edits[1].json["components"] == []

    asyncio.run(scenario())
