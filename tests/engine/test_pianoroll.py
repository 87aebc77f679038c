"""The piano-roll PNG: opens, has the asked size, stays small, shows both parts in their colours."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.music import Note, Piece
from engine.pianoroll import CONTINUATION_COLOUR, SEED_COLOUR, note_name, piano_roll_png

MAX_BYTES = 300 * 1024


def melody(start: float, beats: float, low: int, seed: int) -> list[Note]:
    rng = np.random.default_rng(seed)
    notes, t = [], start
    while t < start + beats:
        d = float(rng.choice([0.5, 1.0, 2.0]))
        notes.append(Note(t, d, int(low + rng.integers(0, 14)), int(rng.integers(40, 120))))
        t += d
    return notes


def piece(notes: list[Note], **kw) -> Piece:
    return Piece(tuple(sorted(notes, key=lambda n: (n.start, n.pitch))), **kw)


def open_png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels_near(image: Image.Image, colour: str, tol: int = 40) -> int:
    rgb = np.asarray(image.convert("RGB"), dtype=int)
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(axis=2) < tol).sum())


def test_seed_and_continuation_in_their_colours():
    seed = piece(melody(0, 8, 60, 1), time_signature=(3, 4), tempo_bpm=100)
    cont = piece(melody(8, 24, 55, 2), time_signature=(3, 4), tempo_bpm=100)
    data = piano_roll_png(seed, cont, title="8 bars · temperature 0.9 · seed 42")
    assert len(data) < MAX_BYTES
    image = open_png(data)
    assert image.size == (1000, 400)
    assert pixels_near(image, SEED_COLOUR) > 500
    assert pixels_near(image, CONTINUATION_COLOUR) > 500


@pytest.mark.parametrize(("width", "height"), [(800, 300), (1200, 500)])
def test_size_follows_the_request(width, height):
    cont = piece(melody(0, 16, 60, 3))
    image = open_png(piano_roll_png(None, cont, title="no seed", width_px=width, height_px=height))
    assert image.size == (width, height)


def test_a_dense_long_piece_stays_small():
    notes = [n for v in range(4) for n in melody(0, 256, 36 + 12 * v, v)]  # 64 bars, 4 voices
    data = piano_roll_png(piece(notes[:40]), piece(notes[40:]), title="64 bars")
    assert len(data) < MAX_BYTES
    assert open_png(data).size == (1000, 400)


def test_empty_continuation_still_draws():
    seed = piece(melody(0, 4, 60, 4))
    image = open_png(piano_roll_png(seed, Piece(()), title="nothing came"))
    assert image.size == (1000, 400)
    assert pixels_near(image, SEED_COLOUR) > 100


def test_note_names_are_scientific_pitch():
    assert [note_name(p) for p in (21, 60, 61, 69, 108)] == ["A0", "C4", "C#4", "A4", "C8"]
