"""The tunes retraining may use: shared with consent, not withdrawn, valid as seeds; their
held-out slice, the dataset's hash and the sampling weights that mix them with the corpus."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import select

from engine.errors import BadMidi
from engine.music.midi import load_seed
from engine.music.notes import Piece
from engine.settings import Settings
from engine.store.artifacts import store_for
from engine.store.db import session_scope
from engine.store.records import Tune

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectedTune:
    tune_id: int
    content_hash: str
    piece: Piece


def collected_tunes(settings: Settings) -> list[CollectedTune]:
    """Tunes whose owners consented and did not withdraw, validated with the seed limits."""
    with session_scope(settings.sqlalchemy_url) as session:
        rows = list(
            session.execute(
                select(Tune.id, Tune.content_hash, Tune.midi_key, Tune.name)
                .where(Tune.consent.is_(True), Tune.withdrawn_at.is_(None))
                .order_by(Tune.content_hash)
            )
        )
    store = store_for(settings.artifact_root)
    tunes = []
    for tune_id, digest, key, name in rows:
        try:
            piece = load_seed(store.get(key), name=name)
        except (BadMidi, OSError) as exc:
            log.warning("skipping collected tune %s: %s", tune_id, exc)
            continue
        tunes.append(CollectedTune(tune_id, digest, piece))
    return tunes


def split_collected(tunes: list[CollectedTune]) -> tuple[list[CollectedTune], list[CollectedTune]]:
    """A deterministic held-out slice (about 1 in 5, at least one when there are two or more)."""
    held = [t for t in tunes if int(t.content_hash[:8], 16) % 5 == 0]
    if not held and len(tunes) >= 2:
        held = [tunes[0]]
    train = [t for t in tunes if t not in held]
    return train, held


def dataset_hash(corpus_hash: str, tunes: list[CollectedTune], share: float) -> str:
    h = hashlib.sha256(corpus_hash.encode())
    for t in sorted(tunes, key=lambda t: t.content_hash):
        h.update(t.content_hash.encode())
    h.update(f"{share:.4f}".encode())
    return h.hexdigest()


def piece_weights(base: list[Piece], collected: list[Piece], share: float) -> list[float]:
    """Sampling weights so that `share` of the notes sampled come from the collected tunes."""
    base_notes = sum(len(p.notes) for p in base) or 1
    coll_notes = sum(len(p.notes) for p in collected) or 1
    if not collected:
        return [float(len(p.notes)) for p in base]
    w_base = (1.0 - share) / base_notes
    w_coll = share / coll_notes
    return [len(p.notes) * w_base for p in base] + [len(p.notes) * w_coll for p in collected]
