from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import inspect

from engine.errors import SchemaOutOfDate, ServiceUnavailable
from engine.store import db
from tests.conftest import ROOT

TABLES = {
    "users",
    "tunes",
    "requests",
    "artifacts",
    "models",
    "training_runs",
    "feedback",
    "workers",
    "audit_log",
}


def _roundtrip(url: str) -> None:
    db.upgrade(url)
    assert db.current_revision(url) == db.head_revision(url)
    assert set(inspect(db.engine_for(url)).get_table_names()) >= TABLES
    db.downgrade(url, "base")
    assert db.current_revision(url) is None
    assert not TABLES & set(inspect(db.engine_for(url)).get_table_names())
    db.upgrade(url)
    assert db.current_revision(url) == db.head_revision(url)


def test_migrations_upgrade_and_downgrade_on_sqlite(tmp_path):
    _roundtrip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.services
def test_migrations_upgrade_and_downgrade_on_postgres(pg_url):
    _roundtrip(pg_url)


def test_refuses_out_of_date_schema_and_names_the_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db.upgrade(url)
    db.downgrade(url, "base")
    # An existing database at an older revision is never migrated implicitly...
    from sqlalchemy import text

    with db.engine_for(url).begin() as conn:
        conn.execute(text("CREATE TABLE something_else (id integer)"))
    with pytest.raises(SchemaOutOfDate, match="motif db upgrade"):
        db.ensure_schema(url, auto_create=True)


def test_brand_new_embedded_database_is_created(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    db.ensure_schema(url, auto_create=True)
    assert db.current_revision(url) == db.head_revision(url)


def test_unreachable_database_is_a_clear_error():
    with pytest.raises(ServiceUnavailable, match="unreachable"):
        db.current_revision("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_the_migrations_build_exactly_the_orm_schema(tmp_path):
    """A column added to engine/store/records.py without a migration (or the reverse) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from engine.store.records import Base

    url = f"sqlite:///{tmp_path / 'schema.db'}"
    db.upgrade(url)
    with db.engine_for(url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


@pytest.mark.services
def test_the_postgres_fixture_uses_a_database_of_its_own(request):
    """`pg_url` creates a uniquely named database; what else lives on the server (here a table
    this test made, uniquely named, in the shared database) survives it."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    from tests.conftest import PG_URL, port_open

    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    sentinel = f"motif_sentinel_{uuid.uuid4().hex[:12]}"
    shared = create_engine(PG_URL)
    try:
        with shared.begin() as conn:
            conn.execute(text(f"CREATE TABLE {sentinel} (x int)"))
        url = request.getfixturevalue("pg_url")
        name = make_url(url).database
        assert name != make_url(PG_URL).database and name.startswith("motif_test_")
        db.upgrade(url)
        assert "requests" in inspect(db.engine_for(url)).get_table_names()
        assert sentinel in inspect(shared).get_table_names()
        other = request.getfixturevalue("pg_url")  # one per test: the same database again
        assert other == url
    finally:
        with shared.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {sentinel}"))
        shared.dispose()


def _ensure_at_once(url: str, n: int = 4) -> list[subprocess.CompletedProcess[str]]:
    code = (
        "import sys; from engine.store.db import ensure_schema; "
        "ensure_schema(sys.argv[1], auto_create=True); print('ok')"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    return [
        subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs
    ]


def test_first_use_by_several_processes_at_once_migrates_once_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh' / 'motif.db'}"
    for done in _ensure_at_once(url):
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert db.current_revision(url) == db.head_revision(url)


def test_first_use_by_several_processes_at_once_migrates_once_on_postgres(own_pg_database):
    url, _ = own_pg_database
    for done in _ensure_at_once(url):
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    assert db.current_revision(url) == db.head_revision(url)


def test_a_database_server_that_never_answers_is_a_clear_error_after_the_connect_timeout(tmp_path):
    """A port that accepts connections but never speaks: bounded wait, then ServiceUnavailable."""
    import socket
    import threading
    import time

    from engine.service.requests import JobService, Requester
    from tests.conftest import make_settings

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # and say nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    try:
        settings = make_settings(
            tmp_path, database_url=f"postgresql+psycopg://x@127.0.0.1:{port}/x"
        )
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            JobService(settings).history(Requester(discord_id=1))
        assert time.monotonic() - started < db.CONNECT_TIMEOUT_S * 3  # bounded, not a hang
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def _hold_write_lock_on_a_new_file(path, seconds: float) -> threading.Thread:
    """Another writer on a brand-new (rollback-journal) file: a write lock held for `seconds`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE other_writer (x INTEGER)")

    def release() -> None:
        time.sleep(seconds)
        writer.execute("COMMIT")
        writer.close()

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    return thread


def test_switching_a_new_file_to_wal_waits_for_another_writer_instead_of_failing(tmp_path):
    """SQLite answers the WAL switch with 'locked' at once, busy handler skipped, while another
    connection writes (CI saw it when four processes opened one new database): it is retried."""
    path = tmp_path / "fresh" / "motif.db"
    holder = _hold_write_lock_on_a_new_file(path, 0.5)
    url = f"sqlite:///{path}"
    with db.make_engine(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert "other_writer" in inspect(conn).get_table_names()  # it waited for the commit
    holder.join()


def test_a_writer_that_never_lets_go_is_still_a_bounded_error(tmp_path):
    path = tmp_path / "fresh" / "motif.db"
    holder = _hold_write_lock_on_a_new_file(path, 2.0)
    cur = sqlite3.connect(path, timeout=0.05).cursor()
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db.use_wal(cur, wait_s=0.3)
    assert time.monotonic() - started < 1.8  # gave up at its bound, not when the writer let go
    holder.join()


def test_origin_is_an_enum_over_the_same_string_column(tmp_path):
    """`Request.origin` reads back as a RequestOrigin; the column stays String(16) (the schema
    test above sees no change), so rows written before the enum read the same."""
    from sqlalchemy import select, text

    from engine.store.records import Request, RequestKind, RequestOrigin, RequestStatus

    url = f"sqlite:///{tmp_path / 'origin.db'}"
    db.upgrade(url)
    with db.session_scope(url) as session:
        session.add(
            Request(origin="menu", kind=RequestKind.COMPOSE, params={}, status=RequestStatus.QUEUED)
        )
    with db.session_scope(url) as session:
        assert session.scalars(select(Request)).one().origin is RequestOrigin.MENU
        assert session.scalar(text("SELECT origin FROM requests")) == "menu"
