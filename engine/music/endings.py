"""Where a closed ending starts, in any metre, and a closed result reopened for extending.

A closed continuation (engine.model.generate.ending) holds a tonic-chord note from its closing beat to the
bar line; an extension continues the music before that cadence, not after it.
"""

from __future__ import annotations

from dataclasses import replace

from engine.music.notes import Piece


def closing_hold(time_signature: tuple[int, int], ticks_per_beat: int) -> int:
    """Ticks from the closing beat to the bar line: the last dotted beat of a compound metre
    (6/8, 9/8, 12/8), the whole bar of 2 or 3 beats, the second half of a 4/4 bar (and of other
    even metres), the last three beats of other odd ones."""
    num, den = time_signature
    beat = max(1, ticks_per_beat * 4 // max(1, den))
    if den == 8 and num % 3 == 0 and num >= 6:
        return 3 * beat
    if num <= 3:
        return num * beat
    return (num // 2) * beat if num % 2 == 0 else 3 * beat


def reopened(piece: Piece, ticks_per_beat: int = 12) -> Piece:
    """A closed result without its cadence: the notes from its closing beat on are dropped and
    the notes sounding across it end there. A piece too short to have one comes back as it is."""
    if not piece.notes:
        return piece
    end = max(n.end for n in piece.notes)
    bar_beats = piece.beats_per_bar
    hold = min(bar_beats, closing_hold(piece.time_signature, ticks_per_beat) / ticks_per_beat)
    cut = end - hold
    kept = piece.notes_between(end=cut, clip=True)
    return replace(piece, notes=kept) if kept else piece
