from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from engine.model.fidelity import (
    grid_overlap,
    has_bass,
    has_long_run,
    independent_key,
    interval_patterns,
    notes_per_onset,
    outside_range_share,
    pattern_reuse,
    register_drift,
    same_or_relative,
    seed_information_gain,
    summarize_fidelity,
)
from engine.music.notes import Note, Piece

C_MAJOR_TUNE = [60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 72, 67, 64, 60, 60]


def _line(pitches: list[int], step: float = 0.5, start: float = 0.0) -> Piece:
    return Piece(tuple(Note(start + i * step, step, p, 80) for i, p in enumerate(pitches)))


def test_patterns_are_top_line_intervals_and_return_transposed():
    seed = _line([60, 62, 64, 60, 65])  # figures (2, 2, -4) and (2, -4, 5)
    assert interval_patterns(seed) == {(2, 2, -4), (2, -4, 5)}
    # a chord under the line does not change the top line
    chords = Piece(
        seed.notes + tuple(Note(n.start, n.duration, n.pitch - 12, 80) for n in seed.notes)
    )
    assert interval_patterns(chords) == interval_patterns(seed)
    assert pattern_reuse(seed, _line([67, 69, 71, 67, 50])) == 0.5  # a fifth higher, one figure
    assert pattern_reuse(seed, _line([60, 61, 60, 61])) == 0.0
    assert math.isnan(pattern_reuse(_line([60, 62]), seed))  # a seed too short for a figure


def test_long_runs_count_from_four():
    assert has_long_run(_line([60, 60, 60, 60, 62]))
    assert not has_long_run(_line([60, 60, 60, 62, 60, 60, 60]))


def test_independent_key_is_music21s_default_analysis():
    music21 = pytest.importorskip("music21")
    tune = _line(C_MAJOR_TUNE)
    s = music21.stream.Stream()
    for n in tune.notes:
        m = music21.note.Note(n.pitch)
        m.quarterLength = n.duration
        s.insert(n.start, m)
    expected = s.analyze("key")  # music21's default: Aarden-Essen
    assert independent_key(tune) == (expected.tonic.pitchClass, expected.mode) == (0, "major")
    g_major = _line([p + 7 for p in C_MAJOR_TUNE])
    assert independent_key(g_major) == (7, "major")
    assert independent_key(Piece(())) is None
    assert same_or_relative((0, "major"), (9, "minor")) and same_or_relative(
        (9, "minor"), (0, "major")
    )
    assert not same_or_relative((0, "major"), (7, "major")) and not same_or_relative(None, None)


def test_range_register_texture_and_grid():
    seed = _line([60, 64, 67, 72])
    assert outside_range_share(seed, _line([59, 60, 72, 73])) == (2, 4)
    # the last 4 beats of the continuation sit an octave above the seed's mean pitch (65.75)
    cont = _line([60] * 8 + [78] * 8)
    assert register_drift(seed, cont, beats=4) == pytest.approx(78 - 65.75)
    chords = Piece(tuple(Note(t, 1.0, p, 80) for t in (0.0, 1.0) for p in (48, 52, 55)))
    assert notes_per_onset(chords) == 3.0 and notes_per_onset(seed) == 1.0
    assert has_bass(_line([47, 60])) and not has_bass(seed)
    straight = _line([60] * 8, step=0.5)
    triplets = _line([60] * 9, step=1 / 3)
    assert grid_overlap(straight, straight) == 1.0
    assert grid_overlap(straight, triplets) == pytest.approx(1 / 3)  # only the downbeats agree


def test_summary_of_a_set():
    seed = _line(C_MAJOR_TUNE)
    same = _line(C_MAJOR_TUNE, start=8.0)
    stuck = _line([60] * 16, start=8.0)
    chordal_seed = Piece(tuple(Note(t, 1.0, p, 80) for t in range(4) for p in (40, 60, 64)))
    thin = _line([60, 62, 64, 65], step=1.0, start=4.0)
    figures = summarize_fidelity([same, stuck, thin], [seed, seed, chordal_seed])
    assert figures["pieces"] == 3
    assert figures["long_run_share"] == pytest.approx(1 / 3)
    assert figures["pattern_reuse"] == pytest.approx(1 / 3)  # the chordal seed's top: (0, 0, 0)
    assert figures["polyphonic_seeds"] == 1 and figures["texture_kept"] == 0.0
    assert figures["bass_seeds"] == 1 and figures["bass_kept"] == 0.0
    with pytest.raises(ValueError):
        summarize_fidelity([same], [])


def test_seed_information_gain_of_a_model_trained_on_tunes_it_must_tell_apart(tmp_path):
    """A tiny model trained on two tunes in different keys: the seed must tell it which tune
    follows (where in the tune, which tune), so both gains are positive."""
    from engine.model.checkpoint import load_checkpoint
    from engine.model.train.config import TrainConfig
    from engine.model.train.train import train

    def tune(offset: int) -> Piece:
        return replace(_line([p + offset for p in C_MAJOR_TUNE] * 10), style="folk")

    pieces = [tune(0), tune(5), tune(0), tune(5)]
    cfg = TrainConfig(
        out=tmp_path / "m.pt",
        corpus_path=None,
        pieces=pieces,
        val_pieces=pieces[:2],
        test_pieces=[],
        d_embed=16,
        hidden=32,
        layers=1,
        dropout=0.0,
        batch_size=16,
        seed_max=16,
        target_len=16,
        max_steps=150,
        warmup_steps=5,
        threads=1,
        progress=False,
        half=False,
    )
    torch.manual_seed(0)
    train(cfg)
    lm = load_checkpoint(tmp_path / "m.pt")
    gain = seed_information_gain(lm, pieces, seed_len=16, target_len=16, max_windows=None)
    assert gain["windows"] > 0
    assert gain["gain_total"] == pytest.approx(gain["nll_without_seed"] - gain["nll_with_seed"])
    assert gain["gain_content"] == pytest.approx(gain["nll_key_only"] - gain["nll_with_seed"])
    assert gain["gain_total"] > 0.2 and gain["gain_content"] > 0.1
    assert seed_information_gain(lm, [_line([60, 62])], seed_len=16) == {}
