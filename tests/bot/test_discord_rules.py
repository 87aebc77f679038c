"""The review's findings, each through the stricter fake Discord: 3-second first responses,
15-minute tokens, 429s on edits, 2,000 characters, upload limits, custom ids, allowed mentions,
DMs and a second guild (`tests/bot/fake_discord.py`)."""

from __future__ import annotations

import asyncio
import threading
import time

import discord

from bot.views import ShareConsentButton, result_view
from engine.service.requests import JobService, Requester, validate_options
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import ModelStatus, ModelVersion
from tests.bot.conftest import (
    PipelineWorker,
    SimulatedWorker,
    discord_harness,
    midi_bytes,
    queued,
    until,
)
from tests.bot.fake_discord import APP_ID, CHANNEL_ID, FIRST_RESPONSE_S, GUILD_ID, Payloads
from tests.conftest import make_settings

ORIGINAL = r"/webhooks/\d+/[\w-]+/messages/@original"
FOLLOWUP = r"/webhooks/\d+/[\w-]+"
CALLBACK = r"/interactions/\d+/[\w-]+/callback"
MANAGE = discord.Permissions(manage_guild=True).value
EPHEMERAL = 64
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


def test_handlers_acknowledge_before_a_slow_database(tmp_path, pg_url):
    """With the database stuck for 4 s, every handler that reads or writes it still answers
    Discord within 3 s (deferred first), and its real answer follows."""
    settings = make_settings(
        tmp_path,
        database_url=pg_url,
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
            holder = hold_tables(pg_url, 4.0, locked)
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


CHANNEL_POST = rf"/channels/{CHANNEL_ID}/messages"


def test_a_mention_flood_costs_one_download_per_accepted_request_and_one_answer(
    bot_settings, jobs, dispatched
):
    """40 mentions with a MIDI file from one user whose cap is 2: two downloads, two accepted,
    one refusal posted (was: 40 downloads and 40 public replies)."""

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            for _ in range(40):
                h.inject_message(
                    h.payloads.user_message(
                        f"<@{APP_ID}> go",
                        [h.payloads.attachment("hum.mid", midi_bytes())],
                        mention_bot=True,
                    )
                )
            await h.fake.wait_for("POST", CHANNEL_POST, count=3)
            await asyncio.sleep(1.0)  # everything the 40 messages cause has happened by now
            posts = h.fake.find("POST", CHANNEL_POST)
            assert len(h.fake.find("GET", r"/cdn/.*")) == 2
            assert len(dispatched) == 2 and len(posts) == 3
            texts = sorted(p.json["content"] for p in posts)
            assert sum("is queued" in t for t in texts) == 2
            assert sum("limit 2" in t for t in texts) == 1
            assert h.fake.pinged() == []

    asyncio.run(scenario())


def test_compose_checks_the_limits_before_downloading(bot_settings, jobs, dispatched):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            for _ in range(2):
                h.inject(h.payloads.slash("compose"))
            await queued(jobs, dispatched, 2)  # the user's two open requests: the cap
            seed = h.payloads.attachment("late.mid", midi_bytes())
            h.inject(h.payloads.slash("compose", {"seed": seed}))
            (refusal,) = await h.fake.wait_for("POST", FOLLOWUP)
            assert "limit 2" in refusal.json["content"] and refusal.json["flags"] == EPHEMERAL
            assert not h.fake.find("GET", r"/cdn/.*")

    asyncio.run(scenario())


def test_user_text_is_escaped_and_no_one_is_pinged_unless_meant(bot_settings, jobs, dispatched):
    """A filename with a backtick cannot end the code span it is shown in, and the bot-wide
    AllowedMentions.none() keeps any mention in it silent; a late result still pings its owner."""
    sneaky = "a`<@999> @everyone`.txt"

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs, token_ttl_s=0.5) as h:
            h.inject_message(
                h.payloads.user_message(
                    f"<@{APP_ID}> go",
                    [h.payloads.attachment(sneaky, b"not midi")],
                    mention_bot=True,
                )
            )
            (reply,) = await h.fake.wait_for("POST", CHANNEL_POST)
            text = reply.json["content"]
            assert (
                "is not a seed Motif can read" in text and text.count("`") == 2
            )  # one intact code span
            assert h.fake.pinged() == []
            long_name = "x" * 3000 + ".txt"  # echoed, it would break the 2,000-character limit
            h.inject(h.payloads.slash("compose", {"seed": h.payloads.attachment(long_name, b"")}))
            (callback,) = await h.fake.wait_for("POST", CALLBACK)
            assert (
                callback.status == 200
                and "is not a seed Motif can read" in callback.json["data"]["content"]
            )
            # a result after the token's life goes to the channel and pings the requester only
            h.inject(h.payloads.slash("compose", user_id=77))
            (rid,) = await queued(jobs, dispatched)
            await asyncio.sleep(0.6)
            SimulatedWorker(bot_settings).complete(rid)
            await h.fake.wait_for("POST", CHANNEL_POST, count=2)
            assert h.fake.pinged() == ["user:77"]

    asyncio.run(scenario())


def test_an_ephemeral_result_after_the_token_expires_goes_by_dm_never_to_the_channel(
    bot_settings, jobs, monkeypatch
):
    import engine.queue.dispatch
    from engine.store.records import RunStatus, TrainingRun

    monkeypatch.setattr(engine.queue.dispatch, "dispatch_retrain", lambda run_id, s: None)

    def finish_run(run_id: int) -> None:
        with session_scope(bot_settings.sqlalchemy_url) as s:
            s.get(TrainingRun, run_id).status = RunStatus.DONE

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs, token_ttl_s=0.5) as h:
            dm = rf"/channels/{Payloads.channel_of(None, 42)}/messages"
            for run_id, closed in ((1, False), (2, True)):
                if closed:  # DMs closed: dropped with a log line, still not public
                    h.fake.fail_next[f"POST {dm}"] = 403
                h.inject(h.payloads.slash("retrain", permissions=MANAGE))
                await h.fake.wait_for("PATCH", ORIGINAL, count=run_id)
                await asyncio.sleep(0.6)  # the "15 minutes" pass
                finish_run(run_id)
                await h.fake.wait_for("POST", dm, count=run_id)
            (opened, *_) = h.fake.find("POST", r"/users/@me/channels")
            assert opened.json == {"recipient_id": 42}
            assert "Training run #1" in h.fake.find("POST", dm)[0].json["content"]
            assert [c.status for c in h.fake.find("POST", dm)] == [200, 403]
            assert not h.fake.find("POST", CHANNEL_POST)
            assert not h.fake.find("POST", FOLLOWUP)

    asyncio.run(scenario())


def test_status_shows_worker_counts_not_host_names(bot_settings, jobs):
    from engine.store.records import Worker

    with session_scope(bot_settings.sqlalchemy_url) as s:
        for i in range(2):
            s.add(
                Worker(
                    hostname=f"gpu-box-{i}.corp.internal:1{i}", queues="gpu", device="cuda", pid=i
                )
            )
        s.add(Worker(hostname="render-1.corp.internal:9", queues="cpu", device="cpu", pid=9))

    async def scenario() -> dict:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("status"))
            (answer,) = await h.fake.wait_for("PATCH", ORIGINAL)
            return answer.json

    body = asyncio.run(scenario())
    assert "corp.internal" not in str(body)
    fields = {f["name"]: f["value"] for f in body["embeds"][0]["fields"]}
    assert fields["Workers"] == "1 × cpu on cpu\n2 × gpu on cuda"


def test_operator_errors_never_reach_users(bot_settings, jobs, dispatched):
    """A missing soundfont is the operator's problem: the user is told something went wrong on
    the server, the path and setting stay in SQL (error_detail) and the log."""
    settings = bot_settings.model_copy(update={"soundfont": "/srv/secret/fonts/missing.sf2"})
    jobs = JobService(settings, dispatch=dispatched.append)
    worker = PipelineWorker(settings)

    async def scenario() -> None:
        async with discord_harness(settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {"bars": 2}))
            (rid,) = await queued(jobs, dispatched)
            await asyncio.to_thread(worker.complete, rid)
            await until(lambda: "failed" in h.fake.find("PATCH", ORIGINAL)[-1].json["content"])
            text = h.fake.find("PATCH", ORIGINAL)[-1].json["content"]
            assert "misconfigured on the server side" in text
            assert not any("/srv/secret" in str(c.json) for c in h.fake.calls)

    asyncio.run(scenario())
    with session_scope(settings.sqlalchemy_url) as s:
        from engine.store.records import Request

        assert "missing.sf2" in (s.get(Request, 1).error_detail or "")


def test_the_bot_asks_only_for_the_intents_it_uses(bot_settings, jobs):
    from bot.client import MotifBot

    bot = MotifBot(bot_settings, jobs, sync_on_start=False)
    assert bot.intents == discord.Intents(guilds=True, guild_messages=True, dm_messages=True)
    assert not (bot.intents.message_content or bot.intents.members or bot.intents.presences)
    assert bot.allowed_mentions.to_dict() == discord.AllowedMentions.none().to_dict()


def test_interaction_tokens_are_redacted_from_discords_debug_logs(bot_settings, jobs, dispatched):
    import io
    import logging

    from bot.main import redact_tokens_in_logs

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    tokens = []
    try:
        redact_tokens_in_logs()

        async def scenario() -> None:
            async with discord_harness(bot_settings, jobs) as h:
                payload = h.payloads.slash("compose")
                tokens.append(payload["token"])
                h.inject(payload)
                await queued(jobs, dispatched)
                await h.fake.wait_for("PATCH", ORIGINAL)

        asyncio.run(scenario())
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
    text = out.getvalue()
    assert "/callback" in text and "<token>" in text  # discord.py did log the routes
    assert tokens[0] not in text and tokens[0][:40] not in text


def test_rate_limited_progress_edits_are_retried_and_end_on_the_final_text(
    bot_settings, jobs, dispatched, worker
):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.fake.edit_limit = (1, 2.0)  # one edit per message per 2 s
            h.inject(h.payloads.slash("compose"))
            (rid,) = await queued(jobs, dispatched)
            worker.generating(rid)
            await asyncio.sleep(0.6)
            worker.rendering(rid)
            await asyncio.sleep(0.6)
            worker.finish(rid)
            await h.fake.wait_for("POST", FOLLOWUP)
            edits = h.fake.find("PATCH", ORIGINAL)
            assert 429 in [e.status for e in edits]
            assert edits[-1].status == 200 and "ready" in edits[-1].json["content"]

    asyncio.run(scenario())


def test_continue_this_midi_on_someone_elses_message_makes_them_the_seeds_owner(
    bot_settings, jobs, dispatched
):
    from engine.store.records import Request, Tune, User

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            target = h.payloads.user_message(
                "my tune", [h.payloads.attachment("mine.mid", midi_bytes())], author_id=41
            )
            h.inject(h.payloads.message_command("Continue this MIDI", target, user_id=42))
            await queued(jobs, dispatched)

    asyncio.run(scenario())
    with session_scope(bot_settings.sqlalchemy_url) as s:
        req = s.get(Request, dispatched[0])
        owner = s.get(User, s.get(Tune, req.seed_tune_id).owner_id)
        requester = s.get(User, req.user_id)
        assert (owner.discord_id, requester.discord_id) == (41, 42)


def test_a_midi_file_sent_by_dm_is_a_request_answered_in_the_dm(bot_settings, jobs, dispatched):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            dm = h.payloads.user_message(
                "continue", [h.payloads.attachment("dm.mid", midi_bytes())], guild_id=None
            )
            h.inject_message(dm)
            (reply,) = await h.fake.wait_for(
                "POST", rf"/channels/{Payloads.channel_of(None, 42)}/messages"
            )
            assert "is queued" in reply.json["content"]
            (rid,) = await queued(jobs, dispatched)
            assert jobs.progress(rid).channel_id == Payloads.channel_of(None, 42)

    asyncio.run(scenario())


def test_results_fit_the_channels_upload_limit(bot_settings, jobs, dispatched, worker):
    """The fake refuses files over the interaction's `attachment_size_limit` (413); the bot
    leaves out what does not fit and says so."""

    async def scenario() -> dict:
        async with discord_harness(bot_settings, jobs) as h:
            h.fake.upload_limit = 64 * 1024
            h.inject(h.payloads.slash("compose"))
            (rid,) = await queued(jobs, dispatched)
            worker.complete(rid)  # 3 kB audio: fits
            (first,) = await h.fake.wait_for("POST", FOLLOWUP)
            h.inject(h.payloads.slash("compose", user_id=43))
            rid = (await queued(jobs, dispatched, 2))[-1]
            worker.generating(rid)
            worker.rendering(rid)
            worker.finish(rid, audio_size=100_000)  # over this guild's 64 KiB
            second = (await h.fake.wait_for("POST", FOLLOWUP, count=2))[-1]
            assert first.status == 200 and len(first.filenames) == 5
            assert second.status == 200 and not any(f.endswith(".ogg") for f in second.filenames)
            return second.json

    body = asyncio.run(scenario())
    notes = {f["name"]: f["value"] for f in body["embeds"][0]["fields"]}["Note"]
    assert "Not attached" in notes and "audio" in notes


def test_button_custom_ids_fit_discords_100_characters():
    from bot.views import result_view

    async def ids() -> list[str]:
        view = result_view(2**63 - 1)  # the largest request id SQL can hold
        return [c["custom_id"] for row in view.to_components() for c in row["components"]]

    assert max(len(i) for i in asyncio.run(ids())) <= 100


def test_six_simultaneous_composes_from_one_user_get_two_accepted(bot_settings):
    """The review's reproduction through Discord: 6 at once against a cap of 2 were all accepted.
    The dispatch takes a broker's round trip inside the transaction, where the race was."""
    sent: list[int] = []

    def slow_dispatch(request_id: int) -> None:
        time.sleep(0.2)
        sent.append(request_id)

    jobs = JobService(bot_settings, dispatch=slow_dispatch)
    jobs.history(Requester(discord_id=42))  # the user row exists: only the limit races

    async def scenario() -> list[str]:
        async with discord_harness(bot_settings, jobs) as h:
            for _ in range(6):
                h.inject(h.payloads.slash("compose"))
            refusals = await h.fake.wait_for("POST", FOLLOWUP, count=4, timeout=20)
            await until(lambda: len(h.fake.find("PATCH", ORIGINAL)) >= 2)
            return [r.json["content"] for r in refusals]

    texts = asyncio.run(scenario())
    assert len(sent) == 2 and all("limit 2" in t for t in texts)


def test_a_reroll_of_someone_elses_result_cannot_be_shared_by_the_reroller(
    bot_settings, jobs, dispatched
):
    """Bob rerolls Ann's result (its MIDI holds Ann's seed) and presses Share, then Yes: refused
    while Ann does not share her seed (was: shared under Bob's consent)."""
    from engine.worker.collect import collected_tunes

    worker = PipelineWorker(bot_settings)

    async def scenario() -> str:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment("ann.mid", midi_bytes())
            h.inject(h.payloads.slash("compose", {"seed": seed, "bars": 2}, user_id=41))
            (ann,) = await queued(jobs, dispatched)
            await asyncio.to_thread(worker.complete, ann)
            await h.fake.wait_for("POST", FOLLOWUP)
            result = h.fake.messages[max(h.fake.messages)]
            h.inject(h.payloads.button(f"motif:reroll:{ann}", result, user_id=42))
            bob = (await queued(jobs, dispatched, 2))[-1]
            await asyncio.to_thread(worker.complete, bob)
            await h.fake.wait_for("POST", FOLLOWUP, count=2)
            consent = discord.ui.View(timeout=None)
            consent.add_item(ShareConsentButton(bob))
            question = h.fake.message(CHANNEL_ID, {"components": consent.to_components()}, [])
            h.inject(h.payloads.button(f"motif:consent:{bob}", question, user_id=42))
            answer = (await h.fake.wait_for("POST", FOLLOWUP, count=3))[-1]
            assert answer.json["flags"] == EPHEMERAL
            return answer.json["content"]

    assert "someone else's seed" in asyncio.run(scenario())
    assert collected_tunes(bot_settings) == []


def test_a_token_that_dies_before_the_bot_expects_falls_back_to_the_channel(
    bot_settings, jobs, dispatched, worker
):
    """Discord answers 401 once a token is 15 minutes old (here: 1 s). The bot's own clock said
    it still lived: the result goes to the channel, with a ping for the requester only."""

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.fake.token_ttl_s = 1.0
            h.inject(h.payloads.slash("compose", user_id=77))
            (rid,) = await queued(jobs, dispatched)
            await h.fake.wait_for("PATCH", ORIGINAL)
            await asyncio.sleep(1.2)
            worker.complete(rid)
            (post,) = await h.fake.wait_for("POST", CHANNEL_POST)
            assert post.status == 200 and len(post.filenames) == 5
            assert [c.status for c in h.fake.find("POST", FOLLOWUP)] == [401]
            assert h.fake.pinged() == ["user:77"]
            await until(lambda: not jobs.undelivered())

    asyncio.run(scenario())
