"""Metre and key changes inside a piece: the bars they make, the changes within a stretch of
the piece, and a seed placed so that the metre in force at its end bars the continuation.

A piece whose metre changes lists its metres in `Piece.metre_changes` (engine.music.notes);
each metre's bars run from the beat it starts at, and a bar that the next change cuts short
ends there (as a score writes it). No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from engine.music.notes import TICKS_PER_BEAT, KeyChange, MetreChange, Piece, notated_metre

_EPS = 1e-6  # beats: onsets and changes on Motif's grid are 1/12 beat apart at the least
# Changes closer than one tick of the grid cannot be written apart: the later one holds. A
# piece with more changes than MAX_CHANGES (a hostile or broken file) keeps none: its metre at
# the end (or its first key) throughout, and the score stays a score.
MIN_GAP = 1 / TICKS_PER_BEAT
MAX_CHANGES = 256
Change = TypeVar("Change", MetreChange, KeyChange)


def bar_length(metre: tuple[int, int]) -> float:
    """Quarter-note beats in a bar of `metre`."""
    return metre[0] * 4.0 / metre[1]


@dataclass(frozen=True, slots=True)
class Bar:
    start: float  # beats from the piece's start
    length: float
    metre: tuple[int, int]


def metres_of(piece: Piece) -> tuple[MetreChange, ...]:
    """The piece's metres from the beat each starts at (one, at beat 0, without changes)."""
    return piece.metre_changes or ((0.0, *piece.time_signature),)


def bars(metres: Sequence[MetreChange], end: float) -> list[Bar]:
    """The bars from beat 0 that cover `end` beats (at least one bar)."""
    out: list[Bar] = []
    for i, (beat, num, den) in enumerate(metres):
        length = bar_length((num, den))
        last = i + 1 == len(metres)
        stop = end if last else metres[i + 1][0]
        at = float(beat)
        while at < stop - _EPS or (last and not out):
            out.append(Bar(at, length if last else min(length, stop - at), (num, den)))
            at += length
    return out


def piece_bars(piece: Piece, end: float | None = None) -> list[Bar]:
    """The bars of a piece that cover its notes (or `end` beats)."""
    return bars(metres_of(piece), piece.end_beat if end is None else end)


def bar_index(bars_: Sequence[Bar], beat: float) -> int:
    """The index of the bar that holds `beat` (the last bar for a beat past them all)."""
    lo, hi = 0, len(bars_) - 1
    while lo < hi:  # the last bar that starts at or before `beat`
        mid = (lo + hi + 1) // 2
        if bars_[mid].start <= beat + _EPS:
            lo = mid
        else:
            hi = mid - 1
    return lo


def in_force(changes: Sequence[Change], beat: float) -> Change | None:
    """The change in force at `beat`: the last one at or before it (None before the first)."""
    found = None
    for change in changes:
        if change[0] > beat + _EPS:
            break
        found = change
    return found


def window(changes: Sequence[Change], start: float, end: float) -> tuple[Change, ...]:
    """The changes that hold between beats `start` and `end` (inclusive), counted from
    `start`, on Motif's grid: the one in force at `start` moves to beat 0; a change that
    repeats the one before it, or is overtaken within a tick, is left out. `changes` are in
    time order."""
    kept: list[Change] = []
    first = in_force(changes, start)
    if first is not None:
        kept.append((0.0, first[1], first[2]))
    for change in changes:
        beat = round((change[0] - start) * TICKS_PER_BEAT) / TICKS_PER_BEAT  # on the grid
        if beat <= _EPS or beat > end - start + _EPS:
            continue
        if kept and beat - kept[-1][0] < MIN_GAP - _EPS:
            kept.pop()  # two at one tick: the later holds
        if not kept or kept[-1][1:] != change[1:]:
            kept.append((beat, change[1], change[2]))
    return tuple(kept)


def metre_changes(
    raw: Sequence[tuple[float, int, int]], start: float, end: float
) -> tuple[tuple[MetreChange, ...], tuple[int, int], list[tuple[int, int]]]:
    """A file's time signatures, (beat, numerator, denominator) in time order, as a piece's
    between `start` and `end`: its metre changes (empty for one metre), the metre in force at
    `end`, and the metres no score writes (read as 4/4). 4/4 holds before the first one."""
    clamped = [(n, d) for _, n, d in raw if notated_metre((n, d)) != (n, d)]
    notated = [(float(b), *notated_metre((n, d))) for b, n, d in raw]
    if not notated or notated[0][0] > _EPS:
        notated.insert(0, (0.0, 4, 4))
    changes = window(notated, start, end)
    last = changes[-1][1:] if changes else (4, 4)
    kept = changes if 1 < len(changes) <= MAX_CHANGES else ()
    return kept, (int(last[0]), int(last[1])), clamped


def key_changes(
    raw: Sequence[KeyChange], start: float, end: float
) -> tuple[tuple[KeyChange, ...], tuple[int, str] | None]:
    """A file's key signatures between `start` and `end` as a piece's: its key changes (empty
    for one key) and the key in force at `start` (None without one)."""
    changes = window(raw, start, end)
    first = (changes[0][1], changes[0][2]) if changes else None
    return (changes if 1 < len(changes) <= MAX_CHANGES else ()), first


def last_key(piece: Piece) -> tuple[int, str] | None:
    """The key signature in force at the piece's end, when its file declares one."""
    if piece.key_changes:
        _, tonic, mode = piece.key_changes[-1]
        return tonic, mode
    return key_of_meta(piece)


def key_of_meta(piece: Piece) -> tuple[int, str] | None:
    """The key a piece's meta declares (the first key signature of its file), if any."""
    tonic, _, mode = piece.meta.get("key", "").partition(" ")
    if tonic.isdigit() and int(tonic) < 12 and mode in ("major", "minor"):
        return int(tonic), mode
    return None


def aligned_for_generation(seed: Piece) -> tuple[Piece, float]:
    """The seed moved later by the beats that put the bar lines of the metre in force at its end
    on multiples of that metre's bar from beat 0 (the model counts bars from 0 in one metre),
    and that shift: move the continuation back by it. A seed in one metre does not move."""
    if not seed.metre_changes:
        return seed, 0.0
    start = seed.metre_changes[-1][0]
    bar = bar_length(seed.time_signature)
    shift = (-start) % bar
    if shift < _EPS or bar - shift < _EPS:
        return seed, 0.0
    return seed.shifted(shift), shift
