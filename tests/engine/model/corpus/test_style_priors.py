from __future__ import annotations

from collections import Counter

from engine.model.corpus.load import load_corpus
from engine.model.corpus.style_priors import compute_style_priors, draw_setting, load_style_priors
from engine.music.notes import Note, Piece


def _scale_tune(tonic: int, ts: tuple[int, int], style: str, tempo: float) -> Piece:
    steps = [0, 2, 4, 5, 7, 5, 4, 2, 0, 4, 7, 12, 7, 4, 0, 0]
    notes = tuple(Note(0.5 * i, 0.5, 60 + tonic + s, 80) for i, s in enumerate(steps))
    return Piece(notes, tempo_bpm=tempo, time_signature=ts, style=style)


def test_priors_count_each_styles_metres_tempi_and_keys():
    pieces = [
        _scale_tune(7, (6, 8), "folk", 100.0),
        _scale_tune(7, (6, 8), "folk", 100.0),
        _scale_tune(2, (2, 4), "folk", 100.0),
        _scale_tune(0, (4, 4), "chorale", 80.0),
    ]
    priors = compute_style_priors(pieces)
    assert priors["folk"] == {
        "time_signatures": {"6/8": 2, "2/4": 1},
        "tempi": {"100": 3},
        "keys": {"7 major": 2, "2 major": 1},
    }
    assert priors["none"]["tempi"] == {"100": 3, "80": 1}
    # draws follow the counts: the lowest third of [0, 1) is the commonest entry
    assert draw_setting("folk", [0.1, 0.5, 0.1], priors) == ((6, 8), 100.0, (7, "major"))
    assert draw_setting("folk", [0.9, 0.5, 0.9], priors) == ((2, 4), 100.0, (2, "major"))
    assert draw_setting("celtic", [0.0, 0.99, 0.0], priors)[1] == 80.0  # unknown style: pooled
    assert draw_setting("folk", [0.5, 0.5, 0.5], {}) == ((4, 4), 120.0, None)  # no priors


def test_shipped_priors_count_the_shipped_corpus():
    priors = load_style_priors()
    corpus = load_corpus()
    for style in corpus.styles:
        counted = priors[style]
        pieces = len(corpus.indices("train", style=style))
        assert sum(counted["time_signatures"].values()) == pieces
        assert sum(counted["keys"].values()) == pieces
    folk = Counter(priors["folk"]["keys"]).most_common(1)[0][0]
    assert folk == "7 major"  # G major, as the issue expects of folk tunes
