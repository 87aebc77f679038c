"""One key model: Krumhansl-Kessler profiles and Krumhansl-Schmuckler key finding.

A key is (tonic pitch class, "major" | "minor"), C = 0. Two minor scales are in use, on purpose:
- `MINOR_SCALE_WITH_LEADING_NOTE` (natural minor plus the raised 7th): generation's out-of-scale
  penalty, so a continuation in minor may cadence on its leading note as tonal music does;
- `NATURAL_MINOR_SCALE`: the metrics' scale consistency, as MusPy defines it (so the figures
  compare with published ones).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

from engine.music.metre import last_key, piece_bars
from engine.music.notes import Note, Piece

# Krumhansl & Kessler (1982) key profiles, index 0 = the tonic.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)
MINOR_SCALE_WITH_LEADING_NOTE = (0, 2, 3, 5, 7, 8, 10, 11)


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=-1, keepdims=True)) / x.std(axis=-1, keepdims=True)


# (24, 12): the 12 major then the 12 minor profiles, rotated to each tonic, standardised
PROFILES = zscore(
    np.stack([np.roll(p, t) for p in (MAJOR_PROFILE, MINOR_PROFILE) for t in range(12)])
)


def best_key(hist: np.ndarray) -> int | None:
    """Index 0..23 (major C..B, minor C..B) of the profile best correlated with a 12-bin
    pitch-class histogram (Krumhansl-Schmuckler); None if the histogram has no contrast."""
    if hist.std() == 0:
        return None
    return int(np.argmax(PROFILES @ zscore(hist)))


def estimate_key(
    notes: Iterable[Note],
    *,
    min_duration: float = 0.0,
    no_contrast: tuple[int, str] | None = None,
    no_notes: Literal["none", "raise"] = "none",
) -> tuple[int, str] | None:
    """Krumhansl-Schmuckler key finding: (tonic pitch class, "major" | "minor") of the profile
    best correlated with the duration-weighted pitch-class histogram.

    The callers differ only in these choices:
    - `min_duration`: each note weighs at least this many beats (generation: 1e-3, so a note of
      no length still counts);
    - `no_contrast`: the key for a histogram with no contrast (every pitch class equally long):
      None (generation) or a fixed key (the metrics: C major);
    - `no_notes`: no notes, or no length at all, gives None ("none", generation) or raises
      ValueError ("raise", the metrics).
    """
    hist = np.zeros(12)
    for n in notes:
        hist[n.pitch % 12] += max(n.duration, min_duration)
    if hist.sum() <= 0:
        if no_notes == "raise":
            raise ValueError("cannot estimate the key of no notes")
        return None
    best = best_key(hist)
    return no_contrast if best is None else key_of_index(best)


# Each caller's choices, bound here beside the one estimator.
GENERATION_MIN_DURATION = 1e-3  # beats: generation counts a note of no length too
METRICS_NO_CONTRAST = (0, "major")


def key_for_generation(notes: Iterable[Note]) -> tuple[int, str] | None:
    """The generator's key of a seed: every note weighs at least GENERATION_MIN_DURATION beats;
    None for no notes or a histogram without contrast."""
    return estimate_key(notes, min_duration=GENERATION_MIN_DURATION)


# a section after a key change with fewer notes than this is not estimated: its key signature
# stands for it
MIN_SECTION_NOTES = 8
# A seed that modulates without a key signature saying so: its last KEY_WINDOW_BARS bars stand
# for it when it has twice as many bars and they fit another key clearly better than the whole
# seed's key (by KEY_SWITCH_MARGIN in correlation). Measured on 252 O'Neill tunes of 16 bars or
# more (`python -m bench.key_window`): the key moves away from the whole seed's estimate for
# 3.6 % of them (2.4 % to another key signature), and a seed whose last 8 bars are its first 8
# moved up a fifth, a tone or a minor third is continued in the new key 92-95 % of the time
# (40-70 % from the whole seed's estimate, the rule before).
KEY_WINDOW_BARS = 8
KEY_SWITCH_MARGIN = 0.10


def key_section(piece: Piece) -> Piece:
    """The part of a seed whose key a continuation keeps: from its last key change on (when
    notes follow it); else its last KEY_WINDOW_BARS bars when they clearly moved to another
    key; else the whole seed."""
    if piece.key_changes:
        at = piece.key_changes[-1][0]
        notes = tuple(n for n in piece.notes if n.start >= at - 1e-6)
        return _part(piece, notes) if notes else piece
    found = piece_bars(piece)
    if len(found) < 2 * KEY_WINDOW_BARS:
        return piece
    at = found[-KEY_WINDOW_BARS].start
    tail = tuple(n for n in piece.notes if n.start >= at - 1e-6)
    fit_tail = _fit(tail)
    whole = key_for_generation(piece.notes)
    if fit_tail is None or whole is None:
        return piece
    margin = fit_tail.max() - fit_tail[key_index(whole)]
    return _part(piece, tail) if margin >= KEY_SWITCH_MARGIN else piece


def key_in_force(piece: Piece) -> tuple[int, str] | None:
    """The generator's key of a seed at its end (a seed that modulates is continued in its
    last key): estimated from its `key_section`, or the last key signature itself when fewer
    than MIN_SECTION_NOTES notes follow it."""
    section = key_section(piece)
    if piece.key_changes and len(section.notes) < MIN_SECTION_NOTES:
        return last_key(piece)
    return key_for_generation(section.notes)


def key_index(key: tuple[int, str]) -> int:
    """The `best_key` index of a (tonic, mode) key."""
    return key[0] + (0 if key[1] == "major" else 12)


def _fit(notes: Iterable[Note]) -> np.ndarray | None:
    """(24,) Pearson correlations of the notes' pitch-class histogram (as the generator weighs
    it) with each key's profile; None without contrast."""
    hist = np.zeros(12)
    for n in notes:
        hist[n.pitch % 12] += max(n.duration, GENERATION_MIN_DURATION)
    if hist.std() == 0:
        return None
    return PROFILES @ zscore(hist) / 12


def _part(piece: Piece, notes: tuple[Note, ...]) -> Piece:
    return Piece(notes, piece.tempo_bpm, piece.time_signature, piece.program)


def key_for_metrics(notes: Iterable[Note]) -> tuple[int, str]:
    """The metrics' key: durations as they are, counted in (onset, pitch) order; C major for a
    histogram without contrast; ValueError for no notes."""
    ordered = sorted(notes, key=lambda n: (n.start, n.pitch))
    key = estimate_key(ordered, no_contrast=METRICS_NO_CONTRAST, no_notes="raise")
    assert key is not None  # no_contrast is a key and no notes raise
    return key


def key_of_index(index: int) -> tuple[int, str]:
    """The (tonic, mode) of a `best_key` index."""
    return index % 12, "major" if index < 12 else "minor"


def relative_key(tonic: int, mode: str) -> tuple[int, str]:
    """C major <-> A minor: same notes, different tonic."""
    if mode == "major":
        return (tonic + 9) % 12, "minor"
    return (tonic + 3) % 12, "major"
