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
