"""What a style's own music is like when no seed says: metre, tempo and key, counted over the
training corpus. A no-seed request draws all three from its style's counts (a folk tune in 2/4 or
6/8, mostly in G or D), not 4/4 at 120 in any of 24 keys.

Built once: `python -m engine.model.corpus.style_priors --out engine/data/style-priors.json`; numpy only.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine.music.keys import key_for_metrics
from engine.music.notes import Piece

log = logging.getLogger(__name__)

DEFAULT_PRIORS_PATH = Path(__file__).resolve().parents[2] / "data" / "style-priors.json"
ALL_STYLES = "none"  # the pooled counts, for a request without a style


def _counts(pieces: Iterable[Piece]) -> dict[str, dict[str, int]]:
    metres, tempi, keys = Counter(), Counter(), Counter()
    for piece in pieces:
        if not piece.notes:
            continue
        metres[f"{piece.time_signature[0]}/{piece.time_signature[1]}"] += 1
        tempi[f"{piece.tempo_bpm:g}"] += 1
        tonic, mode = key_for_metrics(piece.notes)
        keys[f"{tonic} {mode}"] += 1
    return {
        "time_signatures": dict(metres.most_common()),
        "tempi": dict(tempi.most_common()),
        "keys": dict(keys.most_common()),
    }


def compute_style_priors(pieces: Sequence[Piece]) -> dict[str, dict[str, dict[str, int]]]:
    """Counts of metres ("6/8"), tempi ("100") and keys ("7 major": tonic pitch class and mode,
    Krumhansl-Schmuckler on the whole piece) per style, and pooled under "none"."""
    styles = sorted({p.style for p in pieces if p.style})
    priors = {style: _counts(p for p in pieces if p.style == style) for style in styles}
    priors[ALL_STYLES] = _counts(pieces)
    return priors


@lru_cache(maxsize=4)
def load_style_priors(path: Path = DEFAULT_PRIORS_PATH) -> dict[str, Any]:
    """The counts `compute_style_priors` wrote; {} (no priors) when the file is missing."""
    if not Path(path).exists():
        log.warning("no style priors at %s: no-seed requests fall back to 4/4, 120 bpm", path)
        return {}
    return json.loads(Path(path).read_text())


def _draw(counts: dict[str, int], u: float) -> str:
    names = list(counts)
    cdf = np.cumsum([counts[n] for n in names], dtype=np.float64)
    return names[min(len(names) - 1, int(np.searchsorted(cdf, u * cdf[-1], side="right")))]


def draw_setting(
    style: str | None, uniforms: Sequence[float], priors: dict[str, Any] | None = None
) -> tuple[tuple[int, int], float, tuple[int, str] | None]:
    """(time signature, tempo in bpm, (tonic, mode) or None) for a no-seed request of `style`,
    drawn from the style's corpus counts with three uniforms in [0, 1) (the request's own
    random numbers, so a rng seed repeats it). Without priors: 4/4, 120 bpm, no key."""
    priors = load_style_priors() if priors is None else priors
    counts = priors.get(style or ALL_STYLES) or priors.get(ALL_STYLES)
    if not counts:
        return (4, 4), 120.0, None
    num, den = _draw(counts["time_signatures"], uniforms[0]).split("/")
    tempo = float(_draw(counts["tempi"], uniforms[1]))
    tonic, mode = _draw(counts["keys"], uniforms[2]).split()
    return (int(num), int(den)), tempo, (int(tonic), mode)


if __name__ == "__main__":  # the command line is engine.cli.corpus's
    from engine.cli.corpus import style_priors_main

    raise SystemExit(style_priors_main())
