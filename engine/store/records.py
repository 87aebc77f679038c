"""SQL records (SQLAlchemy 2 typed ORM): who asked for what, the tunes, the files, the models.

The request row is the source of truth for a job's state; Celery messages only carry its id.
No torch here: the bot imports this module.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


# A worker is alive while its presence row is younger than this many heartbeats (the reaper,
# the outbox, `/stats`, `motif compose` and the health check all ask the same question).
ALIVE_HEARTBEATS = 4


def alive_since(heartbeat_s: float, now: datetime | None = None) -> datetime:
    """The oldest `last_seen` of a worker still counted alive."""
    return (now or utcnow()) - timedelta(seconds=heartbeat_s * ALIVE_HEARTBEATS)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class RequestKind(enum.StrEnum):
    COMPOSE = "compose"
    EXTEND = "extend"
    VARIATION = "variation"
    REROLL = "reroll"


class RequestStatus(enum.StrEnum):
    QUEUED = "queued"
    GENERATING = "generating"
    RENDERING = "rendering"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.DONE, RequestStatus.FAILED, RequestStatus.CANCELLED)


RUNNING_STATES = (RequestStatus.GENERATING, RequestStatus.RENDERING)
OPEN_STATES = (RequestStatus.QUEUED, *RUNNING_STATES)


class RequestOrigin(enum.StrEnum):
    """Where a request came from."""

    CLI = "cli"
    SLASH = "slash"  # /compose
    MENU = "menu"  # the message context menu
    MENTION = "mention"  # a message mentioning the bot
    BUTTON = "button"  # reroll, extend, vary under a result


class TuneSource(enum.StrEnum):
    SEED = "seed"
    GENERATION = "generation"
    CORPUS = "corpus"
    UPLOAD = "upload"


class ArtifactKind(enum.StrEnum):
    MIDI = "midi"
    AUDIO = "audio"
    IMAGE = "image"  # the piano roll
    SCORE = "score"  # the engraved score's first page (PNG)
    SCORE_2 = "score-2"  # its second page, when it has one
    MUSICXML = "musicxml"
    PDF = "pdf"  # the whole engraved score


class ModelStatus(enum.StrEnum):
    CANDIDATE = "candidate"
    ACTIVE = "active"
    REJECTED = "rejected"
    RETIRED = "retired"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


class _OriginColumn(TypeDecorator[RequestOrigin]):
    """`RequestOrigin` over the plain String(16) column it has always been (no schema change)."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else RequestOrigin(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> RequestOrigin | None:
        return None if value is None else RequestOrigin(value)


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native enum types): migrations stay simple on every backend.
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    discord_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    share_by_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Tune(Base):
    __tablename__ = "tunes"

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[TuneSource] = mapped_column(_enum(TuneSource))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200), default="")
    midi_key: Mapped[str] = mapped_column(String(300))
    note_count: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    consent: Mapped[bool] = mapped_column(Boolean, default=False)
    consent_at: Mapped[datetime | None]
    withdrawn_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_id: Mapped[int | None] = mapped_column(BigInteger)
    origin: Mapped[RequestOrigin] = mapped_column(_OriginColumn(), default=RequestOrigin.CLI)
    kind: Mapped[RequestKind] = mapped_column(_enum(RequestKind))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed_tune_id: Mapped[int | None] = mapped_column(ForeignKey("tunes.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"))
    result_tune_id: Mapped[int | None] = mapped_column(ForeignKey("tunes.id"))
    status: Mapped[RequestStatus] = mapped_column(_enum(RequestStatus), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    generating_at: Mapped[datetime | None]
    rendering_at: Mapped[datetime | None] = mapped_column(index=True)
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    heartbeat_at: Mapped[datetime | None]
    # the outbox: when this row's current message was last handed to the broker (None: never;
    # the reaper sends it). A queued row always has a message on its way.
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    # which bot process is posting the result, until when (a lease it renews while it watches)
    delivery_claimed_by: Mapped[str | None] = mapped_column(String(200))
    delivery_claimed_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # the claimant of the current stage (`host:pid`; None: nobody holds it) and the queues its
    # worker takes (`gpu,cpu`): a stage is busy while any worker taking its queue works
    worker: Mapped[str | None] = mapped_column(String(200))
    worker_queues: Mapped[str | None] = mapped_column(String(100))
    device: Mapped[str | None] = mapped_column(String(32))
    model_version: Mapped[str | None] = mapped_column(String(64))
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    notes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # e.g. {"shortened": true}
    error_user: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)

    artifacts: Mapped[list[Artifact]] = relationship(back_populates="request", lazy="selectin")
    # many-to-one walks (read on first use, from the session's identity map when loaded)
    user: Mapped[User | None] = relationship(foreign_keys=[user_id])
    seed_tune: Mapped[Tune | None] = relationship(foreign_keys=[seed_tune_id])
    result_tune: Mapped[Tune | None] = relationship(foreign_keys=[result_tune_id])


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("request_id", "kind", name="uq_artifact_request_kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    kind: Mapped[ArtifactKind] = mapped_column(_enum(ArtifactKind))
    key: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    request: Mapped[Request] = relationship(back_populates="artifacts")


class ModelVersion(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    checkpoint_key: Mapped[str] = mapped_column(String(500))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[ModelStatus] = mapped_column(_enum(ModelStatus))
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    parent_version: Mapped[str | None] = mapped_column(String(64))
    reject_reason: Mapped[str | None] = mapped_column(Text)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None]


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus), index=True)
    dataset_hash: Mapped[str | None] = mapped_column(String(64))
    dataset_size: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(200))
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    log: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("request_id", "user_id", name="uq_feedback_request_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    rating: Mapped[int] = mapped_column(Integer)  # +1 or -1
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """Live workers, for /status and for `motif compose` to know whether one is running."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200), unique=True)
    queues: Mapped[str] = mapped_column(String(100))
    device: Mapped[str | None] = mapped_column(String(32))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuditLog(Base):
    """Admin actions and refused attempts."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_discord_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(64))
    allowed: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
