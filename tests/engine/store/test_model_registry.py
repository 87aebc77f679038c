"""Which model serves: registering versions, and the shipped default on a fresh install."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select

from engine.service import admin
from engine.service.requests import JobService
from engine.store.db import engine_for, session_scope
from engine.store.models import (
    Origin,
    VersionName,
    active_model,
    default_version,
    ensure_default_model,
    parse_version,
    register_checkpoint,
    run_version,
    train_version,
)
from engine.store.records import ModelStatus, ModelVersion
from tests.conftest import make_settings

AT = datetime(2026, 12, 7, 6, 30, 5, tzinfo=UTC)


def test_two_workers_registering_the_default_at_once_both_succeed(tmp_path, tiny_model_path):
    """The first start of two workers: the second registers the same default version between
    the first one's look and its insert (a real second writer, timed by a hook on the
    engine's own statements). Neither fails, and one row stays, active."""
    from engine.store import db

    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    db.upgrade(settings.sqlalchemy_url)
    version = default_version(tiny_model_path.read_bytes())
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


def test_new_versions_are_named_by_one_scheme_and_read_back():
    digest = default_version(b"weights")
    assert digest == "motif-default-" + hashlib.sha256(b"weights").hexdigest()[:10]
    assert default_version(b"weights") == digest != default_version(b"other weights")
    assert run_version(12, AT) == "motif-run-12-20261207063005"
    assert train_version(AT) == "motif-train-20261207063005"
    assert parse_version(digest) == VersionName(Origin.DEFAULT, digest[-10:])
    assert parse_version(run_version(12, AT)) == VersionName(Origin.RUN, "12-20261207063005")
    assert parse_version(train_version(AT)) == VersionName(Origin.TRAIN, "20261207063005")


@pytest.mark.parametrize(
    ("old", "read"),
    [
        ("default-0123456789", VersionName(Origin.DEFAULT, "0123456789")),
        ("run12-20261207063005", VersionName(Origin.RUN, "12-20261207063005")),
        ("motif-20261207-063005", VersionName(Origin.TRAIN, "20261207063005")),
        ("motif-default-v3", VersionName(Origin.DEFAULT, "v3")),  # the shipped releases' labels
        ("mine", None),  # `motif train --version mine`: a name someone chose
    ],
)
def test_older_names_are_still_read(old, read):
    assert parse_version(old) == read


def test_every_reader_of_the_active_version_sees_one_row_with_an_old_name(
    tmp_path, tiny_model_path
):
    """An install from before the one scheme: its active `default-<sha>` row stays the active
    model (nothing is registered again), for the worker, the admin commands and `/status`."""
    from engine.store import db

    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    db.upgrade(settings.sqlalchemy_url)
    data = tiny_model_path.read_bytes()
    register_checkpoint(settings, data, "default-0123456789", status=ModelStatus.ACTIVE)
    assert ensure_default_model(settings) == "default-0123456789"
    assert admin.active_version(settings) == "default-0123456789"
    assert admin.stats(settings).active_model == "default-0123456789"
    assert JobService(settings).queue_status().active_model == "default-0123456789"
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.scalar(select(func.count(ModelVersion.id))) == 1


def test_a_retired_default_is_made_active_again_when_none_is(tmp_path, tiny_model_path):
    from engine.store import db

    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    db.upgrade(settings.sqlalchemy_url)
    version = default_version(tiny_model_path.read_bytes())
    register_checkpoint(settings, tiny_model_path.read_bytes(), version, status=ModelStatus.RETIRED)
    with session_scope(settings.sqlalchemy_url) as s:
        assert active_model(s) is None
    assert ensure_default_model(settings) == version
    with session_scope(settings.sqlalchemy_url) as s:
        row = active_model(s)
        assert row is not None and row.version == version and row.status is ModelStatus.ACTIVE


def test_activating_a_version_leaves_exactly_one_active(tmp_path, tiny_model_path):
    from engine.store import db

    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    db.upgrade(settings.sqlalchemy_url)
    first = ensure_default_model(settings)
    candidate = run_version(1, AT)
    register_checkpoint(settings, b"candidate", candidate, status=ModelStatus.CANDIDATE)
    assert admin.activate_model(candidate, settings) == candidate
    assert admin.active_version(settings) == candidate
    assert admin.rollback(settings) == first == admin.active_version(settings)
    with session_scope(settings.sqlalchemy_url) as s:
        states = {m.version: (m.active, m.status) for m in s.scalars(select(ModelVersion))}
    assert states == {
        first: (True, ModelStatus.ACTIVE),
        candidate: (False, ModelStatus.RETIRED),
    }
