"""`motif doctor`: is this setup ready for `/compose`? One line per item, worst last word first.

Each check prints `ok`, `warn` (works, but something is off) or `FAIL` (a `/compose` cannot
succeed); the exit status is 1 when any check failed, else 0. Nothing is changed.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from engine.errors import MotifError
from engine.health import Unhealthy, check_broker, check_schema
from engine.settings import Settings, bad_setting_line, get_settings
from engine.store.artifacts import store_for
from engine.store.db import session_scope
from engine.store.models import active_model
from engine.worker.process import live_workers

Status = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class Finding:
    status: Status
    item: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.item}: {self.detail}"


def _database(s: Settings) -> Finding:
    try:
        return Finding("ok", "database", check_schema(s).removeprefix("database "))
    except Unhealthy as exc:
        return Finding("FAIL", "database", str(exc))


def _broker(s: Settings) -> Finding:
    try:
        return Finding("ok", "broker", check_broker(s).removeprefix("broker "))
    except Unhealthy as exc:
        return Finding("FAIL", "broker", str(exc))


def _workers(s: Settings) -> Finding:
    try:
        queues = {q for row in live_workers(s) for q in row.split(",")}
    except MotifError as exc:
        return Finding("FAIL", "workers", exc.user_message)
    missing = [q for q in ("gpu", "cpu") if q not in queues]
    if missing:
        return Finding(
            "FAIL",
            "workers",
            f"no live worker takes the {' and '.join(missing)} "
            "queue(s): start one with `motif worker`",
        )
    return Finding("ok", "workers", f"live workers take {', '.join(sorted(queues))}")


def _model(s: Settings) -> Finding:
    try:
        with session_scope(s.sqlalchemy_url) as session:
            active = active_model(session)
            found = (active.version, active.checkpoint_key) if active else None
    except MotifError as exc:
        return Finding("FAIL", "model", exc.user_message)
    if found is not None:
        version, key = found
        if store_for(s.artifact_root).exists(key):
            return Finding("ok", "model", f"active {version}")
        return Finding("FAIL", "model", f"active {version}, but its checkpoint {key} is missing")
    if s.default_model_path.is_file():
        return Finding("ok", "model", f"the shipped default {s.default_model_path.name}")
    return Finding(
        "FAIL",
        "model",
        f"no active model and no {s.default_model_path}: train one "
        "(`motif train`) or set MOTIF_DEFAULT_MODEL_PATH",
    )


def _audio(s: Settings) -> list[Finding]:
    try:
        # deferred: engine.audio needs the `worker` extra, absent from the bot image
        from engine.audio.synth import BadSoundfont, check_soundfont, fluidsynth_available
    except ImportError as exc:
        note = f"not checked here ({exc.name} is not installed: the worker extra)"
        return [Finding("warn", "FluidSynth", note), Finding("warn", "SoundFont", note)]
    synth = (
        Finding("ok", "FluidSynth", "libfluidsynth loads")
        if fluidsynth_available()
        else Finding(
            "warn",
            "FluidSynth",
            "libfluidsynth missing: audio falls back to "
            "TinySoundFont (no reverb); `motif setup-audio` installs it",
        )
    )
    try:
        check_soundfont(s)
    except BadSoundfont as exc:
        return [synth, Finding("FAIL", "SoundFont", str(exc))]
    return [synth, Finding("ok", "SoundFont", str(s.soundfont_path))]


def _discord(s: Settings) -> list[Finding]:
    token = s.discord_token.get_secret_value().strip() if s.discord_token else ""
    try:
        # deferred: discord.py loads only for the bot's own checks
        from bot.invite import application_id, invite_url
    except ImportError as exc:
        return [Finding("warn", "token", f"not checked here ({exc.name} is not installed)")]
    if not token:
        found = Finding("FAIL", "token", "DISCORD_TOKEN is not set (docs/discord.md, step 3)")
    elif (app := application_id(token)) is None:
        found = Finding(
            "FAIL",
            "token",
            "DISCORD_TOKEN does not look like a bot token "
            "(three parts joined by dots): copy it again from the Bot page",
        )
    else:
        found = Finding(
            "ok", "token", f"a bot token of application {app}; invite: {invite_url(app)}"
        )
    return [found, *_admins(s)]


def _admins(s: Settings) -> list[Finding]:
    home = (
        Finding("ok", "home server", str(s.home_guild_id))
        if s.home_guild_id
        else Finding(
            "warn",
            "home server",
            "MOTIF_HOME_GUILD_ID is not set: the admin "
            "commands (/model, /retrain, /stats) are nowhere",
        )
    )
    admins = len(s.admin_users) + len(s.admin_roles)
    who = (
        Finding("ok", "admins", f"{len(s.admin_users)} user(s), {len(s.admin_roles)} role(s)")
        if admins
        else Finding(
            "warn",
            "admins",
            "MOTIF_ADMIN_USER_IDS and MOTIF_ADMIN_ROLE_IDS are "
            "empty: nobody may run the admin commands",
        )
    )
    commands = (
        Finding("ok", "commands", f"/compose is published to server {s.dev_guild_id} at start")
        if s.dev_guild_id
        else Finding(
            "warn",
            "commands",
            "MOTIF_DEV_GUILD_ID is empty: /compose shows only "
            "after an owner's `@Motif sync global` (up to an hour)",
        )
    )
    return [home, who, commands]


CHECKS: tuple[Callable[[Settings], Finding | list[Finding]], ...] = (
    _database,
    _broker,
    _workers,
    _model,
    _audio,
    _discord,
)


NEEDS_SCHEMA = (_workers, _model)  # they read tables: not asked before the schema is there


def diagnose(settings: Settings) -> list[Finding]:
    found: list[Finding] = [Finding("ok", "settings", "read (environment and .env)")]
    for check in CHECKS:
        if check in NEEDS_SCHEMA and found[1].status == "FAIL":
            item = check.__name__.strip("_")
            found.append(Finding("FAIL", item, "not checked until the database is migrated"))
            continue
        result = check(settings)
        found += result if isinstance(result, list) else [result]
    return found


def cmd_doctor(_: argparse.Namespace) -> int:
    logging.disable(logging.WARNING)  # the lines below, not the libraries' chatter
    try:
        settings = get_settings()
    except Exception as exc:  # noqa: BLE001 - a bad setting is a finding, not a traceback
        # the setting by its variable's name, its value shown (a token never), in one line
        print(Finding("FAIL", "settings", bad_setting_line(exc)).line())
        print("/compose cannot work: fix settings.")  # the last line names it, as below
        return 1
    findings = diagnose(settings)
    for f in findings:
        print(f.line())
    failed = [f.item for f in findings if f.status == "FAIL"]
    print(f"/compose {'cannot work: fix ' + ', '.join(failed) if failed else 'is ready'}.")
    return 1 if failed else 0


def cmd_invite(args: argparse.Namespace) -> int:
    # deferred: discord.py loads only for the bot's own commands
    from bot.invite import application_id, invite_url

    client_id = args.client_id
    if client_id is None:
        settings = get_settings()
        token = settings.discord_token.get_secret_value() if settings.discord_token else ""
        client_id = application_id(token)
        if client_id is None:
            raise MotifError(
                "no application id: set DISCORD_TOKEN (the bot's token names its application) "
                "or pass --client-id (the Application ID on the Developer Portal)"
            )
    print(invite_url(client_id))
    return 0


def add_setup_commands(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("doctor", help="check this setup, one line per item").set_defaults(
        func=cmd_doctor
    )
    x = sub.add_parser("invite", help="print the URL that adds the bot to a server")
    x.add_argument(
        "--client-id",
        type=int,
        default=None,
        help="the Application ID (default: read from DISCORD_TOKEN)",
    )
    x.set_defaults(func=cmd_invite)
