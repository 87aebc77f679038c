"""Discord's published limits, kept: every text and embed the bot builds, realistic and worst
case, fits once it goes through `bot.discord_limits`; and through the fake Discord (which now
refuses what Discord refuses: long embeds, requests over 25 MiB with their framing), a long
/history, a long training failure, a 25 MiB result, and the synced command descriptions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import discord
import pytest

from bot import messages
from bot.destinations import REQUEST_LIMIT_BYTES, Upload, fit_uploads
from bot.discord_limits import (
    COMMAND_DESCRIPTION_CHARS,
    CONTENT_CHARS,
    fitted_content,
    fitted_embed,
)
from bot.errors import apology, user_text
from bot.views import SHARE_TEXT, result_view
from engine.errors import MotifError
from engine.service.admin import ModelInfo, RunInfo, Stats
from engine.service.progress import Progress, QueueStatus
from engine.store.db import session_scope
from engine.store.records import RequestKind, RequestStatus, RunStatus, TrainingRun
from tests.bot.conftest import discord_harness, midi_bytes, png_bytes, queued
from tests.bot.fake_discord import APP_ID, GUILD_ID, embed_limits_broken
from tests.bot.test_discord_flows import FOLLOWUP, ORIGINAL

MARKDOWN = "*_~`|>\\" * 40  # every character escaped: the escaped name doubles
LONG = "x" * 5000


def progress(rid: int = 7, *, worst: bool = False, status=RequestStatus.DONE) -> Progress:  # type: ignore[no-untyped-def]
    return Progress(
        request_id=rid,
        status=status,
        kind=RequestKind.COMPOSE,
        queue_position=3,
        params={"bars": 8, "style": "folk", "temperature": 1.0, "top_p": 0.95, "rng_seed": 5},
        model_version=LONG[:300] if worst else "motif-default",
        device="cpu",
        worker="w",
        timings={"queue_wait_s": 0.1, "generate_s": 0.5, "render_s": 0.4},
        notes={
            "seed_remarks": [LONG[:900]] * 30 if worst else ["The ABC held 2 tunes."],
            "seed_cropped": LONG[:900] if worst else "",
        },
        error_user=LONG if worst else "the model failed",
        seed_name=(MARKDOWN[:200] if worst else "jig.abc"),
        channel_id=1,
        user_discord_id=2,
        artifacts=[],
    )


def run_info(*, worst: bool) -> RunInfo:
    return RunInfo(
        id=3,
        status="failed",
        progress={"epoch": 1.0, "step": 10, "total_steps": 100, "loss": 2.0},
        metrics={f"metric_{i}": float(i) for i in range(300 if worst else 3)},
        error=LONG if worst else "CUDA out of memory",
        candidate=None,
        channel_id=1,
        loss_curve_key=None,
    )


def contents(worst: bool) -> list[str]:
    p = progress(worst=worst)
    texts = [messages.progress_text(progress(worst=worst, status=s)) for s in RequestStatus]
    texts += [
        messages.result_content(p, 42),
        messages.restarting_text(7),
        messages.run_progress_text(run_info(worst=worst)),
        messages.run_final_text(run_info(worst=worst)),
        messages.HELP_TEXT,
        SHARE_TEXT.format(req=7),
        user_text(MotifError(LONG if worst else "That ABC is too long.")),
        apology("abcd1234", 7),
    ]
    return texts


def embeds(worst: bool) -> list[discord.Embed]:
    n = 25 if worst else 3
    return [
        messages.result_embed(
            progress(worst=worst), image_filename="motif-7-score.png", left_out=["audio"] * n
        ),
        messages.history_embed([progress(i, worst=worst) for i in range(n)]),
        messages.status_embed(
            QueueStatus(
                queued=1,
                running=2,
                workers=[],
                active_model=LONG[:300] if worst else "v1",
                worker_counts=[LONG[:80]] * n,
            )
        ),
        messages.stats_embed(
            Stats(
                requests_total=10,
                requests_by_status={f"s{i}" * (40 if worst else 1): i for i in range(n)},
                requests_last_day=3,
                users=2,
                tunes_shared=1,
                thumbs_up=1,
                thumbs_down=0,
                median_generate_s=0.4,
                median_render_s=0.3,
                active_model=LONG[:300] if worst else "v1",
            )
        ),
        messages.models_embed(
            [
                ModelInfo(
                    version=f"v{i}" + ("x" * 90 if worst else ""),
                    status="rejected",
                    active=i == 0,
                    created_at=datetime(2026, 12, 1, tzinfo=UTC).isoformat(),
                    reject_reason=LONG[:500] if worst else None,
                    metrics={},
                )
                for i in range(n * 4)
            ]
        ),
    ]


@pytest.mark.parametrize("worst", [False, True], ids=["realistic", "worst case"])
def test_every_text_and_embed_fits_on_its_way_out(worst: bool):
    for text in contents(worst):
        sent = fitted_content(text)
        assert sent is not None and 0 < len(sent) <= CONTENT_CHARS
        if not worst:
            assert sent == text  # an ordinary message loses nothing
    for embed in embeds(worst):
        sent = fitted_embed(embed)
        assert embed_limits_broken([sent.to_dict()]) is None
        if not worst:
            assert sent.to_dict() == embed.to_dict()
    for item in result_view(2**63 - 1).children:  # the longest request id
        assert len(item.custom_id or "") <= 100  # type: ignore[attr-defined]


def test_files_of_exactly_25_mib_leave_room_for_the_request_framing():
    parts = [
        Upload("a.ogg", b"\0" * (REQUEST_LIMIT_BYTES - 2000), "audio"),
        Upload("m.mid", b"\0" * 2000, "midi"),
    ]
    kept, left_out = fit_uploads(parts, per_file=REQUEST_LIMIT_BYTES)
    assert left_out == ["audio"] and [u.kind for u in kept] == ["midi"]


# --- through the fake Discord ------------------------------------------------------------------
def test_a_long_history_is_delivered_not_refused(bot_settings, jobs, dispatched, worker):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            for i in range(10):
                seed = h.payloads.attachment(f"{MARKDOWN[:190]}{i}.mid", midi_bytes(8 + i))
                h.inject(h.payloads.slash("compose", {"seed": seed}, user_id=42))
                await queued(jobs, dispatched, i + 1)
                worker.fail(dispatched[-1], "no")  # the cap lets the next one in
            ask = h.payloads.slash("history", {}, user_id=42)
            h.inject(ask)
            (edit,) = await h.fake.wait_for(
                "PATCH", rf"/webhooks/\d+/{ask['token']}/messages/@original"
            )
            assert edit.status == 200
            (embed,) = edit.json["embeds"]
            assert embed["title"] == "Your recent requests" and len(embed["description"]) <= 4096

    settings = bot_settings.model_copy(update={"user_rate_per_min": 20})
    jobs.settings = settings
    asyncio.run(scenario())


def test_a_long_training_failure_still_reaches_the_admin(bot_settings, jobs, monkeypatch):
    import engine.queue.dispatch

    monkeypatch.setattr(engine.queue.dispatch, "dispatch_retrain", lambda run_id, s: None)

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(
                h.payloads.slash(
                    "retrain", {}, permissions=discord.Permissions(manage_guild=True).value
                )
            )
            await h.fake.wait_for("PATCH", ORIGINAL)
            with session_scope(bot_settings.sqlalchemy_url) as s:
                run = s.get(TrainingRun, 1)
                run.status = RunStatus.FAILED
                run.error = "Traceback (most recent call last):\n" + "  frame\n" * 700
            (final,) = await h.fake.wait_for("POST", FOLLOWUP)
            assert final.status == 200 and final.json["flags"] == 64
            assert final.json["content"].startswith("❌ Training run #1 failed")
            assert len(final.json["content"]) <= CONTENT_CHARS

    asyncio.run(scenario())


def test_a_result_of_exactly_25_mib_leaves_a_file_out_instead_of_failing(
    bot_settings, jobs, dispatched, worker
):
    others = (
        len(midi_bytes(16))
        + 2 * len(png_bytes())
        + len(b'<?xml version="1.0"?><score-partwise version="4.0"/>')
    )

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.fake.upload_limit = REQUEST_LIMIT_BYTES  # a boosted server: 25 MiB a file
            h.inject(h.payloads.slash("compose", {"bars": 2}))
            (rid,) = await queued(jobs, dispatched)
            worker.finish(rid, audio_size=REQUEST_LIMIT_BYTES - 4 - others)
            (result,) = await h.fake.wait_for("POST", FOLLOWUP)
            assert result.status == 200
            assert f"motif-{rid}.ogg" not in result.filenames
            assert "Not attached" in str(result.json["embeds"])

    asyncio.run(scenario())


def test_synced_commands_fit_and_bars_follow_the_settings(bot_settings, jobs):
    settings = bot_settings.model_copy(update={"max_bars": 32})

    async def scenario() -> list[dict]:
        async with discord_harness(settings, jobs) as h:
            (sync,) = h.fake.find("PUT", rf"/applications/{APP_ID}/guilds/{GUILD_ID}/commands")
            return list(sync.json)

    commands = asyncio.run(scenario())

    def walk(items: list[dict]):  # type: ignore[no-untyped-def]
        for item in items:
            yield item
            yield from walk(item.get("options") or [])

    for item in walk(commands):
        description = item.get("description", "")
        if item.get("type") in (2, 3) and "options" not in item and not description:
            continue  # a context menu has no description
        assert 1 <= len(description) <= COMMAND_DESCRIPTION_CHARS, item["name"]
        assert not description.endswith("…"), f"{item['name']} was cut: {description}"
        assert len(item.get("choices") or []) <= 25
    compose = next(c for c in commands if c["name"] == "compose")
    bars = next(o for o in compose["options"] if o["name"] == "bars")
    assert bars["max_value"] == 32
