"""A request's seed, parsed once: at submission the user's file (or, for a follow-up, the tune it
continues) is read, cut and checked, and the piece the decoder will continue is kept under
`seed_piece_key` (engine.music.piece_json). The worker reads that piece back; it never parses the
user's file again."""

from __future__ import annotations

from typing import Any

from engine.music.endings import reopened
from engine.music.midi import load_seed, seed_notices
from engine.music.notation import is_notation_name, load_notation_seed
from engine.music.notes import Piece
from engine.music.piece_json import piece_from_json, piece_to_json
from engine.music.request import ComposeOptions
from engine.service.progress import SEED_NAME
from engine.store.artifacts import ArtifactStore, seed_piece_key


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


def keep_seed(store: ArtifactStore, request_id: int, seed: Piece, options: ComposeOptions) -> None:
    """Keep the request's seed as the decoder continues it: in the instrument and tempo asked,
    and, for an extension of a closed result, from before its cadence."""
    if options.reopen_seed:
        seed = reopened(seed)
    store.put(seed_piece_key(request_id), piece_to_json(options.seed_as_asked(seed)))


def tune_seed(store: ArtifactStore, midi_key: str, name: str, options: ComposeOptions) -> Piece:
    """A follow-up's seed: the tune it continues (Motif's own copy, checked when it was kept),
    cut at the request's `from_bar`."""
    return load_seed(store.get(midi_key), name=name, from_bar=options.from_bar)


def kept_seed(
    store: ArtifactStore, request_id: int, tune: tuple[str, str] | None, options: ComposeOptions
) -> Piece | None:
    """The seed the request was submitted with; None without one. `tune` (its MIDI key and
    name) is read only for a request queued before seeds were kept (before 2026-12-07), which
    has no kept piece: it is parsed here, as the worker did then."""
    if tune is None:
        return None
    key = seed_piece_key(request_id)
    if store.exists(key):
        return piece_from_json(store.get(key))
    seed = tune_seed(store, *tune, options)
    return options.seed_as_asked(reopened(seed) if options.reopen_seed else seed)
