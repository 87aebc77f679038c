"""How often a bar of the corpus's music replays, note for note, the bar 8, 4 or 2 bars before it:
the chances generation's strain plan draws from (engine.model.copy.strains).

A strain comes back at a place in the form: a reel's 9th bar is its 1st again, a song's 5th often
its 1st. So each chance is read by the bar's place in an 8-bar phrase (bar index from the piece's
first bar, modulo PHRASE), and in the order the plan asks: the longest lag first, each next lag
given that the longer ones did not replay. Which lags can be looked back to depends on the seed,
so there is one table per longest available lag. Counted over the corpus's training split only;
`python -m engine.model.corpus.strain_returns` writes engine/data/strain-returns.json.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from engine.model.copy.lookback import LAG_BARS
from engine.model.copy.strains import DEFAULT_STRAINS_PATH, PHRASE
from engine.music.notes import Piece


def bar_contents(piece: Piece) -> list[tuple[tuple[int, int], ...]]:
    """Each bar's notes as sorted (onset within the bar in 48ths of a beat, pitch) pairs."""
    beats = piece.beats_per_bar
    if beats <= 0 or not piece.notes:
        return []
    bars: list[list[tuple[int, int]]] = [[] for _ in range(int(piece.end_beat // beats) + 1)]
    for note in piece.notes:
        index = int(note.start // beats)
        bars[index].append((round((note.start - index * beats) * 48), note.pitch))
    return [tuple(sorted(b)) for b in bars]


def _lags_from(longest: int) -> tuple[int, ...]:
    """The lags looked back to when `longest` is the longest available: it and the shorter ones,
    longest first."""
    return tuple(sorted((lag for lag in LAG_BARS if lag <= longest), reverse=True))


def fit_strain_returns(pieces: Sequence[Piece]) -> dict:
    """The chances, counted over `pieces`: for each longest available lag, for each lag it
    allows (longest first) and each place in the phrase, the share of bars that replay the bar
    that lag before, among the bars that replayed none of the longer lags. Only non-empty bars
    that lie after every lag in question count."""
    counts: dict[int, list[list[list[int]]]] = {}
    for longest in LAG_BARS:
        lags = _lags_from(longest)
        counts[longest] = [[[0, 0] for _ in range(PHRASE)] for _ in lags]
    for piece in pieces:
        bars = bar_contents(piece)
        for longest, table in counts.items():
            lags = _lags_from(longest)
            for b in range(longest, len(bars)):
                if not bars[b]:
                    continue
                for i, lag in enumerate(lags):
                    cell = table[i][b % PHRASE]
                    cell[1] += 1
                    if bars[b] == bars[b - lag]:
                        cell[0] += 1
                        break
    chances = {
        str(longest): [[round(hit / max(1, seen), 4) for hit, seen in row] for row in table]
        for longest, table in counts.items()
    }
    bars_seen = {str(k): sum(c[1] for c in t[0]) for k, t in counts.items()}
    return {"phrase": PHRASE, "chances": chances, "bars": bars_seen}


def write_strain_returns(pieces: Sequence[Piece], path: Path = DEFAULT_STRAINS_PATH) -> dict:
    fitted = fit_strain_returns(pieces)
    fitted["fitted_on"] = f"the corpus's training split, {len(pieces)} pieces"
    fitted["command"] = "python -m engine.model.corpus.strain_returns"
    path.write_text(json.dumps(fitted, indent=1) + "\n")
    return fitted


if __name__ == "__main__":  # the command line is engine.cli.corpus's
    from engine.cli.corpus import strain_returns_main

    raise SystemExit(strain_returns_main())
