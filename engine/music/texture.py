"""Texture: how many notes sound at once. A continuation keeps its seed's: a melody over a bass
stays two voices, a melody one, a four-part chorale four (engine.model.generate.continuation
caps the notes it makes by `cap_sounding`, and its grammar keeps at least `fewest_sounding`
of them sounding at each onset)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from engine.music.notes import Note

EPS = 1e-6  # beats: a note that ends this close to an onset no longer sounds there
LEGATO = 0.125  # beats: a note held less than this past an onset is a melody played legato


def sounding_counts(notes: Sequence[Note], held: float = EPS) -> list[int]:
    """At each onset, how many notes sound (started there, or held from before): those begun
    by then less those ended by then, or by `held` beats after it."""
    starts = sorted(n.start for n in notes)
    ends = sorted(n.end for n in notes)
    onsets = sorted(set(starts))
    return [bisect_right(starts, t + EPS) - bisect_right(ends, t + held) for t in onsets]


def max_sounding(notes: Sequence[Note]) -> int:
    """The most notes sounding at any onset (the seed's fullest moment); 0 without notes."""
    return max(sounding_counts(notes), default=0)


def fewest_sounding(notes: Sequence[Note]) -> int:
    """The fewest notes sounding at any onset after the first (a pickup or a staggered entry
    may start alone): a four-part chorale's 3 or 4, a melody over a held bass 2, a melody
    or a texture whose voices rest 1; 0 without a second onset. A note held less than LEGATO
    past an onset does not sound there (a melody played legato stays one voice)."""
    return min(sounding_counts(notes, held=LEGATO)[1:], default=0)


def cap_sounding(notes: Sequence[Note], cap: int) -> tuple[Note, ...]:
    """The notes, sorted by onset then pitch, with no onset sounding more than `cap` of them
    (1 or more): where a new onset would, notes held into it end there instead, those nearest
    in pitch to the new notes first (a voice moving on: a bass held under a melody stays), then
    the earliest begun. Notes starting together are never cut here (a chord is the decoder's
    `chord_cap`); a note is only ever shortened, to one tick at the least."""
    if cap < 1:
        raise ValueError(f"cap must be at least 1, not {cap}")
    out = sorted(notes, key=lambda n: (n.start, n.pitch))
    held: list[int] = []  # indices into `out` of the notes sounding before this onset
    i = 0
    while i < len(out):
        t = out[i].start
        j = i
        while j < len(out) and out[j].start <= t + EPS:
            j += 1
        held = [k for k in held if out[k].end > t + EPS]
        over = len(held) + (j - i) - cap
        if over > 0:
            new = [n.pitch for n in out[i:j]]
            held.sort(key=lambda k: (min(abs(out[k].pitch - p) for p in new), out[k].start))
            for k in held[:over]:
                n = out[k]
                out[k] = Note(n.start, t - n.start, n.pitch, n.velocity)
            held = held[over:]
        held += range(i, j)
        i = j
    return tuple(out)


def two_note_onsets(notes: Sequence[Note]) -> list[tuple[int, int]]:
    """(lower, upper) pitch at each onset where exactly two notes sound."""
    ordered = sorted(notes, key=lambda n: n.start)
    pairs: list[tuple[int, int]] = []
    active: list[Note] = []
    i = 0
    while i < len(ordered):
        t = ordered[i].start
        active = [n for n in active if n.end > t + EPS]
        while i < len(ordered) and ordered[i].start <= t + EPS:
            if ordered[i].end > t + EPS:
                active.append(ordered[i])
            i += 1
        if len(active) == 2:
            low, high = sorted(n.pitch for n in active)
            pairs.append((low, high))
    return pairs


def voice_split(notes: Sequence[Note]) -> int | None:
    """A melody over a bass: where at least half the onsets sound exactly two notes and every
    such onset's lower note lies below every such onset's upper note, the pitch halfway between
    the two voices (the bass keeps to it and below, the melody above it); None otherwise (one
    voice, chords, or voices that cross)."""
    pairs = two_note_onsets(notes)
    onsets = len({n.start for n in notes})
    if not pairs or len(pairs) < onsets / 2:
        return None
    top_of_bass, foot_of_melody = max(lo for lo, _ in pairs), min(hi for _, hi in pairs)
    if top_of_bass >= foot_of_melody:
        return None
    return (top_of_bass + foot_of_melody) // 2
