"""How continuations end ("close" holds a tonic-chord note to the bar line, "open" does not)
and keep their seed's texture."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from engine.errors import BadParams
from engine.model.generate.continuation import continue_batch, continue_seed
from engine.model.generate.request import GenerationRequest, Knobs
from engine.music.endings import closing_hold, reopened
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions

TRIAD_G_MAJOR = {7, 11, 2}
TRIAD_A_MINOR = {9, 0, 4}


def _jig_in_g() -> Piece:
    """Two bars of 6/8 in G major, ending mid-phrase."""
    pitches = [67, 71, 74, 72, 71, 69, 67, 66, 67, 71, 69, 67]
    notes = tuple(Note(0.5 * i, 0.5, p, 80) for i, p in enumerate(pitches))
    return Piece(notes, time_signature=(6, 8), tempo_bpm=120.0)


def _reel_in_a_minor() -> Piece:
    pitches = [69, 72, 76, 72, 69, 71, 72, 74, 76, 74, 72, 71, 69, 67, 69, 72]
    notes = tuple(Note(0.5 * i, 0.5, p, 80) for i, p in enumerate(pitches))
    return Piece(notes, time_signature=(4, 4), tempo_bpm=120.0)


def _last_onset(piece: Piece) -> list[Note]:
    last = max(n.start for n in piece.notes)
    return [n for n in piece.notes if n.start == last]


def test_closing_hold_follows_the_metre():
    tpb = 12
    assert closing_hold((6, 8), tpb) == 18  # a dotted quarter
    assert closing_hold((9, 8), tpb) == 18
    assert closing_hold((3, 4), tpb) == 36  # the whole bar
    assert closing_hold((2, 4), tpb) == 24
    assert closing_hold((4, 4), tpb) == 24  # the second half
    assert closing_hold((5, 4), tpb) == 36  # the last three beats


@pytest.mark.parametrize(
    ("seed", "triad", "hold_beats"),
    [(_jig_in_g(), TRIAD_G_MAJOR, 1.5), (_reel_in_a_minor(), TRIAD_A_MINOR, 2.0)],
)
def test_a_closed_ending_holds_a_tonic_chord_note_to_the_bar_line(tiny_lm, seed, triad, hold_beats):
    # an untrained network: the rules alone must close every draw
    for rng in range(6):
        made = continue_seed(tiny_lm, seed, 2, seed_rng=rng, knobs=Knobs(copy=False))
        end = max(n.end for n in made.notes)
        bar = seed.beats_per_bar
        assert end == pytest.approx(seed.notes[-1].end + 2 * bar)  # whole bars, as ever
        last = _last_onset(made)
        assert last[0].start == pytest.approx(end - hold_beats)
        assert all(n.end == pytest.approx(end) for n in last)
        assert {n.pitch % 12 for n in last} <= triad


def test_an_open_ending_is_left_to_the_notes(tiny_lm):
    seed = _jig_in_g()
    closed = [
        _last_onset(continue_seed(tiny_lm, seed, 2, seed_rng=r, knobs=Knobs(copy=False)))
        for r in range(8)
    ]
    opened = [
        _last_onset(
            continue_seed(tiny_lm, seed, 2, seed_rng=r, ending="open", knobs=Knobs(copy=False))
        )
        for r in range(8)
    ]
    assert closed != opened
    outside = [notes for notes in opened if {n.pitch % 12 for n in notes} - TRIAD_G_MAJOR]
    assert outside  # an untrained network does not close by itself


def test_batched_rows_close_or_stay_open_as_each_asked(tiny_lm):
    seed = _jig_in_g()
    reqs = [
        GenerationRequest(seed, ComposeOptions(bars=2, rng_seed=5, ending=e), Knobs(copy=False))
        for e in ("close", "open", "close")
    ]
    batch = continue_batch(tiny_lm, reqs)
    alone = [continue_batch(tiny_lm, [r])[0] for r in reqs]
    assert [p.notes for p in batch] == [p.notes for p in alone]
    assert {n.pitch % 12 for n in _last_onset(batch[0])} <= TRIAD_G_MAJOR


def test_no_seed_closes_on_the_key_its_notes_chose(tiny_lm):
    from engine.music.keys import key_for_generation

    for rng in range(4):
        made = continue_seed(tiny_lm, None, 2, style="folk", seed_rng=rng, knobs=Knobs(copy=False))
        key = key_for_generation(made.notes)
        assert key is not None
        tonic, mode = key
        triad = {tonic, (tonic + (4 if mode == "major" else 3)) % 12, (tonic + 7) % 12}
        # the closing note was chosen before it counted in the key: most draws still agree
        assert {n.pitch % 12 for n in _last_onset(made)} & triad


def test_a_closed_result_reopens_before_its_cadence():
    jig = _jig_in_g()  # two bars of 6/8 eighths: the closing beat is the last dotted quarter
    cut = reopened(jig)
    assert [n.pitch for n in cut.notes] == [n.pitch for n in jig.notes[:-3]]
    held = Piece((Note(0.0, 1.0, 60, 80), Note(1.0, 3.0, 64, 80)), time_signature=(4, 4))
    assert reopened(held).notes == (Note(0.0, 1.0, 60, 80), Note(1.0, 1.0, 64, 80))


def test_an_unknown_ending_is_refused(tiny_lm):
    with pytest.raises(BadParams, match="ending"):
        continue_seed(tiny_lm, _jig_in_g(), 2, ending="fade")


def _melody_over_bass() -> Piece:
    melody = [Note(0.5 * i, 0.5, 72 + (i * 5) % 9, 80) for i in range(16)]
    bass = [Note(2.0 * i, 2.0, 48 + (i % 2) * 7, 70) for i in range(4)]
    return Piece(tuple(sorted(melody + bass, key=lambda n: (n.start, n.pitch))))


def _chorale() -> Piece:
    chords = [(48, 64, 67, 72), (53, 65, 69, 72), (55, 62, 67, 71), (48, 64, 67, 72)]
    notes = [Note(1.0 * i, 1.0, p, 80) for i, chord in enumerate(chords * 2) for p in chord]
    return Piece(tuple(notes))


@pytest.mark.parametrize(("seed", "voices"), [(_melody_over_bass(), 2), (_chorale(), 4)])
def test_no_onset_holds_more_notes_than_the_seeds_fullest(tiny_lm, seed, voices):
    bias = tiny_lm.model.heads.out[0][-1].bias  # the SHIFT head: make it want chords
    saved = bias.detach().clone()
    with torch.no_grad():
        bias[0] += 8.0
    try:
        made = [
            continue_seed(tiny_lm, seed, 2, seed_rng=r, knobs=Knobs(copy=False)) for r in range(3)
        ]
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    sizes = [Counter(n.start for n in piece.notes).most_common(1)[0][1] for piece in made]
    assert max(sizes) == voices  # as full as the seed's onsets, never fuller
