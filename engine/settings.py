"""One typed settings object, read from the environment and `.env` (see `.env.example`).

Defaults are the embedded single-machine ones: SQLite, a `filesystem://` broker, a local artifact
folder, CPU unless CUDA is there. At scale only these values change.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine import setting_checks as checks
from engine.music.catalog import MAX_BARS_CEILING

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_PATH = PACKAGE_DIR / "data" / "motif-default.pt"
DEFAULT_CORPUS_PATH = PACKAGE_DIR / "data" / "corpus.npz"


SECRET_URL_FIELDS = ("database_url", "broker_url", "result_backend", "artifact_url")
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def hide_password(url: str) -> str:
    """`scheme://user:secret@host/…` → `scheme://user:***@host/…` (URLs of any scheme)."""
    return _URL_PASSWORD.sub(r"\1***@", url)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MOTIF_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
    )

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Path("var")
    database_url: str = ""  # empty: sqlite:///<data_dir>/motif.db
    broker_url: str = ""  # empty: filesystem:// with folders under <data_dir>/broker
    result_backend: str = ""  # empty: db+sqlite:///<data_dir>/celery-results.db
    artifact_url: str = ""  # empty: <data_dir>/artifacts; or s3://bucket/prefix, any fsspec URL
    output_dir: Path = Path("out")  # where `motif compose` writes its files

    # --- model and generation ----------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(default=1, ge=0, le=256)  # per worker process; 0 = torch's default
    default_model_path: Path = DEFAULT_MODEL_PATH
    corpus_path: Path = DEFAULT_CORPUS_PATH
    max_bars: int = Field(default=64, ge=1, le=MAX_BARS_CEILING)
    default_bars: int = Field(default=8, ge=1, le=MAX_BARS_CEILING)
    batch_size: int = Field(default=32, ge=1, le=256)
    batch_wait_ms: int = Field(default=50, ge=0, le=5000)
    keep_checkpoints: int = Field(default=5, ge=1)
    gate_nll_tolerance: float = Field(default=0.02, ge=0.0)

    # --- rendering ---------------------------------------------------------------------------
    soundfont: str = ""  # empty: the TimGM6mb.sf2 that pretty_midi ships
    audio_format: Literal["ogg", "mp3"] = "ogg"
    upload_cap_mib: float = Field(default=10.0, gt=0)
    max_audio_s: float = Field(default=300.0, gt=0)
    # 32 kHz: the General MIDI SoundFonts put under -48 dB of their energy above 16 kHz, and it
    # renders, measures and encodes a quarter faster than 44.1 kHz (docs/benchmarks.md)
    sample_rate: int = 32000
    inline_image: Literal["score", "pianoroll"] = "score"  # /compose's `image` option overrides

    # --- queue and reliability ---------------------------------------------------------------
    queue_cap: int = Field(default=500, ge=1)
    user_rate_per_min: int = Field(default=6, ge=1)
    user_max_concurrent: int = Field(default=2, ge=1)
    guild_max_open: int = Field(default=20, ge=1)  # open jobs of one server, all its users
    stale_after_s: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    reaper_interval_s: float = Field(default=5.0, gt=0)
    # a queued (or rendering) row whose message is this old while its stage sits idle is re-sent
    claim_lease_s: float = Field(default=30.0, gt=0)  # a generating row's claimant beats ≤ 2 s
    resend_after_s: float = Field(default=10.0, gt=0)
    broker_timeout_s: float = Field(default=5.0, gt=0)  # connect and socket timeouts on sends
    # kombu retries a refused connect with sleeps in between: this bounds them (0: one try)
    broker_connect_retries: int = Field(default=0, ge=0, le=100)
    worker_heartbeat_s: float = Field(default=5.0, gt=0)
    broker_polling_interval_s: float = Field(default=0.1, gt=0)
    # Celery's soft limit (the task fails with a clear message); the hard one, a little later,
    # kills a task stuck in C code (verovio, FluidSynth). Rendering stays under stale_after_s.
    render_time_limit_s: float = Field(default=90.0, gt=0)
    generate_time_limit_s: float = Field(default=600.0, gt=0)

    # --- Discord -----------------------------------------------------------------------------
    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_TOKEN", "MOTIF_DISCORD_TOKEN")
    )
    dev_guild_id: int | None = None
    # The one server whose managers are Motif admins; admin commands exist there only. The model
    # is global, so a manager of any other server (anyone can add the bot to their own) is not.
    home_guild_id: int | None = None
    admin_user_ids: str = ""  # comma-separated user ids allowed to run admin commands
    admin_role_ids: str = ""  # comma-separated role ids (of the home guild) allowed likewise
    owner_user_ids: str = ""  # comma-separated user ids allowed to sync commands globally
    progress_edit_interval_s: float = Field(default=2.0, ge=0.5)

    log_level: str = "INFO"

    @field_validator("data_dir", "output_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        value = value.expanduser()
        checks.check_folder(value)
        return value

    @field_validator("default_model_path", "corpus_path", mode="after")
    @classmethod
    def _file(cls, value: Path) -> Path:
        value = value.expanduser()
        checks.check_file(value)
        return value

    @field_validator("soundfont", mode="after")
    @classmethod
    def _soundfont(cls, value: str) -> str:
        if value:
            checks.check_file(Path(value).expanduser())
        return value

    # Each URL is checked by scheme, with its driver or transport installed (engine.setting_checks).
    @field_validator("database_url", mode="after")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value:
            checks.check_database_url(value)
        return value

    @field_validator("broker_url", mode="after")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if value:
            checks.check_broker_url(value)
        return value

    @field_validator("result_backend", mode="after")
    @classmethod
    def _result_backend(cls, value: str) -> str:
        if value:
            checks.check_result_backend(value)
        return value

    @field_validator("artifact_url", mode="after")
    @classmethod
    def _artifact_url(cls, value: str) -> str:
        if value:
            checks.check_artifact_url(value)
        return value

    @field_validator("log_level", mode="after")
    @classmethod
    def _log_level(cls, value: str) -> str:
        return checks.check_log_level(value)

    def __repr_args__(self):
        # repr(settings) and str(settings) end up in logs and tracebacks: no passwords there.
        for name, value in super().__repr_args__():
            if name in SECRET_URL_FIELDS and isinstance(value, str):
                value = hide_password(value)
            yield name, value

    # --- derived values ----------------------------------------------------------------------
    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'motif.db').resolve()}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        return f"db+sqlite:///{(self.data_dir / 'celery-results.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        return self.artifact_url or str((self.data_dir / "artifacts").resolve())

    @property
    def soundfont_path(self) -> Path:
        if self.soundfont:
            return Path(self.soundfont).expanduser()
        import pretty_midi  # light: no torch

        return Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"

    @property
    def upload_cap_bytes(self) -> int:
        return int(self.upload_cap_mib * 1024 * 1024)

    @staticmethod
    def _ids(text: str) -> frozenset[int]:
        return frozenset(int(p) for p in text.replace(" ", "").split(",") if p.isdigit())

    @property
    def admin_users(self) -> frozenset[int]:
        return self._ids(self.admin_user_ids)

    @property
    def admin_roles(self) -> frozenset[int]:
        return self._ids(self.admin_role_ids)

    @property
    def owners(self) -> frozenset[int]:
        return self._ids(self.owner_user_ids)


def bad_setting_line(exc: Exception) -> str:
    """One line for a settings error: the setting, its value (password hidden, a token never
    shown) and what is accepted. `exc` is pydantic's ValidationError; anything else is shown
    by its first line."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ()))
            msg = str(first.get("msg", "")).removeprefix("Value error, ")
            value = first.get("input")
        except Exception:  # noqa: BLE001 - fall back to the text below
            pass
        else:
            name = (
                field.upper() if field.upper().startswith("DISCORD") else f"MOTIF_{field.upper()}"
            )
            if "token" in field.lower():
                shown = "***"
            elif isinstance(value, str | int | float | Path):
                shown = hide_password(str(value))
            else:
                shown = ""
            return f"bad setting {name}={shown!r}: {msg}" if shown else f"bad setting {name}: {msg}"
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    # MOTIF_ENV_FILE names another file to read; set empty, no file is read (the environment
    # alone: how the tests start workers, so a developer's `.env` never leaks into them)
    env_file = os.environ.get("MOTIF_ENV_FILE", ".env")
    return Settings(_env_file=env_file or None)
