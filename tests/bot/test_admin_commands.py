"""Admin commands: who may use them, the audit log, /model, /stats and /retrain's progress."""

from __future__ import annotations

import asyncio

import discord
import pytest
from sqlalchemy import select

from bot.client import MotifBot
from bot.cogs.admin import Admin
from engine.artifacts import store_for
from engine.db import session_scope
from engine.errors import NotAllowed
from engine.records import AuditLog, ModelStatus, ModelVersion, RunStatus, TrainingRun
from tests.bot.conftest import discord_harness, mock_interaction, png_bytes
from tests.bot.fake_discord import CHANNEL_ID

ORIGINAL = r"/webhooks/\d+/[\w-]+/messages/@original"
FOLLOWUP = r"/webhooks/\d+/[\w-]+"
CALLBACK = r"/interactions/\d+/[\w-]+/callback"
MANAGE = discord.Permissions(manage_guild=True)


def audit_rows(settings) -> list[tuple]:  # type: ignore[no-untyped-def]
    with session_scope(settings.sqlalchemy_url) as s:
        return [
            (r.user_discord_id, r.action, r.allowed)
            for r in s.scalars(select(AuditLog).order_by(AuditLog.id))
        ]


def add_models(settings, *versions: str) -> None:  # type: ignore[no-untyped-def]
    with session_scope(settings.sqlalchemy_url) as s:
        for v in versions:
            s.add(
                ModelVersion(
                    version=v, checkpoint_key=f"models/{v}.pt", status=ModelStatus.CANDIDATE
                )
            )


@pytest.mark.parametrize(
    "overrides, kwargs, allowed",
    [
        ({}, {"permissions": MANAGE}, True),
        ({}, {"permissions": discord.Permissions(administrator=True)}, True),
        ({"admin_user_ids": "42"}, {}, True),
        ({"admin_role_ids": "5, 6"}, {"roles": (6,)}, True),
        ({"admin_role_ids": "5"}, {"roles": (9,)}, False),
        ({}, {}, False),
    ],
)
def test_admin_rule_and_audit(bot_settings, jobs, overrides, kwargs, allowed):
    settings = bot_settings.model_copy(update=overrides)

    async def scenario() -> None:
        bot = MotifBot(settings, jobs, sync_on_start=False)
        cog = Admin(bot)
        it = mock_interaction(bot, **kwargs)
        if allowed:
            await cog.stats.callback(cog, it)
            assert it.response.send_message.await_args.kwargs["ephemeral"] is True
        else:
            with pytest.raises(NotAllowed, match="logged"):
                await cog.stats.callback(cog, it)
            it.response.send_message.assert_not_awaited()

    asyncio.run(scenario())
    assert audit_rows(bot_settings) == [(42, "stats", allowed)]


def test_model_list_activate_and_rollback(bot_settings, jobs):
    add_models(bot_settings, "v1", "v2")

    async def scenario() -> list[str]:
        bot = MotifBot(bot_settings, jobs, sync_on_start=False)
        cog = Admin(bot)
        texts = []
        for version in ("v1", "v2"):
            it = mock_interaction(bot, permissions=MANAGE)
            await cog.model_activate.callback(cog, it, version=version)
            texts.append(it.response.send_message.await_args.args[0])
        it = mock_interaction(bot, permissions=MANAGE)
        await cog.model_rollback.callback(cog, it)
        texts.append(it.response.send_message.await_args.args[0])
        it = mock_interaction(bot, permissions=MANAGE)
        await cog.model_list.callback(cog, it)
        texts.append(it.response.send_message.await_args.kwargs["embed"].description)
        choices = await cog._versions(mock_interaction(bot), "v")
        texts.append(",".join(c.value for c in choices))
        return texts

    texts = asyncio.run(scenario())
    assert "`v1` is now active" in texts[0] and "`v2` is now active" in texts[1]
    assert "`v1` is active again" in texts[2]
    assert "`v1` active" in texts[3] and "active" in texts[3]
    assert texts[4] == "v2,v1"
    assert [a for _, a, _ in audit_rows(bot_settings)] == [
        "model activate",
        "model activate",
        "model rollback",
        "model list",
    ]


def test_retrain_reports_progress_and_the_loss_curve(bot_settings, jobs, monkeypatch):
    import engine.queueing

    sent: list[int] = []
    monkeypatch.setattr(engine.queueing, "dispatch_retrain", lambda run_id, s: sent.append(run_id))
    store_for(bot_settings.artifact_root).put("runs/1/loss.png", png_bytes())

    def update_run(**values) -> None:  # type: ignore[no-untyped-def]
        with session_scope(bot_settings.sqlalchemy_url) as s:
            run = s.get(TrainingRun, 1)
            for k, v in values.items():
                setattr(run, k, v)

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(
                h.payloads.slash(
                    "retrain", {"epochs": 3, "from_scratch": True}, permissions=MANAGE.value
                )
            )
            (callback,) = await h.fake.wait_for("POST", CALLBACK)
            assert callback.json == {"type": 5, "data": {"flags": 64}}  # ephemeral thinking
            edits = await h.fake.wait_for("PATCH", ORIGINAL)
            assert "Training run #1 is queued" in edits[0].json["content"]
            assert sent == [1]
            progress = {"epoch": 1.5, "loss": 2.3456, "tokens_per_s": 12345.0, "eta_s": 120}
            update_run(status=RunStatus.RUNNING, progress=progress)
            edits = await h.fake.wait_for("PATCH", ORIGINAL, count=2)
            text = edits[1].json["content"]
            assert "epoch 1.50" in text and "loss 2.346" in text
            assert "12,345 tokens/s" in text and "ETA 2 min" in text
            update_run(
                status=RunStatus.DONE,
                metrics={"loss_curve_key": "runs/1/loss.png", "val_nll": 1.25},
            )
            (final,) = await h.fake.wait_for("POST", FOLLOWUP)
            assert final.filenames == ["loss-run-1.png"]
            assert final.json["flags"] == 64 and "finished" in final.json["content"]

    asyncio.run(scenario())
    assert audit_rows(bot_settings) == [(42, "retrain", True)]
    with session_scope(bot_settings.sqlalchemy_url) as s:
        run = s.get(TrainingRun, 1)
        assert run.params["epochs"] == 3 and run.params["from_scratch"] is True
        assert run.channel_id == CHANNEL_ID


def test_a_second_retrain_while_one_runs_is_refused_clearly(bot_settings, jobs, monkeypatch):
    import engine.queueing

    monkeypatch.setattr(engine.queueing, "dispatch_retrain", lambda run_id, s: None)

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("retrain", {}, permissions=MANAGE.value))
            await h.fake.wait_for("PATCH", ORIGINAL)
            h.inject(h.payloads.slash("retrain", {}, permissions=MANAGE.value))
            answer = (await h.fake.wait_for("POST", FOLLOWUP))[0]
            assert "already" in answer.json["content"] and answer.json["flags"] == 64

    asyncio.run(scenario())


def test_retrain_cancel_stops_a_queued_or_running_run_for_admins_only(
    bot_settings, jobs, monkeypatch
):
    import engine.queueing

    monkeypatch.setattr(engine.queueing, "dispatch_retrain", lambda run_id, s: None)

    def run_row(run_id: int) -> TrainingRun:
        with session_scope(bot_settings.sqlalchemy_url) as s:
            return s.get(TrainingRun, run_id)

    async def answer(h, payload: dict) -> dict:  # type: ignore[no-untyped-def]
        h.inject(payload)
        path = rf"/interactions/{payload['id']}/[\w-]+/callback"
        (call,) = await h.fake.wait_for("POST", path)
        return call.json

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            h.inject(h.payloads.slash("retrain", {}, permissions=MANAGE.value))
            await h.fake.wait_for("PATCH", ORIGINAL)  # run #1 queued, followed
            refused = await answer(h, h.payloads.slash("retrain", {"cancel": 1}, user_id=50))
            assert refused["data"]["flags"] == 64 and "admins only" in refused["data"]["content"]
            assert run_row(1).status is RunStatus.QUEUED

            done = await answer(
                h, h.payloads.slash("retrain", {"cancel": 1}, permissions=MANAGE.value)
            )
            assert done["data"]["flags"] == 64
            assert done["data"]["content"] == "Training run #1 is cancelled; it had not started."
            assert run_row(1).status is RunStatus.CANCELLED
            (final,) = await h.fake.wait_for("POST", FOLLOWUP)  # the follower's last word
            assert "was cancelled" in final.json["content"]

            h.inject(h.payloads.slash("retrain", {}, permissions=MANAGE.value))
            await until_run(2)
            with session_scope(bot_settings.sqlalchemy_url) as s:
                s.get(TrainingRun, 2).status = RunStatus.RUNNING
            stopping = await answer(
                h, h.payloads.slash("retrain", {"cancel": 2}, permissions=MANAGE.value)
            )
            assert "stops at its next step" in stopping["data"]["content"]
            row = run_row(2)
            assert row.status is RunStatus.RUNNING and row.cancel_requested

    async def until_run(run_id: int) -> None:
        for _ in range(200):
            with session_scope(bot_settings.sqlalchemy_url) as s:
                if s.get(TrainingRun, run_id) is not None:
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"run #{run_id} never appeared")

    asyncio.run(scenario())
    actions = [(a, ok) for _, a, ok in audit_rows(bot_settings)]
    assert ("retrain cancel", False) in actions and actions.count(("retrain cancel", True)) == 2
