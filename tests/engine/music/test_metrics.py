from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.music.keys import key_for_metrics
from engine.music.metrics import (
    TrainingIndex,
    distinct_durations,
    interval_tokens,
    ioi_histogram,
    is_collapsed,
    key_kept,
    longest_copied_run,
    note_length_histogram,
    overlap_area,
    pitch_class_entropy,
    scale_consistency,
    summarize,
    top_line,
)
from engine.music.notes import Note, Piece

C_MAJOR = [60, 62, 64, 65, 67, 69, 71]


def melody(pitches, duration=1.0, start=0.0):
    return [Note(start + i * duration, duration, p) for i, p in enumerate(pitches)]


def rhythm(pitches, durations):
    notes, t = [], 0.0
    for p, d in zip(pitches, durations, strict=True):
        notes.append(Note(t, d, p))
        t += d
    return notes


# --- collapse ---------------------------------------------------------------------------------


def test_one_note_repeated_nine_times_is_collapsed():
    assert is_collapsed(melody(C_MAJOR + [72] * 9 + C_MAJOR))


def test_eight_repeats_among_varied_notes_is_not_collapsed():
    assert not is_collapsed(melody(C_MAJOR + [72] * 8 + C_MAJOR))


def test_two_pitches_alternating_is_collapsed_three_is_not():
    assert is_collapsed(melody([60, 67] * 20))
    assert not is_collapsed(melody([60, 64, 67] * 10))


def test_only_the_first_32_notes_count_for_distinct_pitches():
    assert is_collapsed(melody([60, 62] * 16 + [64, 65, 67]))
    assert not is_collapsed(melody([60, 62] * 15 + [64, 65, 67]))


def test_empty_and_tiny_continuations_are_collapsed():
    assert is_collapsed([])
    assert is_collapsed(melody([60, 64]))


def test_chords_use_their_top_note():
    # the bass moves but the top note is the same 9 times: collapsed
    chords = [n for i in range(9) for n in (Note(i, 1, 48 + i), Note(i, 1, 72))]
    assert is_collapsed(melody(C_MAJOR, start=20) + chords)
    assert [n.pitch for n in top_line(chords)] == [72] * 9
    # a pedal bass under a moving melody: not collapsed
    moving = [n for i, p in enumerate(C_MAJOR * 2) for n in (Note(i, 1, 36), Note(i, 1, p))]
    assert not is_collapsed(moving)


def test_accepts_a_piece():
    assert is_collapsed(Piece(notes=tuple(melody([60] * 12))))


# --- key ---------------------------------------------------------------------------------------


def test_c_major_scale_is_c_major():
    assert key_for_metrics(melody(C_MAJOR)) == (0, "major")


def test_a_harmonic_minor_tune_is_a_minor():
    assert key_for_metrics(melody([69, 71, 72, 74, 76, 77, 80, 69, 76, 69])) == (9, "minor")


def test_g_major_tune_is_g_major():
    assert key_for_metrics(melody([67, 69, 71, 72, 74, 76, 78, 67, 74, 67])) == (7, "major")


def test_key_is_weighted_by_duration():
    # E and G# long, the rest short: E major wins although C major has more notes
    notes = melody(C_MAJOR, duration=0.25) + [Note(2, 8, 64), Note(10, 8, 68), Note(18, 8, 71)]
    assert key_for_metrics(notes) == (4, "major")


def test_key_of_nothing_raises():
    with pytest.raises(ValueError):
        key_for_metrics([])


def test_key_kept_same_key_and_relative_minor():
    seed = melody(C_MAJOR + [60, 67, 60])
    assert key_kept(seed, melody([64, 62, 60, 67, 65, 64, 62, 60]))
    a_minor = melody([69, 71, 72, 74, 76, 77, 80, 69, 76, 69])
    assert key_kept(seed, a_minor)
    assert key_kept(a_minor, seed)


def test_key_not_kept_after_modulating_or_going_parallel():
    seed = melody(C_MAJOR + [60, 67, 60])
    assert not key_kept(seed, melody([67, 69, 71, 72, 74, 76, 78, 67, 74, 67]))  # G major
    c_minor = melody([60, 62, 63, 65, 67, 68, 71, 60, 67, 60])
    assert key_for_metrics(c_minor) == (0, "minor")
    assert not key_kept(seed, c_minor)
    assert not key_kept(seed, [])
    assert not key_kept([], seed)


# --- pitch statistics ---------------------------------------------------------------------------


def test_pitch_class_entropy_known_values():
    assert pitch_class_entropy(melody([60, 72, 48])) == 0.0  # octaves are one pitch class
    assert pitch_class_entropy(melody([60, 67] * 3)) == pytest.approx(1.0)
    assert pitch_class_entropy(melody(range(60, 72))) == pytest.approx(math.log2(12))
    assert math.isnan(pitch_class_entropy([]))


def test_scale_consistency_known_values():
    assert scale_consistency(melody(C_MAJOR)) == 1.0
    assert scale_consistency(melody(range(60, 72))) == pytest.approx(7 / 12)
    assert scale_consistency(melody(C_MAJOR + [61])) == pytest.approx(7 / 8)
    assert math.isnan(scale_consistency([]))


# --- rhythm statistics --------------------------------------------------------------------------

BINS = (0.25, 0.5, 1.0, 2.0, 4.0)


def test_note_length_histogram_uses_nearest_bin_on_a_log_scale():
    notes = rhythm([60] * 6, [0.5, 0.5, 0.45, 1.0, 10.0, 0.3])
    # 0.3 is nearer 0.25 than 0.5 on a log scale (ratio 1.2 vs 1.67)
    assert note_length_histogram(notes, BINS).tolist() == [1, 3, 1, 0, 1]


def test_ioi_histogram_counts_a_chord_as_one_onset():
    notes = [Note(0, 1, 60), Note(0, 1, 64), Note(1, 0.5, 62), Note(1.5, 2, 60), Note(3.5, 1, 60)]
    assert ioi_histogram(notes, BINS).tolist() == [0, 1, 1, 1, 0]
    assert ioi_histogram(melody([60]), BINS).sum() == 0


def test_overlap_area_known_values():
    assert overlap_area([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert overlap_area([1, 0], [0, 5]) == 0.0
    assert overlap_area([1, 1, 0], [0, 1, 1]) == pytest.approx(0.5)
    assert overlap_area([0, 0], [1, 1]) == 0.0
    with pytest.raises(ValueError):
        overlap_area([1, 2], [1, 2, 3])


@given(
    st.lists(st.integers(0, 50), min_size=5, max_size=5),
    st.lists(st.integers(0, 50), min_size=5, max_size=5),
)
def test_overlap_area_is_symmetric_and_bounded(p, q):
    a = overlap_area(p, q)
    assert a == pytest.approx(overlap_area(q, p))
    assert 0.0 <= a <= 1.0 + 1e-9


def test_distinct_durations_on_the_tick_grid():
    assert distinct_durations(melody([60] * 10, duration=0.5)) == 1
    assert distinct_durations(rhythm([60] * 5, [0.5, 0.501, 1 / 3, 1.0, 1.5])) == 4
    assert distinct_durations([]) == 0


# --- copying ------------------------------------------------------------------------------------


def test_interval_tokens_ignore_transposition_but_not_rhythm():
    a = rhythm([60, 62, 64, 60], [1, 0.5, 0.5, 2])
    b = rhythm([65, 67, 69, 65], [1, 0.5, 0.5, 2])
    c = rhythm([65, 67, 69, 65], [1, 0.5, 1.0, 2])
    assert interval_tokens(a).tolist() == interval_tokens(b).tolist()
    assert interval_tokens(a).tolist() != interval_tokens(c).tolist()
    assert interval_tokens(a).size == 3


def test_copied_run_finds_a_transposed_phrase():
    phrase = [62, 64, 65, 67, 69, 67, 65, 64, 62]  # 9 notes: 8 intervals
    training = [melody([50, 51] + phrase + [40, 41]), melody(C_MAJOR)]
    index = TrainingIndex.from_pieces(training)
    cont = melody([80, 70, 75] + [p + 5 for p in phrase] + [90, 30])
    assert longest_copied_run(cont, index) == 8
    assert longest_copied_run(melody([p + 5 for p in phrase]), index) == 8
    # a changed length breaks the run in two
    broken = [Note(n.start, 2.0 if i == 4 else 1.0, n.pitch) for i, n in enumerate(melody(phrase))]
    assert longest_copied_run(broken, index) == 4  # 4 intervals before the long note
    assert longest_copied_run([], index) == 0
    assert longest_copied_run(melody([60, 100]), index) == 0


def test_copied_run_does_not_cross_training_pieces():
    a, b = [60, 62, 64, 65], [67, 69, 71, 72]
    index = TrainingIndex.from_pieces([melody(a), melody(b)])
    # 64 -> 65 -> 67 -> 69 spans the boundary: +1 is in A, +2 +2 in B, but +1 +2 nowhere
    assert longest_copied_run(melody(a + b), index) == 3


def brute_force_longest(query, training):
    best = 0
    for i in range(len(query)):
        for j in range(i + 1, len(query) + 1):
            sub = query[i:j]
            if any(
                sub == t[k : k + len(sub)] for t in training for k in range(len(t) - len(sub) + 1)
            ):
                best = max(best, len(sub))
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 2), max_size=12), max_size=4),
    st.lists(st.integers(0, 2), max_size=14),
)
def test_longest_match_agrees_with_brute_force(training, query):
    index = TrainingIndex(
        tokens=np.array([t for seq in training for t in seq], dtype=np.int64),
        piece_ids=np.array([i for i, seq in enumerate(training) for _ in seq], dtype=np.int32),
    )
    got = index.longest_match(np.array(query, dtype=np.int64))
    assert got == brute_force_longest(query, training)


def test_index_of_thousands_of_pieces_finds_only_chance_runs():
    # (its speed is a bench claim, not a unit test's: timed asserts fail on a loaded machine)
    rng = np.random.default_rng(0)
    durations = [0.5, 1.0, 1.5, 0.25]

    def random_piece(n):
        return rhythm(list(rng.integers(55, 80, n)), [durations[i] for i in rng.integers(0, 4, n)])

    index = TrainingIndex.from_pieces(random_piece(60) for _ in range(3000))
    runs = [longest_copied_run(random_piece(64), index) for _ in range(50)]
    assert all(0 < r < 10 for r in runs)


# --- summary ------------------------------------------------------------------------------------


def test_summarize_known_figures():
    seed = melody(C_MAJOR)
    good = rhythm(C_MAJOR * 2, [2, 0.5, 0.5, 1, 1, 1, 1] * 2)
    stuck = melody([60] * 14, duration=0.5)
    reference = [Piece(notes=tuple(good))]
    index = TrainingIndex.from_pieces(reference)
    figures = summarize([good, stuck], [seed, seed], reference, index)
    assert figures["n"] == 2
    assert figures["collapse_rate"] == 0.5
    assert figures["key_kept_rate"] == 1.0  # the C major tune and the one-note C: both C major
    assert figures["pitch_class_entropy"] == pytest.approx((math.log2(7) + 0.0) / 2)
    assert figures["scale_consistency"] == 1.0
    assert figures["copied_run_max"] == 13
    assert figures["copied_run_median"] == pytest.approx((13 + 0) / 2)
    assert figures["distinct_durations"] == pytest.approx((3 + 1) / 2)
    # pooled lengths of 28 notes: 0.5 x18, 1 x8, 2 x2; the reference's of 14: 0.5 x4, 1 x8, 2 x2
    # min(18/28, 8/28) + min(8/28, 16/28) + min(2/28, 4/28)
    assert figures["note_length_overlap"] == pytest.approx(18 / 28)
    assert 0 < figures["ioi_overlap"] < 1


def test_summarize_without_an_index_or_seeds():
    figures = summarize([melody(C_MAJOR)], [None], [melody(C_MAJOR)], None)
    assert math.isnan(figures["copied_run_max"])
    assert math.isnan(figures["key_kept_rate"])
    assert figures["note_length_overlap"] == 1.0
    with pytest.raises(ValueError):
        summarize([melody(C_MAJOR)], [], [], None)
