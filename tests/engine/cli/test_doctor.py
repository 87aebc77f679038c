"""`motif doctor` and `motif invite`: a server owner's checks before the first /compose."""

from __future__ import annotations

import argparse
import base64
import logging
import re
import subprocess
import sys
from urllib.parse import parse_qs, urlparse

import discord

from bot.client import INTENTS
from bot.invite import PERMISSIONS, SCOPES, USES, application_id, invite_url, privileged_intents
from engine.cli import build_parser
from engine.store import db
from engine.worker.lifecycle import WorkerPresence
from tests.conftest import ROOT, make_settings, settings_env

APP_ID = 1234567890123456789
TOKEN = base64.b64encode(str(APP_ID).encode()).decode().rstrip("=") + ".GhIjKl." + "a1_-" * 10


def motif(settings, *argv: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = settings_env(settings)
    env.pop("DISCORD_TOKEN", None)
    if token is not None:
        env["DISCORD_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "engine.cli", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def lines(out: str) -> dict[str, str]:
    """item -> status of each doctor line."""
    found = {}
    for line in out.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("ok", "warn", "FAIL"):
            found[rest.strip().split(":", 1)[0]] = status
    return found


def test_a_fresh_setup_fails_and_says_what_is_missing(tmp_path):
    settings = make_settings(tmp_path)
    done = motif(settings, "doctor")
    assert done.returncode == 1, done.stdout + done.stderr
    got = lines(done.stdout)
    assert got["settings"] == "ok" and got["broker"] == "ok"
    assert got["database"] == "FAIL" and "motif db upgrade" in done.stdout
    assert got["workers"] == "FAIL" and got["token"] == "FAIL"
    assert got["home server"] == got["admins"] == got["commands"] == "warn"
    assert done.stdout.splitlines()[-1].startswith("/compose cannot work: fix database")


def test_a_ready_setup_passes_with_one_line_per_item(tmp_path, tiny_model_path):
    # (a heartbeat a minute: the row stays fresh while the command starts on a busy machine)
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, home_guild_id=42,
                             dev_guild_id=42, admin_user_ids="7", worker_heartbeat_s=60.0)  # fmt: skip
    db.upgrade(settings.sqlalchemy_url)
    WorkerPresence(settings, "motif-1@here", "gpu,cpu,train", "cpu").beat()  # a live worker
    done = motif(settings, "doctor", token=TOKEN)
    assert done.returncode == 0, done.stdout + done.stderr
    got = lines(done.stdout)
    assert set(got) == {"settings", "database", "broker", "workers", "model", "FluidSynth",
                        "SoundFont", "token", "home server", "admins", "commands"}  # fmt: skip
    assert all(v == "ok" for k, v in got.items() if k != "FluidSynth"), done.stdout
    assert f"client_id={APP_ID}" in done.stdout  # the token's application, and its invite
    assert done.stdout.splitlines()[-1] == "/compose is ready."


def test_a_malformed_token_or_a_worker_without_the_gpu_queue_fails(tmp_path, tiny_model_path):
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, worker_heartbeat_s=60.0)
    db.upgrade(settings.sqlalchemy_url)
    WorkerPresence(settings, "motif-1@here", "cpu", "cpu").beat()
    done = motif(settings, "doctor", token="not a token")
    assert done.returncode == 1
    got = lines(done.stdout)
    assert got["token"] == "FAIL" and "does not look like a bot token" in done.stdout
    assert got["workers"] == "FAIL" and "gpu queue" in done.stdout


def test_invite_prints_the_url_with_the_scopes_and_permissions_the_bot_uses(tmp_path):
    settings = make_settings(tmp_path)
    done = motif(settings, "invite", token=TOKEN)
    assert done.returncode == 0, done.stderr
    query = parse_qs(urlparse(done.stdout.strip()).query)
    assert query["client_id"] == [str(APP_ID)]
    assert query["scope"] == [" ".join(SCOPES)] == ["bot applications.commands"]
    granted = discord.Permissions(int(query["permissions"][0]))
    # exactly the bits of the permissions the code uses (USES), none besides
    assert granted.value == sum(discord.Permissions(**{name: True}).value for name in USES)
    done = motif(settings, "invite", "--client-id", "99")
    assert done.stdout.strip() == invite_url(99)
    done = motif(settings, "invite")
    assert done.returncode == 2 and "--client-id" in done.stderr


def test_each_permission_asked_for_is_used_by_the_bots_code_and_no_intent_is_privileged():
    """The invite asks for what the posting code needs, nothing more: a channel post with an
    embed and files, a reply to the requester's message. And no intent needs the portal's
    privileged switches."""
    code = (ROOT / "bot" / "destinations.py").read_text()
    needs = {
        "send_messages": "channel.send(" in code,
        "embed_links": "embed=embed" in code,
        "attach_files": "files=[u.file() for u in uploads]" in code,
        "read_message_history": 'kwargs["reference"] = self.reference' in code,
        "view_channel": "self.bot.get_channel(self.channel_id)" in code,
        "send_messages_in_threads": "channel.send(" in code,
    }
    assert set(needs) == set(USES) and all(needs.values()), needs
    assert PERMISSIONS.administrator is False and PERMISSIONS.manage_messages is False
    assert privileged_intents(INTENTS) == []
    assert privileged_intents(discord.Intents(message_content=True)) == ["message_content"]


def test_a_token_names_its_application_and_anything_else_does_not():
    assert application_id(TOKEN) == APP_ID
    assert application_id("") is None and application_id("abc.def.ghi") is None
    assert application_id(TOKEN.replace(".", "-")) is None


def test_the_readmes_server_path_names_real_commands_settings_and_doctors_last_line():
    """A server owner follows the README alone (issue #25): its numbered path copies the
    settings file, names only `motif` commands that exist and settings that `.env.example` has,
    and waits for the line a ready setup's doctor prints (the test above)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run it in your server", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^\d\. ", section, re.M)) == 5
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = set(re.findall(r"`motif (\w+)", section))
    assert {"db", "worker", "doctor", "invite", "bot"} <= commands <= set(sub.choices)
    example = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"`((?:MOTIF|DISCORD)_[A-Z_]+)`", section))
    assert {"DISCORD_TOKEN", "MOTIF_DEV_GUILD_ID", "MOTIF_HOME_GUILD_ID"} <= named
    assert all(re.search(rf"^{name}=", example, re.M) for name in named), named
    assert "`cp .env.example .env`" in section and '"/compose is ready."' in section


def test_a_bad_setting_an_unreachable_broker_and_a_file_that_is_no_soundfont_fail(
    tmp_path, tiny_model_path, monkeypatch, capsys
):
    """The failing side of the lines the ready setup shows as ok: each names what is wrong."""
    from engine.cli.doctor import cmd_doctor, diagnose
    from engine.settings import get_settings

    fake = tmp_path / "piano.sf2"
    fake.write_bytes(b"RIFF....WAVEfmt a sound, not a SoundFont")
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, soundfont=str(fake),
                             broker_url="redis://127.0.0.1:1/0")  # fmt: skip
    db.upgrade(settings.sqlalchemy_url)
    found = {f.item: f for f in diagnose(settings)}
    assert found["broker"].status == "FAIL" and "broker unreachable" in found["broker"].detail
    assert found["SoundFont"].status == "FAIL" and "not a SoundFont" in found["SoundFont"].detail
    assert found["database"].status == found["model"].status == "ok"

    monkeypatch.setenv("MOTIF_ENV_FILE", "")
    monkeypatch.setenv("MOTIF_MAX_BARS", "lots")
    get_settings.cache_clear()
    try:
        assert cmd_doctor(argparse.Namespace()) == 1
    finally:
        get_settings.cache_clear()
        logging.disable(logging.NOTSET)  # cmd_doctor quiets the libraries for its process
    line, last = capsys.readouterr().out.splitlines()  # nothing else is asked without settings
    assert line.startswith("FAIL  settings: bad setting MOTIF_MAX_BARS='lots': Input should be")
    assert last == "/compose cannot work: fix settings."
