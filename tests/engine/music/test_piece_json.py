from __future__ import annotations

import json

import pytest

from engine.music.midi import load_seed
from engine.music.notes import Note, Piece
from engine.music.piece_json import piece_from_dict, piece_to_dict
from tests.conftest import example_seed_bytes


def test_a_piece_comes_back_exactly_metres_keys_and_meta_included():
    third = 1.0 / 3.0  # a triplet: a float that no short decimal writes
    piece = Piece(
        notes=(Note(0.0, third, 60, 1), Note(third, 2 * third, 64, 127), Note(1.0, 0.5, 67)),
        tempo_bpm=97.5,
        time_signature=(6, 8),
        program=73,
        name="jig ☘",
        style="celtic",
        meta={"from_bar": "3", "key": "2 major"},
        metre_changes=((0.0, 4, 4), (8.0, 6, 8)),
        key_changes=((0.0, 7, "major"), (8.0, 2, "minor")),
    )
    back = piece_from_dict(json.loads(json.dumps(piece_to_dict(piece))))
    assert back == piece and back.meta == piece.meta  # (meta is left out of ==)
    assert back.notes[0].duration == third


def test_a_parsed_seed_round_trips():
    seed = load_seed(example_seed_bytes(), name="ode.mid", from_bar=3)
    back = piece_from_dict(json.loads(json.dumps(piece_to_dict(seed))))
    assert back == seed and back.meta == seed.meta


def test_a_layout_it_does_not_know_is_refused():
    doc = piece_to_dict(Piece(()))
    doc["format"] = 99
    with pytest.raises(ValueError, match="format 99"):
        piece_from_dict(doc)
