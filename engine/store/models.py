"""Which model serves requests: the `models` table says (engine.worker.loaded keeps it in memory).

The shipped default checkpoint is registered (copied into the artifact store) on first use, so a
fresh install composes with no setup. A worker notices a newly activated version at its next job.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.errors import NotFound
from engine.settings import Settings
from engine.store.artifacts import model_key, store_for
from engine.store.db import session_scope
from engine.store.records import ModelStatus, ModelVersion, utcnow

log = logging.getLogger(__name__)


def file_version(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return f"default-{digest[:10]}"


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
        active = session.scalar(select(ModelVersion.version).where(ModelVersion.active))
    if active:
        return active
    path = settings.default_model_path
    if not path.exists():
        raise NotFound(
            f"No model is active and the default checkpoint {path} is missing. "
            "Train one with `motif train` or set MOTIF_DEFAULT_MODEL_PATH."
        )
    version = file_version(path)
    meta: dict[str, Any] = {"source": str(path.name)}
    register_checkpoint(
        settings, path.read_bytes(), version, status=ModelStatus.ACTIVE, metrics=meta
    )
    with session_scope(settings.sqlalchemy_url) as session:
        # Two workers may race to register: exactly one row stays active.
        rows = list(session.scalars(select(ModelVersion).where(ModelVersion.active)))
        for extra in rows[1:]:
            extra.active = False
            extra.status = ModelStatus.RETIRED
        return rows[0].version


def checkpoint_key(settings: Settings, version: str) -> str:
    with session_scope(settings.sqlalchemy_url) as session:
        key = session.scalar(
            select(ModelVersion.checkpoint_key).where(ModelVersion.version == version)
        )
    if key is None:
        raise NotFound(f"no model version {version!r}.")
    return key
