"""Admin commands: who may use them, the audit log, /model, /stats and /retrain's progress."""

from __future__ import annotations

import asyncio

import discord
import pytest
from sqlalchemy import select

from bot.cogs.admin import Admin
from engine.store.artifacts import store_for
from engine.store.db import session_scope
from engine.store.records import AuditLog, ModelStatus, ModelVersion, RunStatus, TrainingRun
from tests.bot.conftest import discord_harness, png_bytes
from tests.bot.fake_discord import APP_ID, CHANNEL_ID, GUILD_B_ID, GUILD_ID

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


ADMINISTRATOR = discord.Permissions(administrator=True)
MODEL_PERMISSIONS = discord.Permissions(manage_guild=True).value


def active_model(settings) -> str | None:  # type: ignore[no-untyped-def]
    with session_scope(settings.sqlalchemy_url) as s:
        return s.scalar(select(ModelVersion.version).where(ModelVersion.active))


@pytest.mark.parametrize(
    "overrides, kwargs, allowed",
    [
        ({}, {"permissions": MANAGE.value}, True),
        ({}, {"permissions": ADMINISTRATOR.value}, True),
        # the finding: Manage Server of any other server made you Motif's admin
        ({}, {"permissions": MANAGE.value, "guild_id": GUILD_B_ID}, False),
        ({}, {"permissions": ADMINISTRATOR.value, "guild_id": GUILD_B_ID}, False),
        ({"home_guild_id": None}, {"permissions": MANAGE.value}, False),
        ({"admin_user_ids": "42"}, {}, True),
        ({"owner_user_ids": "42"}, {}, True),
        ({"admin_role_ids": "5, 6"}, {"roles": (6,)}, True),
        ({"admin_role_ids": "5"}, {"roles": (9,)}, False),
        ({}, {}, False),
    ],
)
def test_admin_rights_come_from_settings_and_the_home_guild_only(
    bot_settings, jobs, overrides, kwargs, allowed
):
    """`/model activate old-bad` through the fake Discord, from the home guild or a second one."""
    settings = bot_settings.model_copy(update=overrides)
    add_models(settings, "old-bad")
    home = kwargs.get("guild_id", GUILD_ID) == GUILD_ID or settings.home_guild_id is None

    async def scenario() -> str:
        async with discord_harness(settings, jobs) as h:
            h.inject(
                h.payloads.slash("model", {"version": "old-bad"}, subcommand="activate", **kwargs)
            )
            (callback,) = await h.fake.wait_for("POST", CALLBACK)
            if home:  # the check ran: it deferred first, ephemeral
                assert callback.json == {"type": 5, "data": {"flags": 64}}
                answer = (await h.fake.wait_for("PATCH|POST", f"{ORIGINAL}|{FOLLOWUP}"))[-1]
                return answer.json["content"]
            return callback.json["data"]["content"]  # not even a command in that guild

    text = asyncio.run(scenario())
    assert (active_model(settings) == "old-bad") is allowed
    if allowed:
        assert "`old-bad` is now active" in text
    else:
        assert "now active" not in text
        assert "admins only" in text or "not available here" in text
    audits = audit_rows(settings)
    assert audits == ([(42, "model activate", allowed)] if home else [])


def test_admin_commands_are_synced_to_the_home_guild_only_and_hidden(bot_settings, jobs):
    settings = bot_settings.model_copy(update={"owner_user_ids": "7", "dev_guild_id": GUILD_B_ID})

    async def scenario() -> None:
        async with discord_harness(settings, jobs) as h:
            fake = h.fake
            (dev,) = fake.find("PUT", rf"/applications/{APP_ID}/guilds/{GUILD_B_ID}/commands")
            (home,) = fake.find("PUT", rf"/applications/{APP_ID}/guilds/{GUILD_ID}/commands")
            assert "compose" in {c["name"] for c in dev.json}
            assert not {"retrain", "model", "stats"} & {c["name"] for c in dev.json}
            admin_commands = {c["name"]: c for c in home.json}
            assert set(admin_commands) == {"retrain", "model", "stats"}
            for command in admin_commands.values():
                assert command["default_member_permissions"] == MODEL_PERMISSIONS
                # a guild command is never offered in DMs; the flag holds wherever it goes
                assert command.get("contexts") in (None, [0])
            assert all(c.guild_only for c in Admin.__cog_app_commands__)
            # an owner's global sync publishes everything else globally, the admin commands
            # to the home guild again
            h.inject_message(
                h.payloads.user_message(
                    f"<@{APP_ID}> sync global", [], author_id=7, mention_bot=True
                )
            )
            (glob,) = await fake.wait_for("PUT", rf"/applications/{APP_ID}/commands")
            assert "compose" in {c["name"] for c in glob.json}
            assert not {"retrain", "model", "stats"} & {c["name"] for c in glob.json}
            await fake.wait_for("PUT", rf"/applications/{APP_ID}/guilds/{GUILD_ID}/commands", 2)

    asyncio.run(scenario())


def test_model_autocomplete_lists_versions_to_admins_only(bot_settings, jobs):
    add_models(bot_settings, "v1", "v2")

    async def scenario() -> list[list[str]]:
        async with discord_harness(bot_settings, jobs) as h:
            seen = []
            for user, permissions in ((66, 0), (42, MANAGE.value)):
                h.inject(
                    h.payloads.autocomplete(
                        "model", "activate", "version", "v", user_id=user, permissions=permissions
                    )
                )
                calls = await h.fake.wait_for("POST", CALLBACK, count=len(seen) + 1)
                assert calls[-1].json["type"] == 8, calls[-1].json
                seen.append([c["value"] for c in calls[-1].json["data"]["choices"]])
            return seen

    assert asyncio.run(scenario()) == [[], ["v2", "v1"]]


def test_admin_commands_from_a_dm_are_refused_even_for_listed_admins(bot_settings, jobs):
    settings = bot_settings.model_copy(update={"home_guild_id": None, "admin_user_ids": "42"})

    async def scenario() -> str:
        async with discord_harness(settings, jobs) as h:
            h.inject(h.payloads.slash("stats", guild_id=None))
            await h.fake.wait_for("POST", CALLBACK)
            return (await h.fake.wait_for("POST", FOLLOWUP))[-1].json["content"]

    assert "admins only" in asyncio.run(scenario())
    assert audit_rows(settings) == [(42, "stats", False)]


def test_model_list_activate_and_rollback(bot_settings, jobs):
    add_models(bot_settings, "v1", "v2")

    async def scenario() -> list[str]:
        async with discord_harness(bot_settings, jobs) as h:
            texts = []
            for version in ("v1", "v2"):
                h.inject(
                    h.payloads.slash(
                        "model",
                        {"version": version},
                        subcommand="activate",
                        permissions=MANAGE.value,
                    )
                )
                edits = await h.fake.wait_for("PATCH", ORIGINAL, count=len(texts) + 1)
                texts.append(edits[-1].json["content"])
            h.inject(h.payloads.slash("model", subcommand="rollback", permissions=MANAGE.value))
            edits = await h.fake.wait_for("PATCH", ORIGINAL, count=3)
            texts.append(edits[-1].json["content"])
            h.inject(h.payloads.slash("model", subcommand="list", permissions=MANAGE.value))
            edits = await h.fake.wait_for("PATCH", ORIGINAL, count=4)
            texts.append(edits[-1].json["embeds"][0]["description"])
            return texts

    texts = asyncio.run(scenario())
    assert "`v1` is now active" in texts[0] and "`v2` is now active" in texts[1]
    assert "`v1` is active again" in texts[2]
    assert "`v1` active" in texts[3] and "active" in texts[3]
    assert [a for _, a, _ in audit_rows(bot_settings)] == [
        "model activate",
        "model activate",
        "model rollback",
        "model list",
    ]


def test_retrain_reports_progress_and_the_loss_curve(bot_settings, jobs, monkeypatch):
    import engine.queue.dispatch

    sent: list[int] = []
    monkeypatch.setattr(
        engine.queue.dispatch, "dispatch_retrain", lambda run_id, s: sent.append(run_id)
    )
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
    import engine.queue.dispatch

    monkeypatch.setattr(engine.queue.dispatch, "dispatch_retrain", lambda run_id, s: None)

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
    import engine.queue.dispatch

    monkeypatch.setattr(engine.queue.dispatch, "dispatch_retrain", lambda run_id, s: None)

    def run_row(run_id: int) -> TrainingRun:
        with session_scope(bot_settings.sqlalchemy_url) as s:
            return s.get(TrainingRun, run_id)

    async def answer(h, payload: dict) -> dict:  # type: ignore[no-untyped-def]
        """The admin check defers (ephemeral) first; the words come as the deferred message's
        edit, or as a follow-up when refused."""
        h.inject(payload)
        (call,) = await h.fake.wait_for("POST", rf"/interactions/{payload['id']}/[\w-]+/callback")
        assert call.json == {"type": 5, "data": {"flags": 64}}
        token = payload["token"]
        for _ in range(200):
            found = h.fake.find("PATCH", rf"/webhooks/\d+/{token}/messages/@original")
            found += h.fake.find("POST", rf"/webhooks/\d+/{token}$")
            if found:
                return {"flags": 64, **found[0].json}
            await asyncio.sleep(0.05)
        raise AssertionError("no answer")

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            first = h.payloads.slash("retrain", {}, permissions=MANAGE.value)
            h.inject(first)
            await h.fake.wait_for("PATCH", ORIGINAL)  # run #1 queued, followed
            refused = await answer(h, h.payloads.slash("retrain", {"cancel": 1}, user_id=50))
            assert refused["flags"] == 64 and "admins only" in refused["content"]
            assert run_row(1).status is RunStatus.QUEUED

            done = await answer(
                h, h.payloads.slash("retrain", {"cancel": 1}, permissions=MANAGE.value)
            )
            assert done["flags"] == 64
            assert done["content"] == "Training run #1 is cancelled; it had not started."
            assert run_row(1).status is RunStatus.CANCELLED
            # the follower's last word, on the first interaction's webhook
            (final,) = await h.fake.wait_for("POST", rf"/webhooks/\d+/{first['token']}$")
            assert "was cancelled" in final.json["content"]

            h.inject(h.payloads.slash("retrain", {}, permissions=MANAGE.value))
            await until_run(2)
            with session_scope(bot_settings.sqlalchemy_url) as s:
                s.get(TrainingRun, 2).status = RunStatus.RUNNING
            stopping = await answer(
                h, h.payloads.slash("retrain", {"cancel": 2}, permissions=MANAGE.value)
            )
            assert "stops at its next step" in stopping["content"]
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
    with session_scope(bot_settings.sqlalchemy_url) as s:
        cancels = [
            (r.user_discord_id, r.allowed)
            for r in s.scalars(select(AuditLog).order_by(AuditLog.id))
            if r.action == "retrain" and "cancel=" in (r.detail or "")
        ]
    assert (50, False) in cancels and [ok for _, ok in cancels].count(True) == 2
