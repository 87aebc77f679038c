"""Which model serves requests: the `models` table says (engine.worker.loaded keeps it in memory).

The shipped default checkpoint is registered (copied into the artifact store) on first use, so a
fresh install composes with no setup. A worker notices a newly activated version at its next job.
`active_model` is the one place that asks which version is active; `default_version`,
`run_version` and `train_version` name new versions, one scheme (docs/layout.md, "Artifact keys
and model versions").
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine.errors import NotFound
from engine.settings import Settings
from engine.store.artifacts import model_key, store_for
from engine.store.db import session_scope
from engine.store.records import ModelStatus, ModelVersion, utcnow

log = logging.getLogger(__name__)


# --- names: motif-<origin>-<ident> --------------------------------------------------------------


class Origin(StrEnum):
    """Where a model version came from: the middle word of its name."""

    DEFAULT = "default"  # a checkpoint file registered as it is (the shipped default)
    RUN = "run"  # a retraining run's candidate (`/retrain`, `motif retrain`)
    TRAIN = "train"  # trained on the command line (`motif train`)


@dataclass(frozen=True)
class VersionName:
    origin: Origin
    ident: str  # the file's content hash, `<run id>-<UTC time>`, the UTC time, or a release (v3)


def default_version(data: bytes) -> str:
    """A checkpoint file's version: named by its content, so two workers registering the same
    file at once name it alike (and a changed file is a new version)."""
    return f"motif-{Origin.DEFAULT}-{hashlib.sha256(data).hexdigest()[:10]}"


def run_version(run_id: int, at: datetime) -> str:
    """A retraining run's candidate. The time too: run ids start again with a fresh database,
    while an artifact store may keep the old run's checkpoint under the same key."""
    return f"motif-{Origin.RUN}-{run_id}-{at:%Y%m%d%H%M%S}"


def train_version(at: datetime) -> str:
    """A model trained on the command line without a `--version` of its own."""
    return f"motif-{Origin.TRAIN}-{at:%Y%m%d%H%M%S}"


_NAME = re.compile(r"motif-(default|run|train)-([a-z0-9][a-z0-9-]*)")
# Names written before the one scheme, still read: `default-<sha>` (a registered file),
# `run<id>-<time>` (a run's candidate), `motif-<date>-<time>` (training's own default label).
_OLD_NAMES = (
    (re.compile(r"default-([0-9a-f]{10})"), Origin.DEFAULT),
    (re.compile(r"run(\d+-\d{14})"), Origin.RUN),
    (re.compile(r"motif-(\d{8})-(\d{6})"), Origin.TRAIN),
)


def parse_version(name: str) -> VersionName | None:
    """The origin and ident of a version named by this scheme or an older one; None for a name
    someone chose (`motif train --version mine`)."""
    if found := _NAME.fullmatch(name):
        return VersionName(Origin(found[1]), found[2])
    for pattern, origin in _OLD_NAMES:
        if found := pattern.fullmatch(name):
            return VersionName(origin, "".join(found.groups()))
    return None


# --- the registry ------------------------------------------------------------------------------


def active_model(session: Session) -> ModelVersion | None:
    """The active version's row: the one query that asks (the first registered wins should two
    workers have raced to register at once)."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.active).order_by(ModelVersion.id).limit(1)
    ).first()


def activate(session: Session, row: ModelVersion) -> None:
    """Make `row` the active version and retire every other active one: exactly one stays."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.active, ModelVersion.id != row.id)
        .values(active=False, status=ModelStatus.RETIRED)
    )
    row.active = True
    row.status = ModelStatus.ACTIVE
    row.activated_at = utcnow()


def register_checkpoint(
    settings: Settings,
    data: bytes,
    version: str,
    *,
    status: ModelStatus,
    metrics: dict[str, Any] | None = None,
    parent_version: str | None = None,
    training_run_id: int | None = None,
    reject_reason: str | None = None,
) -> str:
    """Store a checkpoint's bytes and record it (idempotent on `version`)."""
    key = model_key(version)
    store = store_for(settings.artifact_root)
    if not store.exists(key):
        store.put(key, data)
    values = dict(
        version=version,
        checkpoint_key=key,
        metrics=metrics or {},
        status=status,
        active=status is ModelStatus.ACTIVE,
        parent_version=parent_version,
        training_run_id=training_run_id,
        reject_reason=reject_reason,
        activated_at=utcnow() if status is ModelStatus.ACTIVE else None,
        created_at=utcnow(),
    )
    with session_scope(settings.sqlalchemy_url) as session:
        # Insert or ignore, then read: two workers (or two pool children) registering the same
        # version at once both succeed, and the row the first one wrote is the one kept.
        session.execute(_insert(session).values(**values).on_conflict_do_nothing())
        if session.scalar(select(ModelVersion.id).where(ModelVersion.version == version)) is None:
            raise RuntimeError(f"model version {version!r} was neither inserted nor found")
    return version


def _insert(session):
    """INSERT … ON CONFLICT for the session's database (SQLite and PostgreSQL both have it)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(ModelVersion)


def ensure_default_model(settings: Settings) -> str:
    """The active version; registers the shipped default when no model is active yet."""
    with session_scope(settings.sqlalchemy_url) as session:
        active = active_model(session)
        if active is not None:
            return active.version
    path = settings.default_model_path
    if not path.exists():
        raise NotFound(
            f"No model is active and the default checkpoint {path} is missing. "
            "Train one with `motif train` or set MOTIF_DEFAULT_MODEL_PATH."
        )
    data = path.read_bytes()
    version = default_version(data)
    meta: dict[str, Any] = {"source": str(path.name)}
    register_checkpoint(settings, data, version, status=ModelStatus.ACTIVE, metrics=meta)
    with session_scope(settings.sqlalchemy_url) as session:
        # Two workers may race to register different files: the first registered stays active.
        # A default registered before and retired since was left as it was: it is made active.
        kept = (
            active_model(session)
            or session.scalars(select(ModelVersion).where(ModelVersion.version == version)).one()
        )
        activate(session, kept)
        return kept.version


def checkpoint_key(settings: Settings, version: str) -> str:
    with session_scope(settings.sqlalchemy_url) as session:
        key = session.scalar(
            select(ModelVersion.checkpoint_key).where(ModelVersion.version == version)
        )
    if key is None:
        raise NotFound(f"no model version {version!r}.")
    return key
