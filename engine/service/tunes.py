"""Tunes, kept once per content hash: a seed at submission, a result when generated (its MIDI
in the artifact store, its row in SQL)."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.music.notes import Piece
from engine.store.artifacts import ArtifactStore, tune_key
from engine.store.records import Tune, TuneSource, utcnow


def tune_for(session: Session, new: Tune) -> Tune:
    """Insert-or-get on the content hash: the stored tune with `new`'s hash, or `new` inserted.
    Two uploads of the same file at once both get the one row (no IntegrityError escapes)."""
    tune = session.scalar(select(Tune).where(Tune.content_hash == new.content_hash))
    if tune is not None:
        return tune
    try:
        with session.begin_nested():
            session.add(new)
        return new
    except IntegrityError:
        # Another request stored the same tune between our read and our insert.
        tune = session.scalar(select(Tune).where(Tune.content_hash == new.content_hash))
        assert tune is not None
        return tune


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_tune(
    session: Session,
    store: ArtifactStore,
    midi: bytes,
    piece: Piece,
    *,
    source: TuneSource,
    owner_id: int | None,
    name: str = "",
    consent: bool = False,
) -> Tune:
    """Keep a tune once per content hash (a seed at submission, a result when generated); the
    MIDI bytes go to the artifact store."""
    digest = content_hash(midi)
    key = tune_key(digest)
    known = session.scalar(select(Tune.id).where(Tune.content_hash == digest)) is not None
    if not known and not store.exists(key):
        store.put(key, midi)
    return tune_for(
        session,
        Tune(
            content_hash=digest,
            source=source,
            owner_id=owner_id,
            name=name[:200],
            midi_key=key,
            note_count=len(piece.notes),
            duration_s=round(piece.duration_s, 3),
            consent=consent,
            consent_at=utcnow() if consent else None,
        ),
    )
