"""Which key a seed that modulates without saying so is continued in (`engine.music.keys.key_in_force`).

Real tunes: O'Neill's 1850 (music21's bundled corpus, ABC), those of 16 bars or more; how often
the last-bars rule moves the key away from the whole seed's estimate (mostly these tunes stay in
one key, so a move is a false alarm or a genuine B-part modulation). Modulating seeds, made from
the same tunes: their first 8 bars, then the same 8 bars moved up a fifth, a tone and a minor
third; how often the key in force is the moved key (relative keys
count as the same: one key signature). Each `KEY_SWITCH_MARGIN` is tried, and the whole seed's
estimate (the rule before) beside them.

    python -m bench.key_window [--tunes 400]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from engine.music import keys
from engine.music.notes import Note, Piece

MOVES = (7, 2, 3)
MARGINS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.30)
HEAD_BARS = 8


def oneills(limit: int) -> Iterator[str]:
    """The first `limit` tunes of O'Neill's 1850, one ABC text each."""
    from music21 import corpus

    count = 0
    for path in corpus.getWork("oneills1850"):
        text = path.read_text(encoding="latin-1")
        starts = [m.start() for m in re.finditer(r"^X:", text, re.M)]
        for a, b in zip(starts, [*starts[1:], len(text)], strict=True):
            yield text[a:b]
            count += 1
            if count >= limit:
                return


def piece_of(abc: str) -> Piece | None:
    """The tune's notes (repeats as written, once) in its first metre; None if unreadable."""
    from music21 import converter

    from engine.music.notation_parser import abc_fields_on_lines

    try:
        score = converter.parseData(abc_fields_on_lines(abc), format="abc")
    except Exception:  # noqa: BLE001 - a tune music21 cannot read is skipped
        return None
    meter = next(iter(score.recurse().getElementsByClass("TimeSignature")), None)
    metre = (int(meter.numerator), int(meter.denominator)) if meter is not None else (4, 4)
    notes = [
        Note(float(n.offset), float(n.quarterLength), int(p.midi))
        for n in score.flatten().notes
        if n.quarterLength > 0 and hasattr(n, "pitches")
        for p in n.pitches
    ]
    return Piece(tuple(sorted(notes, key=lambda n: (n.start, n.pitch))), time_signature=metre)


def same_signature(a: tuple[int, str] | None, b: tuple[int, str] | None) -> bool:
    return a is not None and b is not None and (a == b or keys.relative_key(*a) == b)


def modulating(piece: Piece, step: int) -> tuple[Piece, tuple[int, str] | None]:
    """The tune's first HEAD_BARS bars, then them again `step` semitones away; and the key the
    continuation should keep (the head's estimate, moved)."""
    bar = piece.beats_per_bar * HEAD_BARS
    head = [n for n in piece.notes if n.start < bar]
    first = keys.key_for_generation(head)
    moved = [Note(n.start + bar, n.duration, n.pitch + step) for n in head]
    expect = ((first[0] + step) % 12, first[1]) if first is not None else None
    return Piece(tuple(head + moved), time_signature=piece.time_signature), expect


def run(tunes: int = 400) -> dict:
    pieces = [p for p in map(piece_of, oneills(tunes)) if p is not None and p.notes]
    long = [p for p in pieces if p.bars >= 2 * keys.KEY_WINDOW_BARS]
    made = {step: [modulating(p, step) for p in long] for step in MOVES}
    rows = []
    shipped = keys.KEY_SWITCH_MARGIN
    try:
        for margin in (None, *MARGINS):
            keys.KEY_SWITCH_MARGIN = float("inf") if margin is None else margin
            moved = [p for p in long if keys.key_in_force(p) != keys.key_for_generation(p.notes)]
            other = [
                p
                for p in moved
                if not same_signature(keys.key_in_force(p), keys.key_for_generation(p.notes))
            ]
            right = {
                step: sum(same_signature(keys.key_in_force(s), e) for s, e in made[step])
                / max(1, len(made[step]))
                for step in MOVES
            }
            rows.append(
                {
                    "margin": margin,
                    "moved": len(moved) / max(1, len(long)),
                    "other_signature": len(other) / max(1, len(long)),
                    "right": right,
                }
            )
    finally:
        keys.KEY_SWITCH_MARGIN = shipped
    return {"tunes": len(pieces), "long": len(long), "shipped_margin": shipped, "rows": rows}


def table(result: dict) -> str:
    head = "| rule | real tunes: key moved | to another signature | "
    head += " | ".join(f"modulation {s:+d}: right" for s in MOVES) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(MOVES)]
    for row in result["rows"]:
        m = row["margin"]
        name = "whole seed (before)" if m is None else f"last 8 bars, margin ≥ {m:.2f}"
        if m == result["shipped_margin"]:
            name += " (shipped)"
        cells = " | ".join(f"{row['right'][s]:.0%}" for s in MOVES)
        lines.append(f"| {name} | {row['moved']:.1%} | {row['other_signature']:.1%} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunes", type=int, default=400)
    result = run(parser.parse_args().tunes)
    print(f"{result['long']} of {result['tunes']} tunes have 16 bars or more")
    print(table(result))


if __name__ == "__main__":
    main()
