"""Database engine, sessions and the schema check (`motif db upgrade` runs Alembic)."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from engine.errors import SchemaOutOfDate, ServiceUnavailable, make_folder
from engine.settings import PACKAGE_DIR

log = logging.getLogger(__name__)

MIGRATIONS_DIR = PACKAGE_DIR.parent / "migrations"
# A database server that does not answer costs a request this long, then a clear error (libpq's
# minimum is 2 s). Bot handlers defer before touching the database, so it never costs the reply.
CONNECT_TIMEOUT_S = 3


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            return Path(path)
    return None


def _prepare_sqlite_folder(url: str) -> None:
    path = _sqlite_path(url)
    if path is not None:
        make_folder(path.parent, "database folder")


SQLITE_BUSY_S = 30


def use_wal(cur: sqlite3.Cursor, wait_s: float = SQLITE_BUSY_S) -> None:
    """Switch a SQLite file to WAL (it stays so), waiting while another process writes.

    The switch needs an exclusive lock. A connection that asks while another one holds a write
    lock gets "database is locked" at once: SQLite skips the busy handler there to avoid a
    deadlock. So a new database that several processes open together (one creating the schema)
    is retried here, within the same bound as any other busy wait.
    """
    deadline = time.monotonic() + wait_s
    pause = 0.01
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        _prepare_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # WAL lets the bot read while a worker writes; foreign keys are off by default.
            cur = dbapi_connection.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_S * 1000}")
            use_wal(cur)
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )


_engines: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = make_engine(url)
    return engine


def _forget_pooled_connections() -> None:
    # A forked worker child must not reuse the parent's pooled connections (SQLAlchemy's rule).
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_pooled_connections)


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


def lock_for_writing(session: Session) -> None:
    """Make this transaction a writer from its first statement, on SQLite (`BEGIN IMMEDIATE`):
    check-then-insert sequences (the limits) then run one at a time. Other databases lock rows
    (`SELECT … FOR UPDATE`) where they need to. Must come before any other statement."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))


@contextmanager
def session_scope(url: str, *, immediate: bool = False) -> Iterator[Session]:
    """A session that commits on success and rolls back (writing nothing) on any error.
    `immediate`: take SQLite's write lock first (see `lock_for_writing`)."""
    factory = session_factory(url)
    try:
        session = factory()
    except OperationalError as exc:  # pragma: no cover - connection at checkout
        raise ServiceUnavailable("The database is unreachable; try again shortly.") from exc
    try:
        if immediate:
            lock_for_writing(session)
        yield session
        session.commit()
    except OperationalError as exc:
        session.rollback()
        # Only what this session was writing is lost; rows written before are still there.
        raise ServiceUnavailable(
            "The database is unreachable right now; try again shortly.", detail=str(exc)
        ) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    _prepare_sqlite_folder(url)
    try:
        with engine_for(url).connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except OperationalError as exc:
        raise _unreachable(url, exc) from exc


@contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """One migrator at a time: a file lock beside a SQLite file, an advisory lock on Postgres.
    Others wait here, then find the schema done."""
    path = _sqlite_path(url)
    if path is not None:
        _prepare_sqlite_folder(url)
        lock = f"{path}.migrate.lock"
        try:
            fh = open(lock, "a")  # noqa: SIM115 - closed by the `with` below
        except OSError as exc:
            # a read-only (or full) database folder: no database can be written there either
            raise ServiceUnavailable(
                f"The database folder {path.parent} cannot be written: {lock} could not be "
                f"created ({exc.strerror or exc}).",
                detail=str(exc),
            ) from exc
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    if not url.startswith("postgresql"):
        yield
        return
    try:
        conn = engine_for(url).connect()
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        conn.commit()
    except OperationalError as exc:
        raise _unreachable(url, exc) from exc
    try:
        yield
    finally:
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()
        finally:
            conn.close()


MIGRATION_LOCK_KEY = 0x6D6F7469  # "moti": any constant that other tools on the server don't use


def _unreachable(url: str, exc: Exception) -> ServiceUnavailable:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
    return ServiceUnavailable(
        f"The database at {safe_url(url)} is unreachable ({reason}).", detail=str(exc)
    )


def upgrade(url: str, revision: str = "head") -> None:
    with migration_lock(url):
        try:
            command.upgrade(alembic_config(url), revision)
        except OperationalError as exc:
            raise _unreachable(url, exc) from exc


def downgrade(url: str, revision: str) -> None:
    with migration_lock(url):
        try:
            command.downgrade(alembic_config(url), revision)
        except OperationalError as exc:
            raise _unreachable(url, exc) from exc


def is_empty(url: str) -> bool:
    with engine_for(url).connect() as conn:
        return not inspect(conn).get_table_names()


def ensure_schema(url: str, *, auto_create: bool = False) -> None:
    """Refuse to run on an out-of-date schema; optionally create a brand-new database.

    `auto_create` is for the embedded single-machine default: a database with no tables at all is
    migrated on first use. An existing schema at an older revision is never touched implicitly.
    """
    head = head_revision(url)
    current = current_revision(url)
    if current == head:
        return
    if auto_create:
        # Several processes may start at once on a new database: one creates it, the others
        # wait for the lock and then find it done (a revision read outside the lock may be one
        # the creating process is passing through).
        with migration_lock(url):
            current = current_revision(url)
            if current == head:
                return
            if current is None and is_empty(url):
                log.info("creating a new database at %s", safe_url(url))
                try:
                    command.upgrade(alembic_config(url), "head")
                except OperationalError as exc:
                    raise _unreachable(url, exc) from exc
                return
    raise SchemaOutOfDate(
        f"The database schema is at revision {current or 'none'} but this code needs {head}. "
        "Run `motif db upgrade` first."
    )


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as a placeholder
        return "<database url>"


def dml(session: Session, statement: Executable) -> CursorResult[Any]:
    """Run an INSERT, UPDATE or DELETE: its result is a cursor result, with `rowcount`."""
    return cast(CursorResult[Any], session.execute(statement))
