"""Measures of generated music: collapse, key, pitch and rhythm statistics, copying from training.

Pure numpy over `Note`s; the figures `python -m bench.evaluate` prints come from `summarize`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median

import numpy as np

from engine.music import keys
from engine.music.keys import relative_key
from engine.music.notes import TICKS_PER_BEAT, Note, Piece

log = logging.getLogger(__name__)


# Bin centres in beats (1/12 = a triplet 16th ... 4 = a whole note). Values fall into the nearest
# centre on a log scale, so 0.45 beats lands in 1/2 and anything past 4 beats in 4.
DEFAULT_LENGTH_BINS: tuple[float, ...] = (
    1 / 12,
    1 / 8,
    1 / 6,
    1 / 4,
    1 / 3,
    3 / 8,
    1 / 2,
    2 / 3,
    3 / 4,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
)


COLLAPSE_WINDOW = 32
COLLAPSE_MAX_DISTINCT = 2
COLLAPSE_MAX_REPEAT = 8

NotesLike = Piece | Iterable[Note]


def _as_notes(notes: NotesLike) -> list[Note]:
    """The notes of a Piece or a sequence, sorted by (onset, pitch) like a Piece's."""
    raw = notes.notes if isinstance(notes, Piece) else notes
    return sorted(raw, key=lambda n: (n.start, n.pitch))


def top_line(notes: NotesLike) -> list[Note]:
    """The highest note at each onset: the melody a listener follows in a chordal texture."""
    line: list[Note] = []
    for n in _as_notes(notes):
        if line and math.isclose(line[-1].start, n.start, abs_tol=1e-6):
            line[-1] = n  # sorted by pitch within an onset, so the last one is the top
        else:
            line.append(n)
    return line


def longest_repeat(pitches: Sequence[int]) -> int:
    """Length of the longest run of one pitch repeated back to back."""
    best = run = 0
    prev = None
    for p in pitches:
        run = run + 1 if p == prev else 1
        prev = p
        best = max(best, run)
    return best


def is_collapsed(notes: NotesLike) -> bool:
    """Whether a continuation has collapsed onto one or two notes.

    Collapsed means: among the first 32 onsets of the top line there are at most 2 distinct
    pitches, or anywhere in the top line one pitch sounds more than 8 times in a row. An empty
    continuation counts as collapsed (it has at most 2 distinct pitches); so does any melody of
    fewer than 3 notes, which is why continuations should be several bars long.
    """
    pitches = [n.pitch for n in top_line(notes)]
    if len(set(pitches[:COLLAPSE_WINDOW])) <= COLLAPSE_MAX_DISTINCT:
        return True
    return longest_repeat(pitches) > COLLAPSE_MAX_REPEAT


def pitch_class_histogram(notes: NotesLike, *, weight_by_duration: bool = False) -> np.ndarray:
    """Counts (or summed durations in beats) of the 12 pitch classes, C = 0."""
    hist = np.zeros(12)
    for n in _as_notes(notes):
        hist[n.pitch % 12] += n.duration if weight_by_duration else 1.0
    return hist


def key_kept(seed: NotesLike, continuation: NotesLike) -> bool:
    """Whether the continuation stays in the seed's key.

    Rule: estimate both keys with `keys.key_for_metrics`; the key is kept when they are equal or when the
    continuation's key is the seed's relative major/minor (C major and A minor share every note,
    and K–S often confuses them on short excerpts). Modulating to any other key, including the
    dominant or the parallel mode, counts as not kept. An empty seed or continuation is not kept.
    """
    seed_notes, cont_notes = _as_notes(seed), _as_notes(continuation)
    if not seed_notes or not cont_notes:
        return False
    seed_key = keys.key_for_metrics(_as_notes(seed_notes))
    cont_key = keys.key_for_metrics(_as_notes(cont_notes))
    return cont_key == seed_key or cont_key == relative_key(*seed_key)


def pitch_class_entropy(notes: NotesLike) -> float:
    """Shannon entropy in bits of the pitch-class counts: 0 for one pitch class, log2(12) ≈ 3.58
    for all twelve equally often; tonal melodies sit around 2.5-3. NaN for no notes."""
    hist = pitch_class_histogram(notes)
    total = hist.sum()
    if total == 0:
        return math.nan
    p = hist[hist > 0] / total
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def scale_consistency(notes: NotesLike) -> float:
    """The largest fraction of notes (by count) inside one major or natural-minor scale, over all
    24 (MusPy's definition; natural minor shares its notes with the relative major). NaN for no
    notes."""
    hist = pitch_class_histogram(notes)
    total = hist.sum()
    if total == 0:
        return math.nan
    best = 0.0
    for scale in (keys.MAJOR_SCALE, keys.NATURAL_MINOR_SCALE):
        for tonic in range(12):
            inside = sum(hist[(tonic + d) % 12] for d in scale)
            best = max(best, inside / total)
    return float(best)


def _bin_counts(values: Sequence[float], bins: Sequence[float]) -> np.ndarray:
    """Counts of positive values in their nearest bin centre on a log scale."""
    centres = np.log(np.asarray(bins, dtype=float))
    counts = np.zeros(len(centres))
    vals = np.asarray([v for v in values if v > 0], dtype=float)
    if vals.size:
        idx = np.abs(np.log(vals)[:, None] - centres[None, :]).argmin(axis=1)
        np.add.at(counts, idx, 1.0)
    return counts


def note_length_histogram(
    notes: NotesLike, bins: Sequence[float] = DEFAULT_LENGTH_BINS
) -> np.ndarray:
    """Counts of note durations (beats) in the nearest of `bins` (beats, log scale)."""
    return _bin_counts([n.duration for n in _as_notes(notes)], bins)


def inter_onset_intervals(notes: NotesLike) -> list[float]:
    """Beats between successive distinct onsets (a chord is one onset, so no zero intervals)."""
    onsets = sorted({round(n.start, 6) for n in _as_notes(notes)})
    return [b - a for a, b in zip(onsets, onsets[1:], strict=False)]


def ioi_histogram(notes: NotesLike, bins: Sequence[float] = DEFAULT_LENGTH_BINS) -> np.ndarray:
    """Counts of inter-onset intervals (beats) in the nearest of `bins` (beats, log scale)."""
    return _bin_counts(inter_onset_intervals(notes), bins)


def overlap_area(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """Overlapping area of two histograms after normalising each to sum 1: sum of the bin-wise
    minimum. 1 = identical distributions, 0 = disjoint (or either histogram empty)."""
    p_arr, q_arr = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"histograms differ in shape: {p_arr.shape} vs {q_arr.shape}")
    if p_arr.sum() <= 0 or q_arr.sum() <= 0:
        return 0.0
    return float(np.minimum(p_arr / p_arr.sum(), q_arr / q_arr.sum()).sum())


def duration_ticks(beats: float) -> int:
    return int(round(beats * TICKS_PER_BEAT))


def distinct_durations(notes: NotesLike) -> int:
    """How many different note lengths (on the 12-ticks-per-beat grid) the notes use. The hobby
    baseline's fixed 0.5-beat notes give 1."""
    return len({duration_ticks(n.duration) for n in _as_notes(notes)})


# --- copying from the training set ---------------------------------------------------------------

_MAX_DURATION_TICKS = 4095
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64


def interval_tokens(notes: NotesLike) -> np.ndarray:
    """One int64 per note after the first: (pitch interval from the previous note, duration in
    ticks), notes in (onset, pitch) order. Intervals make it transposition-invariant."""
    ns = _as_notes(notes)
    if len(ns) < 2:
        return np.zeros(0, dtype=np.int64)
    pitch = np.array([n.pitch for n in ns], dtype=np.int64)
    dur = np.clip([duration_ticks(n.duration) for n in ns], 0, _MAX_DURATION_TICKS)
    interval = np.clip(np.diff(pitch), -127, 127) + 128
    return interval * (_MAX_DURATION_TICKS + 1) + np.asarray(dur[1:], dtype=np.int64)


def _gram_hashes(tokens: np.ndarray, length: int) -> np.ndarray:
    """Polynomial hashes (mod 2**64) of every `length`-gram of `tokens`, one per start.

    hash(i) = sum_j t[i+j] * B**j, from prefix sums P[k] = sum_{j<k} t[j] * B**j as
    (P[i+L] - P[i]) * B**-i; B is odd so B**-1 exists mod 2**64 and all of it vectorises.
    """
    n = tokens.size
    if length <= 0 or n < length:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        t = tokens.astype(np.uint64) + np.uint64(1)  # no token hashes to 0
        powers = np.cumprod(np.full(n, _HASH_BASE, dtype=np.uint64), dtype=np.uint64)
        powers = np.concatenate([np.ones(1, dtype=np.uint64), powers[:-1]])  # B**0 .. B**(n-1)
        inv = np.uint64(pow(int(_HASH_BASE), -1, 2**64))
        inv_powers = np.cumprod(np.full(n, inv, dtype=np.uint64), dtype=np.uint64)
        inv_powers = np.concatenate([np.ones(1, dtype=np.uint64), inv_powers[:-1]])
        prefix = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(t * powers)])
        starts = np.arange(n - length + 1)
        return (prefix[starts + length] - prefix[starts]) * inv_powers[starts]


@dataclass
class TrainingIndex:
    """Every (interval, duration) n-gram of the training pieces, to find copied phrases.

    Sets of n-gram hashes are built per length on demand and cached; `longest_match` finds the
    longest length that occurs with an exponential-then-binary search (occurring is monotone: every
    sub-run of a copied run is copied too). 64-bit hashes: a false match is vanishingly unlikely.
    """

    tokens: np.ndarray  # (T,) int64, all pieces' interval tokens concatenated
    piece_ids: np.ndarray  # (T,) int32, which piece each token came from
    max_cached: int = 24

    def __post_init__(self) -> None:
        self._sets: dict[int, np.ndarray] = {}

    @classmethod
    def from_pieces(cls, pieces: Iterable[NotesLike]) -> TrainingIndex:
        chunks, ids = [], []
        for i, piece in enumerate(pieces):
            toks = interval_tokens(piece)
            chunks.append(toks)
            ids.append(np.full(toks.size, i, dtype=np.int32))
        tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        piece_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
        return cls(tokens=tokens, piece_ids=piece_ids)

    def grams(self, length: int) -> np.ndarray:
        """Sorted unique hashes of the training `length`-grams that stay inside one piece."""
        if length not in self._sets:
            hashes = _gram_hashes(self.tokens, length)
            if hashes.size:
                same_piece = self.piece_ids[: hashes.size] == self.piece_ids[length - 1 :]
                hashes = hashes[same_piece]
            if len(self._sets) >= self.max_cached:
                self._sets.pop(next(iter(self._sets)))
            self._sets[length] = np.unique(hashes)
        return self._sets[length]

    def contains_run(self, tokens: np.ndarray, length: int) -> bool:
        """Whether some `length`-gram of `tokens` occurs in the training set."""
        if length <= 0:
            return True
        query = _gram_hashes(tokens, length)
        if query.size == 0:
            return False
        table = self.grams(length)
        if table.size == 0:
            return False
        pos = np.searchsorted(table, query).clip(0, table.size - 1)
        return bool((table[pos] == query).any())

    def longest_match(self, tokens: np.ndarray) -> int:
        """The largest L such that some L consecutive tokens of `tokens` occur in training."""
        n = int(tokens.size)
        if n == 0 or not self.contains_run(tokens, 1):
            return 0
        lo, hi = 1, 2  # lo is known to match; find a hi that does not
        while hi <= n and self.contains_run(tokens, hi):
            lo, hi = hi, hi * 2
        hi = min(hi, n + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.contains_run(tokens, mid):
                lo = mid
            else:
                hi = mid
        return lo


def longest_copied_run(continuation_notes: NotesLike, training_index: TrainingIndex) -> int:
    """The longest run of consecutive notes of the continuation whose (pitch interval from the
    previous note, duration in ticks) sequence occurs verbatim, in some transposition, in one
    training piece. The continuation's first note has no interval, so a run of L means L notes
    after it (L + 1 notes sharing their L intervals)."""
    return training_index.longest_match(interval_tokens(continuation_notes))


# --- a whole set -------------------------------------------------------------------------------


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def summarize(
    continuations: Sequence[NotesLike],
    seeds: Sequence[NotesLike | None],
    reference_pieces: Sequence[NotesLike],
    training_index: TrainingIndex | None,
    *,
    bins: Sequence[float] = DEFAULT_LENGTH_BINS,
) -> dict[str, float]:
    """All figures over a set of continuations (`seeds[i]` is the seed of `continuations[i]`).

    Note-length and IOI overlaps pool every note of the set into one histogram and compare it with
    the pooled histogram of `reference_pieces` (real music). Per-piece figures are means over the
    pieces that have notes. Copied-run figures are NaN without a `training_index`.
    """
    if len(seeds) != len(continuations):
        raise ValueError(f"{len(continuations)} continuations but {len(seeds)} seeds")
    conts = [_as_notes(c) for c in continuations]
    n = len(conts)

    ref_len = sum((note_length_histogram(r, bins) for r in reference_pieces), np.zeros(len(bins)))
    ref_ioi = sum((ioi_histogram(r, bins) for r in reference_pieces), np.zeros(len(bins)))
    gen_len = sum((note_length_histogram(c, bins) for c in conts), np.zeros(len(bins)))
    gen_ioi = sum((ioi_histogram(c, bins) for c in conts), np.zeros(len(bins)))

    kept = [key_kept(s, c) for s, c in zip(seeds, conts, strict=True) if s is not None]
    runs = (
        [longest_copied_run(c, training_index) for c in conts] if training_index is not None else []
    )
    return {
        "n": float(n),
        "notes_mean": float(np.mean([len(c) for c in conts])) if n else math.nan,
        "collapse_rate": float(np.mean([is_collapsed(c) for c in conts])) if n else math.nan,
        "key_kept_rate": float(np.mean(kept)) if kept else math.nan,
        "pitch_class_entropy": _nanmean([pitch_class_entropy(c) for c in conts]),
        "scale_consistency": _nanmean([scale_consistency(c) for c in conts]),
        "note_length_overlap": overlap_area(gen_len, ref_len),
        "ioi_overlap": overlap_area(gen_ioi, ref_ioi),
        "copied_run_max": float(max(runs)) if runs else math.nan,
        "copied_run_median": float(median(runs)) if runs else math.nan,
        "distinct_durations": _nanmean([float(distinct_durations(c)) for c in conts if c]),
    }


FIGURE_LABELS: Mapping[str, str] = {
    "n": "continuations",
    "notes_mean": "notes per continuation (mean)",
    "collapse_rate": "collapse rate (lower is better)",
    "key_kept_rate": "key kept (seed's key or its relative)",
    "pitch_class_entropy": "pitch-class entropy, bits",
    "scale_consistency": "scale consistency",
    "note_length_overlap": "note-length overlap with real music",
    "ioi_overlap": "inter-onset-interval overlap with real music",
    "copied_run_max": "longest copied run, notes (max)",
    "copied_run_median": "longest copied run, notes (median)",
    "distinct_durations": "distinct note lengths per continuation",
}
