"""Starting the bot: no torch, no token → exit 2, an old schema → a clear message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bot.main import run
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MOTIF_") and k != "DISCORD_TOKEN"
    }
    env["MOTIF_DATA_DIR"] = str(tmp_path / "var")
    return env


def test_no_bot_module_imports_torch(tmp_path):
    code = (
        "import importlib, pkgutil, sys, bot\n"
        "names = [m.name for m in pkgutil.walk_packages(bot.__path__, 'bot.')"
        " if m.name != 'bot.__main__']\n"
        "for name in names: importlib.import_module(name)\n"
        "assert 'bot.client' in sys.modules and 'bot.cogs.compose' in sys.modules\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib', 'fluidsynth', 'music21', 'verovio')"
        " if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_the_bot_holds_no_sql_and_no_torch():
    imports = re.compile(r"^\s*(from|import)\s+(sqlalchemy|torch|engine\.db)\b", re.M)
    for path in (ROOT / "bot").rglob("*.py"):
        text = path.read_text()
        found = {m.group(2) for m in imports.finditer(text)} | (
            {"session_scope"} if "session_scope(" in text else set()
        )
        if path.name == "main.py":
            found.discard("engine.store.db")  # startup checks the schema version, nothing else
        assert not found, f"{path.relative_to(ROOT)} uses {found}"


def test_python_m_bot_without_a_token_exits_2_with_a_clear_message(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "DISCORD_TOKEN is not set" in done.stderr


def test_an_out_of_date_schema_is_a_clear_message_not_a_traceback(tmp_path, capsys):
    token = "sekrit-token-value"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'old.db'}",
        DISCORD_TOKEN=token,
    )
    assert run(settings) == 2
    err = capsys.readouterr().err
    assert "motif db upgrade" in err and token not in err


def test_discord_out_of_reach_is_a_clear_message_not_a_traceback(
    tmp_path, capsys, caplog, monkeypatch
):
    import logging
    import socket

    import discord

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    token = "sekrit-token-value"
    settings = Settings(_env_file=None, data_dir=tmp_path, DISCORD_TOKEN=token)  # type: ignore[call-arg]
    caplog.set_level(logging.INFO, logger="discord")
    assert run(settings) == 2
    err = capsys.readouterr().err
    assert "motif bot: cannot reach Discord" in err and token not in err
    assert "Traceback" not in err
    logged = [r.getMessage() for r in caplog.records if r.name == "discord.client"]
    assert "logging in using static token" in logged  # discord.client's records get through …
    assert not any("voice will NOT be supported" in m for m in logged)  # … but not this noise


def test_the_bot_logs_its_invite_url_once_when_it_is_ready(bot_settings, jobs, caplog):
    """A new bot is in no server: its first start says how to add it, with the URL
    `motif invite` prints (and not again on a reconnect's READY)."""
    import asyncio
    import logging

    from bot.client import MotifBot
    from bot.invite import invite_url

    bot = MotifBot(bot_settings, jobs, sync_on_start=False)
    bot._connection.application_id = 1234567890123456789  # what READY tells a logged-in bot

    async def ready_twice() -> None:
        await bot.on_ready()
        await bot.on_ready()

    with caplog.at_level(logging.INFO, logger="bot.client"):
        asyncio.run(ready_twice())
    said = [r for r in caplog.records if invite_url(1234567890123456789) in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "no server yet" in said[0].getMessage()
