"""A request's seed, parsed once: at submission the user's file (or, for a follow-up, the tune it
continues) is read, cut and checked, and the piece the decoder will continue is kept under
`seed_piece_key` (engine.music.piece_json). The worker reads that piece back; it never parses the
user's file again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from engine.errors import NotFound
from engine.music.endings import reopened
from engine.music.midi import load_seed, seed_notices
from engine.music.notation import is_notation_name, load_notation_seed
from engine.music.notes import Piece
from engine.music.piece_json import piece_from_dict, piece_to_dict
from engine.music.request import ComposeOptions
from engine.service.progress import SEED_NAME
from engine.store.artifacts import ArtifactStore, seed_piece_key

# What a tune and a request's options make of a seed (TuneRef: its MIDI key, name, content hash)
TuneRef = tuple[str, str, str]
SHAPING = ("from_bar", "reopen_seed", "instrument", "tempo")


def parse_seed(
    data: bytes, name: str, options: ComposeOptions, user_key: str
) -> tuple[bytes, Piece, dict[str, Any]]:
    """The user's file, parsed once: (its MIDI, the seed cut at `from_bar`, the notices its reply
    shows). ABC and MusicXML are read by music21 in a bounded child process first (`user_key`
    queues one user's parses behind each other) and kept as MIDI from here. A file that cannot be
    a seed raises a MotifError whose message says why."""
    remarks: tuple[str, ...] = ()
    if is_notation_name(name):
        notation = load_notation_seed(data, name, user=user_key)
        data, remarks = notation.midi, notation.remarks
    piece = load_seed(data, name=name, from_bar=options.from_bar)
    notices: dict[str, Any] = dict(seed_notices(piece))
    if remarks:  # e.g. "the ABC held 3 tunes": the result says so
        notices["seed_remarks"] = list(remarks)
    # the name this requester gave: tunes are kept once per content hash, and the same bytes
    # from someone else must not show the first uploader's file name
    notices[SEED_NAME] = name[:200]
    return data, piece, notices


def tune_seed(store: ArtifactStore, tune: TuneRef, options: ComposeOptions) -> Piece:
    """A follow-up's seed: the tune it continues (Motif's own copy, checked when it was kept),
    cut at the request's `from_bar`."""
    midi_key, name, _ = tune
    try:
        data = store.get(midi_key)
    except (OSError, KeyError) as exc:
        raise NotFound(
            "the music this continues is no longer stored; start again with /compose."
        ) from exc
    return load_seed(data, name=name, from_bar=options.from_bar)


def _shaping(tune: TuneRef, options: ComposeOptions) -> dict[str, Any]:
    """What made the kept piece what it is: the tune and the options that cut and dress it."""
    asked = options.to_params()
    return {"tune": tune[2], **{k: asked[k] for k in SHAPING}}


def _as_continued(seed: Piece, options: ComposeOptions) -> Piece:
    """The seed as the decoder continues it: in the instrument and tempo asked, and, for an
    extension of a closed result, from before its cadence."""
    return options.seed_as_asked(reopened(seed) if options.reopen_seed else seed)


def keep_seed(
    store: ArtifactStore, request_id: int, tune: TuneRef, seed: Piece, options: ComposeOptions
) -> str:
    """Keep the request's seed as the decoder continues it: in the instrument and tempo asked,
    and, for an extension of a closed result, from before its cadence. Returns its key."""
    doc = {"made_of": _shaping(tune, options), "piece": piece_to_dict(_as_continued(seed, options))}
    key = seed_piece_key(request_id)
    store.put(key, json.dumps(doc, separators=(",", ":")).encode())
    return key


@contextmanager
def kept_with_the_row(store: ArtifactStore) -> Iterator[list[str]]:
    """Around the transaction that writes a request: the keys of the seeds kept meanwhile
    (append them) are removed again when it fails, so a request that was never written leaves
    no music behind (and its id, which SQLite may hand out again, no stale seed)."""
    kept: list[str] = []
    try:
        yield kept
    except BaseException:
        for key in kept:
            store.delete(key)
        raise


def kept_seed(
    store: ArtifactStore, request_id: int, tune: TuneRef | None, options: ComposeOptions
) -> Piece | None:
    """The seed the request was submitted with; None without one. A kept piece is used only if
    it was made of this tune with these options; else (a request queued by a version before
    2026-12-07, which kept none) the tune is parsed here, as the worker did then."""
    if tune is None:
        return None
    key = seed_piece_key(request_id)
    if store.exists(key):
        doc = json.loads(store.get(key))
        if doc.get("made_of") == _shaping(tune, options):
            return piece_from_dict(doc["piece"])
    seed = tune_seed(store, tune, options)
    return _as_continued(seed, options)
