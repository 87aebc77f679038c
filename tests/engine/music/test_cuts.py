"""Piece.notes_between: the one cut of a piece into a seed and what follows it."""

from __future__ import annotations

import pytest

from engine.music.notes import CUT_EPS, Note, Piece

TUNE = Piece(
    (
        Note(0.0, 1.0, 60),
        Note(3.0, 2.0, 62),  # held across the bar line at beat 4
        Note(4.0 - CUT_EPS / 10, 1.0, 64),  # a float a hair before beat 4: at the bar line
        Note(6.0, 1.0, 65),
        Note(8.0, 4.0, 67),
    )
)


def test_the_first_bar_and_the_next_one():
    assert [n.pitch for n in TUNE.notes_between(end=4.0)] == [60, 62]
    assert [n.pitch for n in TUNE.notes_between(4.0, 8.0)] == [64, 65]
    assert [n.pitch for n in TUNE.notes_between(8.0)] == [67]
    assert TUNE.notes_between() == TUNE.notes
    # every note falls on exactly one side of any cut
    for cut in (0.0, 3.0, 4.0, 6.5, 12.0):
        assert TUNE.notes_between(end=cut) + TUNE.notes_between(cut) == TUNE.notes


def test_clip_ends_each_note_by_the_cut():
    seed = TUNE.notes_between(end=4.0, clip=True)
    assert [(n.pitch, n.duration) for n in seed] == [(60, 1.0), (62, pytest.approx(1.0))]
    assert TUNE.notes_between(4.0, clip=True) == TUNE.notes_between(4.0)  # no end: nothing cut
