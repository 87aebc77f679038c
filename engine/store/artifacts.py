"""Where MIDI, audio, pictures and checkpoints are kept: a local folder, or any fsspec URL.

`s3://bucket/prefix` (with the `s3` extra installed) lets the bot and workers on different
machines share files without sharing a disk. Keys are relative paths like
`requests/12/attempt-1/motif-12.ogg`, each built by one function below (`attempt_key`,
`tune_key`, `model_key`, `training_key`) and nowhere else (tests/test_layout.py checks).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path, PurePosixPath

import fsspec

from engine.errors import StorageUnavailable

log = logging.getLogger(__name__)

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(root: str, exc: OSError) -> StorageUnavailable:
    """A file-store failure as a reason someone can act on (no traceback for users)."""
    if exc.errno in _FULL:
        what = "is full"
    elif exc.errno in _READ_ONLY:
        what = "is read-only (no permission to write)"
    else:
        what = f"cannot be written ({exc.strerror or exc})"
    return StorageUnavailable(f"The file store at {root} {what}.", detail=repr(exc))


class ArtifactStore:
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.is_local = "://" not in root or root.startswith("file://")
        if self.is_local:
            self._base = Path(root.removeprefix("file://")).expanduser().resolve()
            try:
                self._base.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise storage_error(str(self._base), exc) from exc
            self._fs = None
        else:
            self._fs, _ = fsspec.core.url_to_fs(root)

    def _check(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in Path(key).parts:
            raise ValueError(f"bad artifact key: {key!r}")
        return key

    def _url(self, key: str) -> str:
        return f"{self.root}/{self._check(key)}"

    def local_path(self, key: str) -> Path | None:
        return self._base / self._check(key) if self.is_local else None

    def put(self, key: str, data: bytes) -> int:
        """Write atomically: a reader never sees half a file, a rerun overwrites the same key."""
        if self.is_local:
            path = self._base / self._check(key)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            except OSError as exc:
                raise storage_error(str(self._base), exc) from exc
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                raise storage_error(str(self._base), exc) from exc
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            assert self._fs is not None
            with self._fs.open(self._url(key), "wb") as fh:
                fh.write(data)
        return len(data)

    def get(self, key: str) -> bytes:
        if self.is_local:
            return (self._base / self._check(key)).read_bytes()
        assert self._fs is not None
        with self._fs.open(self._url(key), "rb") as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        if self.is_local:
            return (self._base / self._check(key)).exists()
        assert self._fs is not None
        return bool(self._fs.exists(self._url(key)))

    def delete(self, key: str) -> None:
        if self.is_local:
            (self._base / self._check(key)).unlink(missing_ok=True)
        else:
            assert self._fs is not None
            if self._fs.exists(self._url(key)):
                self._fs.rm(self._url(key))


@lru_cache(maxsize=8)
def store_for(root: str) -> ArtifactStore:
    return ArtifactStore(root)


# --- keys -------------------------------------------------------------------------------------
# The one home of the store's layout: requests/<id>/seed.json, requests/<id>/attempt-<n>/<file>,
# tunes/<ab>/<hash>.mid, models/<version>.pt, training/<run>/<file>.


def result_stem(request_id: int) -> str:
    """What a result's files are called before their ending (`motif-12.mid`,
    `motif-12-score-2.png`): the attachments' names users see, and the result tune's name."""
    return f"motif-{request_id}"


def seed_piece_key(request_id: int) -> str:
    """A request's seed as the worker continues it: parsed, cut and checked once, when the
    request was submitted (engine.music.piece_json)."""
    return f"requests/{request_id}/seed.json"


def attempt_key(request_id: int, attempt: int, name: str) -> str:
    """Where one attempt at a request writes a file: its own folder, so two attempts (a stale
    claimant and its successor, engine.worker.fencing) never share a key. The file's name,
    which users see, stays `name` (`file_name` reads it back)."""
    return f"requests/{request_id}/attempt-{attempt}/{name}"


def tune_key(content_hash: str) -> str:
    """A tune's MIDI, kept once per content hash (fanned out over 256 folders by its first two
    hex digits)."""
    return f"tunes/{content_hash[:2]}/{content_hash}.mid"


def model_key(version: str) -> str:
    """A model version's checkpoint."""
    return f"models/{version}.pt"


def training_key(run_id: int, name: str) -> str:
    """A file a training run keeps (its loss curve)."""
    return f"training/{run_id}/{name}"


def file_name(key: str) -> str:
    """The file name at the end of a key: what a download or an attachment is called."""
    return PurePosixPath(key).name
