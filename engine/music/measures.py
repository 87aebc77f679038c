"""Notes on Motif's event grid as a score lays them out: quantised, split into voices of
chords, cut into measures of note values (ties at bar lines and beats), with beams and
triplet marks."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from engine.music.notes import DURATION_BINS, TICKS_PER_BEAT, Piece

TICKS = TICKS_PER_BEAT  # Motif's event grid, in ticks a quarter note
LEGATO_GAP = 1 / 4  # a silence shorter than this share of a note (and a 16th) is articulation
VOICES_PER_STAFF = 2

# (ticks, type, dots, triplet) that one note head can show, longest first.
_VALUES: tuple[tuple[int, str, int, bool], ...] = tuple(
    (round(beats * TICKS), kind, dots, triplet)
    for beats, kind, dots, triplet in (
        (6.0, "whole", 1, False),
        (4.0, "whole", 0, False),
        (3.0, "half", 1, False),
        (2.0, "half", 0, False),
        (1.5, "quarter", 1, False),
        (4 / 3, "half", 0, True),
        (1.0, "quarter", 0, False),
        (0.75, "eighth", 1, False),
        (2 / 3, "quarter", 0, True),
        (0.5, "eighth", 0, False),
        (1 / 3, "eighth", 0, True),
        (0.25, "16th", 0, False),
        (1 / 6, "16th", 0, True),
        (1 / 12, "32nd", 0, True),
    )
)
_BEAMS = {"eighth": 1, "16th": 2, "32nd": 3}


@dataclass(frozen=True)
class Measure:
    """A measure of a score on the grid: where it starts, its length and its beat, in ticks."""

    start: int
    length: int
    beat: int
    metre: tuple[int, int]


def beat_ticks(metre: tuple[int, int]) -> int:
    """The beat a reader counts in `metre`, in ticks (6/8, 9/8, 12/8: a dotted quarter)."""
    num, den = metre
    return TICKS * 3 // 2 if den == 8 and num % 3 == 0 and num > 3 else TICKS * 4 // den


def measure_at(measures: Sequence[Measure], starts: Sequence[int], tick: int) -> int:
    """The index of the measure that holds `tick` (`starts`: each measure's start)."""
    return max(0, min(len(measures) - 1, bisect_right(starts, tick) - 1))


@dataclass
class _Chord:
    start: int  # ticks from the first bar line
    length: int
    pitches: list[int]
    seed: bool


def grid_length(ticks: int) -> int:
    """A note length on the model's grid: the nearest of its duration bins (the shorter on a
    tie), or whole ticks beyond the longest bin."""
    bins = DURATION_BINS
    if ticks >= bins[-1]:
        return ticks
    return min(bins, key=lambda b: (abs(b - ticks), b))


def quantised(piece: Piece | None, seed: bool) -> list[tuple[int, int, int, bool]]:
    if piece is None:
        return []
    return [
        (max(0, round(n.start * TICKS)), grid_length(round(n.duration * TICKS)), int(n.pitch), seed)
        for n in piece.notes
    ]


def split_voices(notes: list[tuple[int, int, int, bool]]) -> list[list[_Chord]]:
    """Notes of one staff as at most VOICES_PER_STAFF voices of non-overlapping chords.

    Notes that start together with the same length form a chord; a chord that finds no free
    voice joins the chord sounding at its onset, or cuts the earliest-ending voice short."""
    groups: dict[tuple[int, int], _Chord] = {}
    for start, length, pitch, seed in notes:
        chord = groups.setdefault((start, length), _Chord(start, length, [], seed))
        if pitch not in chord.pitches:
            chord.pitches.append(pitch)
    voices: list[list[_Chord]] = []
    for chord in sorted(groups.values(), key=lambda c: (c.start, -max(c.pitches))):
        free = [v for v in voices if v[-1].start + v[-1].length <= chord.start]
        if free:
            free[0].append(chord)
        elif len(voices) < VOICES_PER_STAFF:
            voices.append([chord])
        else:
            same = next((v for v in voices if v[-1].start == chord.start), None)
            if same is not None:
                last = same[-1]
                last.pitches.extend(p for p in chord.pitches if p not in last.pitches)
                last.length = min(last.length, chord.length)
            else:
                cut = min(voices, key=lambda v: v[-1].start + v[-1].length)
                cut[-1].length = chord.start - cut[-1].start
                cut.append(chord)
    for voice in voices:  # detached playing reads as rests of a 16th or less: close them
        for chord, nxt in zip(voice, voice[1:], strict=False):
            gap = nxt.start - chord.start - chord.length
            if 0 < gap <= TICKS // 4 and gap <= chord.length * LEGATO_GAP:
                chord.length += gap
    return voices


def _split(length: int) -> list[tuple[int, str, int, bool]]:
    """Note values, longest first, that add up to `length` ticks."""
    parts = []
    while length > 0:
        value = next(v for v in _VALUES if v[0] <= length)
        parts.append(value)
        length -= value[0]
    return parts


@dataclass
class Event:
    """One note head, chord or rest inside one measure of one voice."""

    start: int  # within the measure
    value: tuple[int, str, int, bool]
    pitches: list[int]  # empty: a rest
    seed: bool
    tie_start: bool = False
    tie_stop: bool = False
    hidden: bool = False
    whole_bar: bool = False  # a rest that fills the measure


def _rest_values(offset: int, span: int, beat: int) -> list[tuple[int, str, int, bool]]:
    """Rest values for `span` ticks from `offset` in a bar: up to the next beat first, then
    beat by beat, so a reader sees where the beats fall (6/8: dotted quarter rests)."""
    parts = []
    end = offset + span
    while offset < end:
        stop = min(end, (offset // beat + 1) * beat)
        if offset % beat == 0:  # on a beat: whole beats at once
            stop = max(stop, offset + (end - offset) // beat * beat)
        parts.extend(_split(stop - offset))
        offset = stop
    return parts


def measure_events(voice: list[_Chord], measures: Sequence[Measure], show_rests: bool):
    """{measure index: [Event]} of one voice, with rests filling its gaps."""
    out: dict[int, list[Event]] = {m: [] for m in range(len(measures))}
    starts = [m.start for m in measures]
    total = measures[-1].start + measures[-1].length
    cursor = 0
    pieces: list[tuple[int, int, list[int], bool]] = []  # (start, length, pitches, seed)
    for chord in voice:
        if chord.start > cursor:
            pieces.append((cursor, chord.start - cursor, [], False))
        pieces.append((chord.start, chord.length, sorted(chord.pitches), chord.seed))
        cursor = chord.start + chord.length
    if cursor < total:
        pieces.append((cursor, total - cursor, [], False))
    for start, length, pitches, seed in pieces:
        end = start + length
        pos = start
        while pos < end:
            index = measure_at(measures, starts, pos)
            measure = measures[index]
            offset = pos - measure.start
            bar_end = measure.start + measure.length
            span = min(end, bar_end) - pos if bar_end > pos else end - pos
            if not pitches and span == measure.length:  # a whole bar's rest
                out[index].append(
                    Event(
                        0,
                        (measure.length, "whole", 0, False),
                        [],
                        False,
                        hidden=not show_rests,
                        whole_bar=True,
                    )
                )
                pos += span
                continue
            values = _split(span) if pitches else _rest_values(offset, span, measure.beat)
            for value in values:
                out[index].append(
                    Event(
                        offset,
                        value,
                        pitches,
                        seed,
                        tie_stop=bool(pitches) and pos > start,
                        tie_start=bool(pitches) and pos + value[0] < end,
                        hidden=not pitches and not show_rests,
                    )
                )
                offset += value[0]
                pos += value[0]
    return out


def beam_marks(events: list[Event], beat: int) -> list[dict[int, str]]:
    """MusicXML beam values per event: notes of a beat that carry flags are beamed together."""
    levels = [0 if not e.pitches else _BEAMS.get(e.value[1], 0) for e in events]  # 0: not beamable
    group = [e.start // beat for e in events]
    out: list[dict[int, str]] = [{} for _ in events]
    for i, level in enumerate(levels):
        if not level:
            continue
        prev = levels[i - 1] if i and group[i - 1] == group[i] else 0
        nxt = levels[i + 1] if i + 1 < len(events) and group[i + 1] == group[i] else 0
        if not prev and not nxt:
            continue
        for k in range(1, level + 1):
            if prev >= k and nxt >= k:
                out[i][k] = "continue"
            elif prev >= k:
                out[i][k] = "end"
            elif nxt >= k:
                out[i][k] = "begin"
            else:
                out[i][k] = "backward hook" if prev else "forward hook"
    return out


def tuplet_marks(events: list[Event]) -> list[str | None]:
    """start/stop marks for runs of triplet values that fill whole beats or half beats."""
    marks: list[str | None] = [None] * len(events)
    run_start, total = None, 0
    for i, ev in enumerate(events):
        if not ev.value[3]:
            run_start, total = None, 0
            continue
        if run_start is None:
            run_start, total = i, 0
        total += ev.value[0]
        if total % (TICKS // 2) == 0 and (total * 3 // 2) % (TICKS // 2) == 0:
            if i > run_start:
                marks[run_start], marks[i] = "start", "stop"
            run_start, total = None, 0
    return marks
