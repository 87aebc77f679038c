"""Which model serves: registering versions, and the shipped default on a fresh install."""

from __future__ import annotations

from sqlalchemy import event, func, select

from engine.store.db import engine_for, session_scope
from engine.store.models import ensure_default_model, file_version, register_checkpoint
from engine.store.records import ModelStatus, ModelVersion
from tests.conftest import make_settings


def test_two_workers_registering_the_default_at_once_both_succeed(tmp_path, tiny_model_path):
    """The first start of two workers: the second registers the same default version between
    the first one's look and its insert (a real second writer, timed by a hook on the
    engine's own statements). Neither fails, and one row stays, active."""
    from engine.store import db

    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    db.upgrade(settings.sqlalchemy_url)
    version = file_version(tiny_model_path)
    raced: list[str] = []

    def other_worker_first(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO MODELS") and not raced:
            raced.append(statement)
            register_checkpoint(
                settings, tiny_model_path.read_bytes(), version, status=ModelStatus.ACTIVE
            )

    engine = engine_for(settings.sqlalchemy_url)
    event.listen(engine, "before_cursor_execute", other_worker_first)
    try:
        assert ensure_default_model(settings) == version
    finally:
        event.remove(engine, "before_cursor_execute", other_worker_first)
    assert raced  # the other worker did insert first
    with session_scope(settings.sqlalchemy_url) as s:
        rows = list(s.scalars(select(ModelVersion)))
        assert [(r.version, r.active, r.status) for r in rows] == [
            (version, True, ModelStatus.ACTIVE)
        ]


def test_registering_a_version_twice_keeps_the_first_row(tmp_path, tiny_model_path):
    from engine.store import db

    settings = make_settings(tmp_path)
    db.upgrade(settings.sqlalchemy_url)
    data = tiny_model_path.read_bytes()
    register_checkpoint(settings, data, "v1", status=ModelStatus.CANDIDATE, metrics={"a": 1})
    register_checkpoint(settings, data, "v1", status=ModelStatus.ACTIVE, metrics={"a": 2})
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.scalar(select(func.count(ModelVersion.id))) == 1
        row = s.scalar(select(ModelVersion))
        assert row.metrics == {"a": 1} and row.status is ModelStatus.CANDIDATE and not row.active
