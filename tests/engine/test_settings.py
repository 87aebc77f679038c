from __future__ import annotations

import re

from engine.settings import Settings
from tests.conftest import ROOT


def test_every_setting_is_in_env_example_and_nothing_else():
    text = (ROOT / ".env.example").read_text()
    keys = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    expected = {
        f"MOTIF_{name.upper()}" for name in Settings.model_fields if name != "discord_token"
    }
    expected.add("DISCORD_TOKEN")
    assert keys == expected


def test_env_example_values_parse(monkeypatch, tmp_path):
    text = (ROOT / ".env.example").read_text()
    for key, value in re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", text, flags=re.M):
        monkeypatch.setenv(key, value)
    s = Settings(_env_file=None)
    assert s.celery_broker_url == "filesystem://" and s.sqlalchemy_url.startswith("sqlite:///")
    assert s.discord_token is None or s.discord_token.get_secret_value() == ""
    assert s.soundfont_path.exists()


def test_test_settings_ignore_the_developers_environment_and_dotenv(monkeypatch, tmp_path):
    """A developer's production URLs, in the environment or in `.env`, never reach a test."""
    from tests.conftest import make_settings

    dev = tmp_path / "checkout"
    dev.mkdir()
    (dev / ".env").write_text(
        "MOTIF_DATABASE_URL=postgresql+psycopg://prod@db.example/motif\n"
        "MOTIF_ARTIFACT_URL=s3://prod-bucket/motif\nMOTIF_ADMIN_USER_IDS=99\n"
    )
    monkeypatch.chdir(dev)
    monkeypatch.setenv("MOTIF_BROKER_URL", "redis://prod-redis:6379/0")
    monkeypatch.setenv("MOTIF_DEVICE", "cuda")
    s = make_settings(tmp_path)
    assert s.sqlalchemy_url == f"sqlite:///{(tmp_path / 'var' / 'motif.db').resolve()}"
    assert s.celery_broker_url == "filesystem://" and s.device == "auto"
    assert s.artifact_root == str((tmp_path / "var" / "artifacts").resolve())
    assert s.admin_users == frozenset()


def test_a_worker_subprocess_sees_the_tests_settings_and_no_dotenv(tmp_path):
    """What `settings_env` hands a worker: the test's values, and no `.env` read from its
    working directory (here one full of production values)."""
    import json
    import subprocess
    import sys

    from tests.conftest import make_settings, settings_env

    dev = tmp_path / "checkout"
    dev.mkdir()
    (dev / ".env").write_text(
        "MOTIF_DATABASE_URL=postgresql+psycopg://prod@db.example/motif\n"
        "MOTIF_BROKER_URL=redis://prod-redis:6379/0\nMOTIF_ADMIN_USER_IDS=99\n"
    )
    s = make_settings(tmp_path)
    code = (
        "import json; from engine.settings import get_settings as g; s = g(); "
        "print(json.dumps([s.sqlalchemy_url, s.celery_broker_url, s.admin_user_ids]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=dev, env=settings_env(s), capture_output=True,
        text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert json.loads(out) == [s.sqlalchemy_url, "filesystem://", ""]


def test_motif_env_file_names_the_file_to_read(monkeypatch, tmp_path):
    from engine.settings import get_settings

    (tmp_path / "motif.env").write_text("MOTIF_MAX_BARS=12\n")
    (tmp_path / ".env").write_text("MOTIF_MAX_BARS=20\n")
    monkeypatch.chdir(tmp_path)
    try:
        get_settings.cache_clear()
        assert get_settings().max_bars == 20
        get_settings.cache_clear()
        monkeypatch.setenv("MOTIF_ENV_FILE", str(tmp_path / "motif.env"))
        assert get_settings().max_bars == 12
        get_settings.cache_clear()
        monkeypatch.setenv("MOTIF_ENV_FILE", "")
        assert get_settings().max_bars == 64
    finally:
        get_settings.cache_clear()


def test_repr_and_str_of_settings_hide_url_passwords():
    s = Settings(
        _env_file=None,
        database_url="postgresql+psycopg://motif:hunter2@db:5432/motif",
        broker_url="amqp://guest:s3cret@rabbit:5672//",
        result_backend="redis://:r3dis@redis:6379/1",
    )
    for text in (repr(s), str(s)):
        assert "hunter2" not in text and "s3cret" not in text and "r3dis" not in text
        assert "motif:***@db:5432" in text and "redis://:***@redis" in text
    assert s.sqlalchemy_url == "postgresql+psycopg://motif:hunter2@db:5432/motif"  # still usable
