"""bench.two_sample: it finds a difference that is there and none where there is none."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.two_sample import (
    RELATIVE_NAMES,
    alone_features,
    bootstrap_ci,
    classify,
    control_rows,
    paired_rows,
    relative_features,
    two_sample_test,
    zigzag_rate,
)
from engine.music.notes import Note, Piece

pytest.importorskip("sklearn")


def groups_of(n_groups: int) -> np.ndarray:
    return np.repeat(np.arange(n_groups), 2)


def test_classify_finds_a_shift_in_one_feature():
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 100)
    x = rng.normal(size=(200, 6))
    x[:, 2] += 2.0 * y  # one feature tells the classes apart
    results = classify(x, y, groups_of(100), [f"f{i}" for i in range(6)], seed=0)
    for r in results.values():
        assert r.accuracy > 0.8 and r.auc > 0.9
        assert r.accuracy_ci[0] <= r.accuracy <= r.accuracy_ci[1]
        assert r.rows == 200 and r.groups == 100
    assert results["logistic regression"].top_features[0] == "f2"


def test_classify_gives_about_half_when_the_classes_are_the_same():
    rng = np.random.default_rng(2)
    y = np.tile([0, 1], 100)
    x = rng.normal(size=(200, 6))
    for r in classify(x, y, groups_of(100), [f"f{i}" for i in range(6)], seed=0).values():
        assert 0.35 < r.accuracy < 0.65
        assert 0.35 < r.auc < 0.65
        assert r.auc_ci[0] < 0.5 < r.auc_ci[1]


def test_bootstrap_resamples_whole_pieces():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8])  # perfectly separated: every resample says so
    assert bootstrap_ci(y, p, np.array([0, 0, 1, 1]), lambda a, b: float(np.mean(b[a == 1]))) == (
        pytest.approx(0.8),
        pytest.approx(0.9),
    )


def tune(rng: np.random.Generator, start: float, *, phrased: bool) -> Piece:
    """Eight bars of 4/4 around G4: `phrased` rests on a whole note in bars 4 and 8 and moves by
    step; otherwise it runs in eighths with leaps."""
    notes, t, pitch = [], start, 67
    for bar in range(1, 9):
        if phrased and bar in (4, 8):
            notes.append(Note(t, 4.0, 67))
            t += 4.0
            continue
        for _ in range(4 if phrased else 8):
            step = rng.choice([-2, -1, 1, 2]) if phrased else rng.choice([-7, -5, 5, 7])
            pitch = int(np.clip(pitch + step, 55, 79))
            d = 1.0 if phrased else 0.5
            notes.append(Note(t, d, pitch))
            t += d
    return Piece(notes=tuple(notes))


def test_two_sample_test_tells_running_eighths_from_phrased_tunes():
    rng = np.random.default_rng(3)
    n = 40
    seeds = [tune(rng, 0.0, phrased=True) for _ in range(n)]
    real = [tune(rng, 32.0, phrased=True) for _ in range(n)]
    made = [tune(rng, 32.0, phrased=False) for _ in range(n)]
    same = [tune(rng, 32.0, phrased=True) for _ in range(n)]
    starts = [32.0] * n
    different = two_sample_test(paired_rows(seeds, real, made, starts), seed=0)
    assert different["A"].accuracy > 0.9 and different["B"].accuracy > 0.9
    alike = two_sample_test(paired_rows(seeds, real, same, starts), seed=0)
    for fs in ("A", "B"):
        assert 0.3 < alike[fs].accuracy < 0.7, fs


def test_control_rows_split_the_cases_and_never_reuse_a_continuation():
    seeds = [Piece(notes=(Note(0.0, 1.0, 60 + i),)) for i in range(11)]
    real = [Piece(notes=(Note(16.0, 1.0, 80 + i),)) for i in range(11)]
    starts = [16.0] * 11
    plain = control_rows(seeds, real, starts, shuffled=False, seed=0)
    assert [r.label for r in plain].count(1) == 6
    assert all(r.continuation is real[r.group] for r in plain)
    shuffled = control_rows(seeds, real, starts, shuffled=True, seed=0)
    conts = [id(r.continuation) for r in shuffled]
    assert len(set(conts)) == 11  # each continuation once
    for r in shuffled:
        own = r.continuation is real[r.group]
        assert own == (r.label == 0)  # label 1: another piece's continuation
        assert r.seed is seeds[r.group]


def test_features_of_a_known_line():
    seed = Piece(notes=tuple(Note(float(i), 1.0, 60 + 2 * (i % 4)) for i in range(16)))
    cont = Piece(notes=tuple(Note(16.0 + i, 1.0, 72 + 2 * (i % 4)) for i in range(16)))
    a = alone_features(cont, 16.0)
    assert a["notes per bar"] == 4.0 and a["range"] == 6.0 and a["distinct pitches"] == 4.0
    assert a["interval tone up"] == pytest.approx(12 / 15)
    assert a["interval fourth-fifth down"] == pytest.approx(3 / 15)
    assert a["duration quarter"] == 1.0 and a["held bar 4"] == 1.0
    b = relative_features(seed, cont, 16.0)
    assert tuple(b) == RELATIVE_NAMES
    assert b["register lift"] == 12.0 and b["top-note lift"] == 12.0
    assert b["bars replayed"] == 0.0 and b["bars replayed or transposed"] == 1.0
    assert b["duration distance"] == 0.0 and b["notes per bar ratio"] == 1.0
    assert all(math.isnan(v) for v in relative_features(seed, Piece(notes=()), 16.0).values())


def test_zigzag_rate():
    def notes(ps: list[int]) -> list[Note]:
        return [Note(float(i), 1.0, p) for i, p in enumerate(ps)]

    assert zigzag_rate(notes([60, 62, 60, 62, 60])) == 1.0
    assert zigzag_rate(notes([60, 62, 64, 65, 67])) == 0.0
    assert zigzag_rate(notes([60, 62, 64, 62])) == 0.5


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from bench.two_sample import _auc

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60)
    p = rng.integers(0, 5, 60) / 4  # many ties
    assert _auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert math.isnan(_auc(np.zeros(3), np.ones(3)))


def test_too_few_pieces_is_refused_with_a_message():
    seeds = [Piece(notes=(Note(0.0, 1.0, 60),))] * 4
    real = [Piece(notes=(Note(16.0, 1.0, 62),))] * 4
    with pytest.raises(ValueError, match="10\\+ pieces"):
        two_sample_test(paired_rows(seeds, real, real, [16.0] * 4))


def test_folds_keep_the_labels_balanced_where_a_piece_has_one_row():
    # Features that say nothing: a model can only learn its training folds' base rate. Folds
    # that are unbalanced would turn that into predictions against the test fold's labels.
    from bench.two_sample import _auc, _classifiers, out_of_fold

    y = np.random.default_rng(5).permutation(np.repeat([0, 1], 50))
    p = out_of_fold(_classifiers(0)["logistic regression"], np.zeros((100, 1)), y, np.arange(100))
    assert _auc(y, p) == pytest.approx(0.5)  # GroupKFold alone gave 0.40


def test_controls_real_against_real_and_against_a_shuffled_real():
    from bench.two_sample import control_test

    rng = np.random.default_rng(6)
    n = 40
    keys = rng.integers(-6, 6, n)  # each tune in its own key: a shuffled continuation is not
    seeds = [tune(rng, 0.0, phrased=True).transposed(int(k)) for k in keys]
    real = [tune(rng, 32.0, phrased=True).transposed(int(k)) for k in keys]
    starts = [32.0] * n
    same = control_test(seeds, real, starts, shuffled=False, seed=0, repeats=3)
    for fs in ("A", "B"):
        assert 0.3 < same[fs].accuracy < 0.7, fs
        assert same[fs].groups == n and same[fs].rows == n
    shuffled = control_test(seeds, real, starts, shuffled=True, seed=0, repeats=3)
    assert 0.3 < shuffled["A"].accuracy < 0.7
    assert shuffled["B"].accuracy > 0.75 and shuffled["B"].auc > 0.8
