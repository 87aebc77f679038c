"""The music Motif works with: notes in beats, a piece with its tempo, metre and instrument.

Everything above MIDI bytes (the model, the renderer, the metrics) speaks this small vocabulary.
No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

# The grid Motif quantises to (the model's events, the MusicXML score): 12 ticks a quarter note,
# so 16ths and triplets are exact. Note lengths in ticks: straight and triplet values from a
# 32nd-note triplet to two bars of 4/4.
TICKS_PER_BEAT = 12
DURATION_BINS = (1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 30, 36, 42, 48, 60, 72, 96)
# Metres as a score writes them: a sixteenth-note beat at the shortest (a 1/64 bar is less than
# one tick of the grid above), 1 to 32 beats a bar. Anything else is written in 4/4.
NOTATED_DENOMINATORS = (1, 2, 4, 8, 16)
CUT_EPS = 1e-6  # beats: an onset this close to a cut (`Piece.notes_between`) counts as at it


def notated_metre(metre: tuple[int, int]) -> tuple[int, int]:
    """`metre` when a score can write it, else 4/4."""
    num, den = metre
    return (num, den) if 1 <= num <= 32 and den in NOTATED_DENOMINATORS else (4, 4)


@dataclass(frozen=True, slots=True)
class Note:
    """One note. Times are in quarter-note beats from the start of the piece."""

    start: float
    duration: float
    pitch: int  # MIDI pitch 0..127
    velocity: int = 80  # 1..127

    @property
    def end(self) -> float:
        return self.start + self.duration


# A metre from the beat it starts at: (beat, numerator, denominator); a key likewise:
# (beat, tonic pitch class, "major" | "minor").
MetreChange = tuple[float, int, int]
KeyChange = tuple[float, int, str]


@dataclass(frozen=True, slots=True)
class Piece:
    """A monophonic or polyphonic piece of music (one instrument), sorted by onset then pitch.

    `time_signature` is the metre in force at the piece's end (what a continuation is written
    in). A piece whose metre changes lists every metre in `metre_changes`, the first at beat 0
    and the last `time_signature`; one whose key signature changes lists its keys in
    `key_changes` (meta["key"] is the first). Both are empty otherwise."""

    notes: tuple[Note, ...]
    tempo_bpm: float = 120.0
    time_signature: tuple[int, int] = (4, 4)
    program: int = 0  # General MIDI program 0..127 (0 = Acoustic Grand Piano)
    name: str = ""
    style: str | None = None
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    metre_changes: tuple[MetreChange, ...] = ()
    key_changes: tuple[KeyChange, ...] = ()

    @property
    def beats_per_bar(self) -> float:
        num, den = self.time_signature
        return num * 4.0 / den

    @property
    def end_beat(self) -> float:
        return max((n.end for n in self.notes), default=0.0)

    @property
    def duration_s(self) -> float:
        return self.end_beat * 60.0 / self.tempo_bpm

    @property
    def bars(self) -> float:
        return self.end_beat / self.beats_per_bar

    def notes_between(
        self, start: float | None = None, end: float | None = None, *, clip: bool = False
    ) -> tuple[Note, ...]:
        """The notes that start at or after beat `start` and before beat `end` (None: no
        bound), an onset within CUT_EPS of either counting as at it: the first bars as a seed,
        the bars after them as its real continuation. `clip`: each note ends by `end`."""
        low = -math.inf if start is None else start - CUT_EPS
        high = math.inf if end is None else end - CUT_EPS
        kept = tuple(n for n in self.notes if low <= n.start < high)
        if clip and end is not None:
            return tuple(replace(n, duration=min(n.duration, end - n.start)) for n in kept)
        return kept

    def sorted(self) -> Piece:
        return replace(self, notes=tuple(sorted(self.notes, key=lambda n: (n.start, n.pitch))))

    def shifted(self, beats: float) -> Piece:
        """The notes moved by `beats`; a metre or key change moves with them (the first stays
        at beat 0: it holds from the start)."""
        return replace(
            self,
            notes=tuple(replace(n, start=n.start + beats) for n in self.notes),
            metre_changes=tuple((_moved(b, beats), n, d) for b, n, d in self.metre_changes),
            key_changes=tuple((_moved(b, beats), t, m) for b, t, m in self.key_changes),
        )

    def transposed(self, semitones: int) -> Piece:
        return replace(
            self,
            notes=tuple(
                replace(n, pitch=min(127, max(0, n.pitch + semitones))) for n in self.notes
            ),
        )


def _moved(beat: float, beats: float) -> float:
    return max(0.0, beat + beats) if beat > 0 else 0.0
