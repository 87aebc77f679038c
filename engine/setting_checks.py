"""Checks run on each setting as it is loaded (engine.settings): a bad value is refused with what
is accepted, before any command touches a database, broker or folder.

URLs are checked by scheme, and the driver or transport the scheme needs must be installed
(`mysql://…` parses as a URL, but nothing here can talk to it). No connection is made here:
reachability is `motif status`'s question. Each check raises ValueError with one line saying what
is accepted; engine.cli prints it with the setting's name and its value, password hidden.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# The databases the code speaks to (its SQL has SQLite and PostgreSQL forms only).
DATABASE_ACCEPTED = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
# broker scheme -> the module its kombu transport needs (None: nothing beyond kombu)
BROKER_SCHEMES: dict[str, str | None] = {
    "filesystem": None,
    "redis": "redis",
    "rediss": "redis",
    "amqp": "amqp",
    "amqps": "amqp",
    "pyamqp": "amqp",
}
BROKER_ACCEPTED = (
    "empty (filesystem://), redis://HOST:PORT/DB, rediss://…, amqp://USER:PASSWORD@HOST:PORT//"
)
BACKEND_ACCEPTED = (
    "empty (db+sqlite:///…), db+sqlite:///PATH, db+postgresql+psycopg://…, "
    "redis://HOST:PORT/DB, rediss://…, rpc://"
)


def _scheme(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or " " in url:
        raise ValueError("not a URL")
    return scheme.lower()


def check_database_url(url: str, accepted: str = DATABASE_ACCEPTED) -> None:
    """An SQLAlchemy URL of SQLite or PostgreSQL whose driver is installed."""
    from sqlalchemy.engine import make_url

    try:
        _scheme(url)
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - any parse failure is "not a URL"
        raise ValueError(f"not a database URL; accepted: {accepted}") from exc
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"{backend} is not supported; accepted: {accepted}")
    if backend == "postgresql" and not parsed.host:
        raise ValueError(f"no host; accepted: {accepted}")
    try:
        parsed.get_dialect().import_dbapi()
    except Exception as exc:  # noqa: BLE001 - an unknown driver name or a missing module
        raise ValueError(
            f"the driver {parsed.drivername!r} is not installed here; accepted: {accepted}"
        ) from exc


def _needs_module(scheme: str, module: str | None, accepted: str) -> None:
    if module is not None and importlib.util.find_spec(module) is None:
        raise ValueError(
            f"{scheme}:// needs the Python package {module!r}, not installed; accepted: {accepted}"
        )


def _needs_host(url: str, accepted: str) -> None:
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url).hostname
    except ValueError as exc:
        raise ValueError(f"not a URL ({exc}); accepted: {accepted}") from exc
    if not host:
        raise ValueError(f"no host; accepted: {accepted}")


def check_broker_url(url: str) -> None:
    try:
        scheme = _scheme(url)
    except ValueError as exc:
        raise ValueError(f"not a URL; accepted: {BROKER_ACCEPTED}") from exc
    if scheme not in BROKER_SCHEMES:
        raise ValueError(f"unknown broker {scheme}://; accepted: {BROKER_ACCEPTED}")
    _needs_module(scheme, BROKER_SCHEMES[scheme], BROKER_ACCEPTED)
    if scheme != "filesystem":
        _needs_host(url, BROKER_ACCEPTED)


def check_result_backend(url: str) -> None:
    try:
        scheme = _scheme(url)
    except ValueError as exc:
        raise ValueError(f"not a URL; accepted: {BACKEND_ACCEPTED}") from exc
    if scheme.startswith("db+"):
        check_database_url(url[3:], BACKEND_ACCEPTED)
    elif scheme in ("redis", "rediss"):
        _needs_module(scheme, "redis", BACKEND_ACCEPTED)
        _needs_host(url, BACKEND_ACCEPTED)
    elif scheme != "rpc":
        raise ValueError(f"unknown result backend {scheme}://; accepted: {BACKEND_ACCEPTED}")


ARTIFACT_ACCEPTED = (
    "empty (<data dir>/artifacts), a folder, file://PATH, or an fsspec URL such as "
    "s3://BUCKET/PREFIX (with its package installed)"
)


def check_artifact_url(url: str) -> None:
    if "://" not in url:
        check_folder(Path(url).expanduser())
        return
    scheme = _scheme(url)
    if scheme == "file":
        check_folder(Path(url.removeprefix("file://")).expanduser())
        return
    import fsspec

    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as exc:
        reason = "its package is not installed" if isinstance(exc, ImportError) else "unknown"
        raise ValueError(f"{scheme}:// {reason}; accepted: {ARTIFACT_ACCEPTED}") from exc


def check_log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS or not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"unknown level; accepted: {', '.join(LOG_LEVELS)}")
    return level


def check_folder(path: Path) -> None:
    """A folder Motif creates if missing: anything but a file (or other non-folder) there."""
    if "\x00" in str(path) or not str(path):
        raise ValueError("not a path; accepted: a folder path")
    if path.exists() and not path.is_dir():
        raise ValueError("exists and is not a folder; accepted: a folder path")


def check_file(path: Path) -> None:
    """A file Motif reads: a folder there is refused (a missing file is named when it is used)."""
    if "\x00" in str(path) or not str(path):
        raise ValueError("not a path; accepted: a file path")
    if path.is_dir():
        raise ValueError("is a folder; accepted: a file path")
