"""A piece as a JSON document: how a request's seed is kept once it has been parsed and checked
at submission (engine.service.request_seeds), so the worker continues exactly that piece and never
parses the user's file again. Floats round-trip exactly (JSON writes their shortest repr)."""

from __future__ import annotations

from typing import Any

from engine.music.notes import Note, Piece

PIECE_FORMAT = 1  # bumped when the layout below changes


def piece_to_dict(piece: Piece) -> dict[str, Any]:
    return {
        "format": PIECE_FORMAT,
        "notes": [[n.start, n.duration, n.pitch, n.velocity] for n in piece.notes],
        "tempo_bpm": piece.tempo_bpm,
        "time_signature": list(piece.time_signature),
        "program": piece.program,
        "name": piece.name,
        "style": piece.style,
        "meta": dict(piece.meta),
        "metre_changes": [list(m) for m in piece.metre_changes],
        "key_changes": [list(k) for k in piece.key_changes],
    }


def piece_from_dict(doc: dict[str, Any]) -> Piece:
    """The piece `piece_to_dict` wrote (Motif's own document: a layout it does not know is a
    ValueError, not a guess)."""
    if doc.get("format") != PIECE_FORMAT:
        raise ValueError(f"a kept piece in format {doc.get('format')!r}, not {PIECE_FORMAT}")
    num, den = doc["time_signature"]
    return Piece(
        notes=tuple(Note(float(s), float(d), int(p), int(v)) for s, d, p, v in doc["notes"]),
        tempo_bpm=float(doc["tempo_bpm"]),
        time_signature=(int(num), int(den)),
        program=int(doc["program"]),
        name=str(doc["name"]),
        style=doc["style"],
        meta={str(k): str(v) for k, v in doc["meta"].items()},
        metre_changes=tuple((float(b), int(n), int(d)) for b, n, d in doc["metre_changes"]),
        key_changes=tuple((float(b), int(t), str(m)) for b, t, m in doc["key_changes"]),
    )
