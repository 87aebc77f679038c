"""bench.form on small hand-written pieces whose answers are known."""

from __future__ import annotations

import math

import pytest

from bench.form import (
    beat_length,
    ends_on_tonic,
    form_of,
    is_two_voice,
    replayed_bars,
    summarize_form,
    tonic_triad,
)
from engine.music.notes import Note, Piece


def line(start: float, spec: list[tuple[int, float]], ts=(4, 4)) -> Piece:  # type: ignore[no-untyped-def]
    """Consecutive notes (pitch, duration) from `start`."""
    notes, t = [], start
    for pitch, dur in spec:
        notes.append(Note(t, dur, pitch))
        t += dur
    return Piece(notes=tuple(notes), time_signature=ts)


Q = 1.0
# Four bars of C major in 4/4: the seed every test continues (bar 1 = C D E F).
SEED = line(
    0.0,
    [(60, Q), (62, Q), (64, Q), (65, Q)]
    + [(67, Q), (67, Q), (69, Q), (67, Q)]
    + [(65, Q), (64, Q), (62, Q), (64, Q)]
    + [(60, 2.0), (67, 2.0)],
)
BAR1 = [(60, Q), (62, Q), (64, Q), (65, Q)]
EIGHTHS = [(64, 0.5), (65, 0.5)] * 4


def test_beat_length_is_the_metres_beat():
    assert beat_length((4, 4)) == 1.0
    assert beat_length((6, 8)) == 1.5
    assert beat_length((12, 8)) == 1.5
    assert beat_length((3, 8)) == 0.5
    assert beat_length((2, 2)) == 2.0


def test_held_note_and_notes_at_phrase_ends():
    cont = line(
        16.0,
        EIGHTHS * 3 + [(67, 4.0)] + EIGHTHS * 3 + [(60, 2.0), (64, 0.5), (62, 0.5), (60, 1.0)],
    )
    form = form_of(SEED, cont, 16.0)
    assert form.held == {4: True, 8: True}  # the whole note in bar 4, the half note in bar 8
    assert form.notes_in == {4: 1, 8: 4}
    running = line(16.0, EIGHTHS * 8)
    assert form_of(SEED, running, 16.0).held == {4: False, 8: False}
    assert form_of(SEED, running, 16.0).notes_in == {4: 8, 8: 8}


def test_a_quarter_is_not_a_held_note_in_six_eight():
    seed = line(0.0, [(67, 0.5)] * 12 * 4, ts=(6, 8))
    bars_of_eighths = [(67, 0.5)] * 6 * 3
    quarter = line(12.0, bars_of_eighths + [(67, 1.0), (67, 0.5)] * 2, ts=(6, 8))
    dotted = line(12.0, bars_of_eighths + [(67, 1.5), (67, 1.5)], ts=(6, 8))
    assert form_of(seed, quarter, 12.0).held[4] is False
    assert form_of(seed, dotted, 12.0).held[4] is True
    assert form_of(seed, dotted, 12.0).dotted_quarters == 2


def test_replayed_bars_verbatim_and_transposed():
    up_a_tone = [(p + 2, d) for p, d in BAR1]
    cont = line(16.0, BAR1 + up_a_tone + EIGHTHS + [(60, 4.0)])
    assert replayed_bars(SEED, cont, 16.0) == (1, 2, 4)
    # the same pitches on other beats are not a replay
    late = line(16.5, [(60, 1.0), (62, 1.0), (64, 1.0), (65, 0.5)])
    assert replayed_bars(SEED, late, 16.0)[:2] == (0, 0)


def test_register_lift_of_the_seed_an_octave_up():
    cont = SEED.shifted(16.0).transposed(12)
    form = form_of(SEED, cont, 16.0)
    assert form.lift_mean == pytest.approx(12.0)
    assert form.lift_top == 12.0
    assert (form.bars_verbatim, form.bars_moved, form.bars) == (0, 4, 4)


def test_ending_on_the_tonic_triad_held():
    assert tonic_triad((0, "major")) == {0, 4, 7}
    assert tonic_triad((9, "minor")) == {9, 0, 4}
    c_major = (0, "major")
    assert ends_on_tonic(line(16.0, EIGHTHS + [(72, 2.0)]), c_major, 1.0)
    assert ends_on_tonic(line(16.0, EIGHTHS + [(67, 1.0)]), c_major, 1.0)
    assert not ends_on_tonic(line(16.0, EIGHTHS + [(62, 2.0)]), c_major, 1.0)  # D: not C-E-G
    assert not ends_on_tonic(line(16.0, EIGHTHS + [(60, 0.5)]), c_major, 1.0)  # too short
    # the seed's own key (Aarden-Essen hears C major in SEED)
    assert form_of(SEED, line(16.0, EIGHTHS + [(60, 2.0)]), 16.0).ends_tonic
    assert not form_of(SEED, line(16.0, EIGHTHS + [(61, 2.0)]), 16.0).ends_tonic


def two_voices(start: float, bars: int, chords: bool = False) -> Piece:
    """A quarter-note melody over a whole-note bass (or over three-note chords)."""
    notes = []
    for b in range(bars):
        t = start + 4 * b
        lows = (48, 52, 55) if chords else (48,)
        notes += [Note(t, 4.0 if not chords else 1.0, p) for p in lows]
        if chords:
            notes += [Note(t + k, 1.0, p) for k in (1, 2, 3) for p in lows]
        notes += [Note(t + k, 1.0, 72 + k) for k in range(4)]
    return Piece(notes=tuple(sorted(notes, key=lambda n: (n.start, n.pitch))))


def test_texture_and_two_voices():
    seed = two_voices(0.0, 4)
    assert is_two_voice(seed) and not is_two_voice(SEED)
    kept = form_of(seed, two_voices(16.0, 4), 16.0)
    assert kept.two_voice_seed and kept.two_voice_kept
    assert kept.texture_ratio == pytest.approx(1.0)
    chordal = form_of(seed, two_voices(16.0, 4, chords=True), 16.0)
    assert chordal.two_voice_seed and not chordal.two_voice_kept
    assert chordal.texture_ratio == pytest.approx(2.0)  # four notes sound where two did
    assert not form_of(SEED, line(16.0, BAR1), 16.0).two_voice_seed


def test_summarize_form_shares_over_a_set():
    held = line(16.0, EIGHTHS * 3 + [(67, 4.0)] + EIGHTHS * 3 + [(60, 4.0)])
    running = line(16.0, BAR1 + EIGHTHS * 7)
    out = summarize_form([held, running], [SEED, SEED], [16.0, 16.0])
    assert out["held_bar4"] == 0.5 and out["held_bar8"] == 0.5
    assert out["notes_bar4"] == pytest.approx((1 + 8) / 2)
    assert out["bars_verbatim"] == pytest.approx(1 / 16)  # bar 1 of `running`, of 16 bars
    assert out["any_verbatim"] == 0.5
    assert out["ends_tonic"] == 0.5  # the held C; the running one ends on an eighth
    assert out["two_voice_seeds"] == 0 and math.isnan(out["two_voice_kept"])
    with pytest.raises(ValueError):
        summarize_form([held], [SEED, SEED], [16.0])


def test_bars_count_from_the_given_start():
    # another piece's continuation in its own time frame (its seed cut at beat 24)
    other = line(24.0, EIGHTHS * 3 + [(67, 4.0)])
    assert form_of(SEED, other, 24.0).held[4]
    assert not form_of(SEED, other, 16.0).held[4]


def test_phrase_rhyme_counts_bar_8_by_whether_the_seed_held_bar_4(
    tiny_corpus_model_path, tiny_corpus_path, capsys
):
    from bench import phrase_rhyme
    from engine.model.checkpoint import load_checkpoint
    from engine.model.corpus.load import load_corpus

    pieces = load_corpus(tiny_corpus_path).pieces(None)
    figures = phrase_rhyme.rhyme(load_checkpoint(tiny_corpus_model_path), pieces)
    long = [p for p in pieces if p.notes[-1].start >= 12 * p.beats_per_bar]
    assert sum(row["pieces"] for row in figures.values()) == len(long) > 0
    for row in figures.values():
        if row["pieces"]:
            assert 0.0 <= row["real"] <= 1.0 and 0.0 <= row["motif"] <= 1.0

    # the real shares, recounted from the notes: a note of a beat or more starting in the bar
    def holds(piece, bar: int) -> bool:
        beat = phrase_rhyme.beat_length(piece.time_signature)  # tested on its own above
        lo, hi = (bar - 1) * piece.beats_per_bar, bar * piece.beats_per_bar
        return any(lo - 1e-6 <= n.start < hi - 1e-6 and n.duration >= beat - 1e-6
                   for n in piece.notes)  # fmt: skip

    for name, held in (("seed held", True), ("seed not held", False)):
        group = [p for p in long if holds(p, 4) == held]
        assert figures[name]["pieces"] == len(group)
        if group:
            real = sum(holds(p, 8) for p in group) / len(group)
            assert figures[name]["real"] == pytest.approx(real)
    assert phrase_rhyme.main(["--model", str(tiny_corpus_model_path), "--corpus",
                              str(tiny_corpus_path), "--split", "train"]) == 0  # fmt: skip
    assert "seed held in bar 4" in capsys.readouterr().out
