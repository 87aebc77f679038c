"""Form figures: does a continuation phrase, lift, return, cadence and keep its voices?

Computed on notes (engine.music.notes), side by side for every system in `python -m bench.judge
--form`. Bars are counted from the continuation's first full bar (`bar_start`, the seed's cut),
1-based; a beat is the metre's (a dotted quarter in 6/8, 9/8, 12/8; a half in 2/2). The key is
the SEED's, by music21's Aarden-Essen (engine.model.fidelity.independent_key), which the
generator never steers by.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.model.fidelity import independent_key
from engine.music.metrics import NotesLike, _as_notes
from engine.music.notes import Note, Piece

TICKS = 12  # onsets compared on the 12-ticks-per-beat grid
PHRASE_BARS = (4, 8)  # continuation bars where a 4- and an 8-bar phrase ends
DOTTED_QUARTER = 1.5
TEXTURE_BAND = (0.8, 1.25)
EPS = 1e-6


def beat_length(time_signature: tuple[int, int]) -> float:
    """The metre's beat in quarter notes: a dotted quarter in compound metres (6/8, 9/8, 12/8),
    otherwise the denominator's value (a quarter in 4/4, a half in 2/2)."""
    num, den = time_signature
    unit = 4.0 / den
    if den >= 8 and num % 3 == 0 and num > 3:
        return 3 * unit
    return unit


def _ticks(beats: float) -> int:
    return round(beats * TICKS)


def bar_index(start: float, bar_start: float, beats_per_bar: float) -> int:
    """The 1-based continuation bar of an onset (0 or less: before `bar_start`)."""
    return math.floor((start - bar_start + EPS) / beats_per_bar) + 1


def bar_notes(notes: NotesLike, bar: int, bar_start: float, beats_per_bar: float) -> list[Note]:
    """The notes starting in continuation bar `bar`."""
    return [n for n in _as_notes(notes) if bar_index(n.start, bar_start, beats_per_bar) == bar]


def held_in_bar(notes: NotesLike, bar: int, bar_start: float, bpb: float, beat: float) -> bool:
    """Whether a note of at least a beat starts in continuation bar `bar`."""
    return any(n.duration >= beat - EPS for n in bar_notes(notes, bar, bar_start, bpb))


BarShape = tuple[tuple[int, int], ...]  # sorted (onset tick within the bar, pitch)


def bar_shapes(notes: NotesLike, bar_start: float, beats_per_bar: float) -> dict[int, BarShape]:
    """Each non-empty bar (index from `bar_start`, 1-based) as its onsets within the bar and
    pitches; durations are left out (a replayed bar may end on a shorter note)."""
    bars: dict[int, list[tuple[int, int]]] = {}
    for n in _as_notes(notes):
        b = bar_index(n.start, bar_start, beats_per_bar)
        offset = n.start - bar_start - (b - 1) * beats_per_bar
        bars.setdefault(b, []).append((_ticks(offset), n.pitch))
    return {b: tuple(sorted(set(shape))) for b, shape in bars.items()}


def _normalized(shape: BarShape) -> BarShape:
    """The shape moved so its lowest pitch is 0: equal for a bar and its transpositions."""
    low = min(p for _, p in shape)
    return tuple((t, p - low) for t, p in shape)


def replayed_bars(seed: Piece, continuation: NotesLike, bar_start: float) -> tuple[int, int, int]:
    """(continuation bars that replay a seed bar note for note: same onsets within the bar and
    same pitches; bars that replay one verbatim or transposed: same onsets and intervals;
    non-empty continuation bars). Seed bars count from beat 0 in the seed's metre."""
    bpb = seed.beats_per_bar
    seed_bars = set(bar_shapes(seed, 0.0, bpb).values())
    seed_moved = {_normalized(s) for s in seed_bars}
    cont = bar_shapes(continuation, bar_start, bpb)
    cont = {b: s for b, s in cont.items() if b >= 1}
    verbatim = sum(s in seed_bars for s in cont.values())
    moved = sum(_normalized(s) in seed_moved for s in cont.values())
    return verbatim, moved, len(cont)


def tonic_triad(key: tuple[int, str]) -> set[int]:
    """The pitch classes of the key's tonic chord."""
    tonic, mode = key
    third = 4 if mode == "major" else 3
    return {tonic % 12, (tonic + third) % 12, (tonic + 7) % 12}


def final_onset(notes: NotesLike) -> list[Note]:
    """The notes that start at the last onset."""
    ns = _as_notes(notes)
    if not ns:
        return []
    last = ns[-1].start
    return [n for n in ns if abs(n.start - last) < EPS]


def ends_held(notes: NotesLike, beat: float) -> bool:
    """Whether a note of the last onset lasts at least a beat."""
    return any(n.duration >= beat - EPS for n in final_onset(notes))


def ends_on_tonic(notes: NotesLike, key: tuple[int, str] | None, beat: float) -> bool:
    """Whether the last onset holds, for at least a beat, a note of the key's tonic triad."""
    if key is None:
        return False
    triad = tonic_triad(key)
    return any(n.duration >= beat - EPS and n.pitch % 12 in triad for n in final_onset(notes))


def sounding_counts(notes: NotesLike) -> list[int]:
    """At each onset, how many notes sound (started there or held from before)."""
    ns = _as_notes(notes)
    onsets = sorted({n.start for n in ns})
    return [sum(n.start <= t + EPS and n.end > t + EPS for n in ns) for t in onsets]


def sounding_per_onset(notes: NotesLike) -> float:
    """Mean number of notes sounding at an onset; NaN for no notes."""
    counts = sounding_counts(notes)
    return float(np.mean(counts)) if counts else math.nan


def is_two_voice(notes: NotesLike) -> bool:
    """A melody over a bass: at least half the onsets sound exactly two notes, and at most one
    in ten sounds more."""
    counts = np.asarray(sounding_counts(notes))
    if counts.size == 0:
        return False
    return bool(np.mean(counts == 2) >= 0.5 and np.mean(counts > 2) <= 0.1)


_KEYS: dict[tuple[Note, ...], tuple[int, str] | None] = {}


def seed_key(seed: NotesLike) -> tuple[int, str] | None:
    """The key of these notes by Aarden-Essen, remembered: every system shares the seed, and
    the classifier's controls meet each real continuation several times."""
    notes = tuple(_as_notes(seed))
    if notes not in _KEYS:
        if len(_KEYS) > 4096:
            _KEYS.clear()
        _KEYS[notes] = independent_key(notes)
    return _KEYS[notes]


@dataclass(frozen=True)
class Form:
    """One continuation's form figures (see FORM_LABELS)."""

    held: dict[int, bool]  # phrase bar -> a note of a beat or more starts there
    notes_in: dict[int, int]  # phrase bar -> notes starting there
    dotted_quarters: int
    notes: int
    lift_mean: float
    lift_top: float
    bars_verbatim: int
    bars_moved: int
    bars: int
    ends_held: bool
    ends_tonic: bool
    texture_ratio: float
    two_voice_seed: bool
    two_voice_kept: bool


def form_of(seed: Piece, continuation: Piece, bar_start: float) -> Form:
    """The form figures of one continuation of `seed`; its bars count from `bar_start`."""
    cont = _as_notes(continuation)
    seed_notes = _as_notes(seed)
    bpb = continuation.beats_per_bar
    beat = beat_length(continuation.time_signature)
    verbatim, moved, bars = replayed_bars(seed, cont, bar_start)
    key = seed_key(seed_notes)

    def lift(values: list[int], seed_values: list[int], fn: Callable[[list[int]], Any]) -> float:
        return float(fn(values) - fn(seed_values)) if values and seed_values else math.nan

    pitches, seed_pitches = [n.pitch for n in cont], [n.pitch for n in seed_notes]
    seed_spo = sounding_per_onset(seed_notes)
    two_voice_seed = is_two_voice(seed_notes)
    return Form(
        held={b: held_in_bar(cont, b, bar_start, bpb, beat) for b in PHRASE_BARS},
        notes_in={b: len(bar_notes(cont, b, bar_start, bpb)) for b in PHRASE_BARS},
        dotted_quarters=sum(abs(n.duration - DOTTED_QUARTER) < EPS for n in cont),
        notes=len(cont),
        lift_mean=lift(pitches, seed_pitches, np.mean),
        lift_top=lift(pitches, seed_pitches, max),
        bars_verbatim=verbatim,
        bars_moved=moved,
        bars=bars,
        ends_held=ends_held(cont, beat),
        ends_tonic=ends_on_tonic(cont, key, beat),
        texture_ratio=sounding_per_onset(cont) / seed_spo if cont and seed_spo > 0 else math.nan,
        two_voice_seed=two_voice_seed,
        two_voice_kept=two_voice_seed and is_two_voice(cont),
    )


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    return float(arr.mean()) if arr.size else math.nan


def summarize_form(
    continuations: Sequence[Piece], seeds: Sequence[Piece], bar_starts: Sequence[float]
) -> dict[str, float]:
    """Form figures over a set: shares of continuations, pooled shares of notes and bars, means
    of the lifts and ratios (see FORM_LABELS)."""
    if not len(continuations) == len(seeds) == len(bar_starts):
        raise ValueError("one seed and one bar start per continuation")
    forms = [form_of(s, c, b) for s, c, b in zip(seeds, continuations, bar_starts, strict=True)]
    out: dict[str, float] = {}
    for b in PHRASE_BARS:
        out[f"held_bar{b}"] = _mean([float(f.held[b]) for f in forms])
        out[f"notes_bar{b}"] = _mean([float(f.notes_in[b]) for f in forms])
    notes = sum(f.notes for f in forms)
    bars = sum(f.bars for f in forms)
    two = [f for f in forms if f.two_voice_seed]
    texture = [f.texture_ratio for f in forms]
    out |= {
        "dotted_quarter_share": sum(f.dotted_quarters for f in forms) / notes
        if notes
        else math.nan,
        "lift_mean": _mean([f.lift_mean for f in forms]),
        "lift_top": _mean([f.lift_top for f in forms]),
        "bars_verbatim": sum(f.bars_verbatim for f in forms) / bars if bars else math.nan,
        "bars_moved": sum(f.bars_moved for f in forms) / bars if bars else math.nan,
        "any_verbatim": _mean([float(f.bars_verbatim > 0) for f in forms]),
        "any_moved": _mean([float(f.bars_moved > 0) for f in forms]),
        "ends_held": _mean([float(f.ends_held) for f in forms]),
        "ends_tonic": _mean([float(f.ends_tonic) for f in forms]),
        "texture_ratio": _mean(texture),
        "texture_in_band": _mean(
            [float(TEXTURE_BAND[0] <= t <= TEXTURE_BAND[1]) for t in texture if not math.isnan(t)]
        ),
        "two_voice_seeds": float(len(two)),
        "two_voice_kept": _mean([float(f.two_voice_kept) for f in two]),
    }
    return out


FORM_LABELS: Mapping[str, str] = {
    "held_bar4": "a note of a beat or more starts in continuation bar 4",
    "held_bar8": "… in continuation bar 8",
    "notes_bar4": "notes in continuation bar 4",
    "notes_bar8": "notes in continuation bar 8",
    "dotted_quarter_share": "notes that are dotted quarters",
    "lift_mean": "register lift, semitones (mean pitch, continuation − seed)",
    "lift_top": "top-note lift, semitones (highest, continuation − seed)",
    "bars_verbatim": "bars that replay a seed bar note for note",
    "bars_moved": "bars that replay a seed bar, verbatim or transposed",
    "any_verbatim": "continuations with a bar replayed note for note",
    "any_moved": "continuations with a bar replayed, verbatim or transposed",
    "ends_held": "last onset held a beat or more",
    "ends_tonic": "ends on a held note of the seed key's tonic triad",
    "texture_ratio": "sounding notes per onset, continuation ÷ seed",
    "texture_in_band": "… within 0.8–1.25 × the seed's",
    "two_voice_seeds": "two-voice seeds (melody over a bass)",
    "two_voice_kept": "… continuations that keep two voices",
}
FORM_PERCENT = frozenset(
    {
        "held_bar4",
        "held_bar8",
        "dotted_quarter_share",
        "bars_verbatim",
        "bars_moved",
        "any_verbatim",
        "any_moved",
        "ends_held",
        "ends_tonic",
        "texture_in_band",
        "two_voice_kept",
    }
)
FORM_COUNT = frozenset({"two_voice_seeds"})
