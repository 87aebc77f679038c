"""The piano-roll PNG: opens, has the asked size, stays small, shows both parts in their colours."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.audio.pianoroll import CONTINUATION_COLOUR, SEED_COLOUR, note_name, piano_roll_png
from engine.music.notes import Note, Piece

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


def test_notes_are_drawn_where_they_sound():
    """A note's rectangle is at its beat and pitch, in its part's colour (louder: stronger)."""
    from engine.audio.pianoroll import BOTTOM, LEFT, RIGHT, TOP

    seed = piece([Note(0, 4, 60, 127), Note(4, 4, 72, 127)])  # one 4/4 bar each
    cont = piece([Note(8, 4, 66, 127), Note(12, 4, 54, 1)])
    rgb = np.asarray(open_png(piano_roll_png(seed, cont, title="where")).convert("RGB"), int)
    low, high = 52, 74  # lowest and highest pitch less/more 2
    sx = (1000 - RIGHT - LEFT) / 16
    sy = (400 - BOTTOM - TOP) / (high - low + 1)

    def at(beat: float, pitch: int) -> np.ndarray:
        return rgb[round(400 - BOTTOM - (pitch - low + 0.5) * sy), round(LEFT + beat * sx)]

    seed_rgb = np.array([int(SEED_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    cont_rgb = np.array([int(CONTINUATION_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    assert np.abs(at(2, 60) - seed_rgb).max() <= 2 and np.abs(at(6, 72) - seed_rgb).max() <= 2
    assert np.abs(at(10, 66) - cont_rgb).max() <= 2
    quiet = at(14, 54)  # velocity 1: the colour at 45 % over white
    assert np.abs(quiet - (255 + (cont_rgb - 255) * 0.454)).max() <= 3
    assert (at(2.5, 65) > 230).all() and (at(10.5, 60) > 230).all()  # no note: background
    # the dashed seed-end line at beat 8, and text in the margins (note names, bar numbers)
    column = rgb[TOP:-BOTTOM, round(LEFT + 8 * sx)]
    assert 0.3 < (column.max(axis=1) < 100).mean() < 0.9
    assert (rgb[TOP:-BOTTOM, : LEFT - 4] < 100).all(axis=2).sum() > 50
    assert (rgb[-BOTTOM:, LEFT:-RIGHT] < 100).all(axis=2).sum() > 50


def test_the_piano_roll_needs_no_matplotlib_figure():
    """Drawn with Pillow: a worker never builds matplotlib's figure machinery for it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from engine.music.notes import Note, Piece\n"
        "from engine.audio.pianoroll import piano_roll_png\n"
        "png = piano_roll_png(None, Piece((Note(0, 1, 60),)), title='t')\n"
        "assert png[:4] == b'\\x89PNG'\n"
        "print(sorted(m for m in sys.modules if m.startswith('matplotlib')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bar_lines_follow_the_seeds_metre_changes():
    """Two bars of 4/4, then 3/4: bar lines at beats 0, 4, 8, 11, 14 and 17, the
    continuation's bar on in 3/4; beat 12 gets a beat line, not a bar line."""
    from engine.audio.pianoroll import BAR_LINE, BEAT_LINE, LEFT, RIGHT, TOP, _Frame

    metres = ((0.0, 4, 4), (8.0, 3, 4))
    seed = piece([Note(0, 14, 67)], metre_changes=metres, time_signature=(3, 4))
    cont = piece([Note(14, 3, 69)], time_signature=(3, 4))
    frame = _Frame.around([*seed.notes, *cont.notes], seed, 1000, 400)
    assert [b.start for b in frame.bars] == [0.0, 4.0, 8.0, 11.0, 14.0] and frame.end == 17.0
    rgb = np.asarray(open_png(piano_roll_png(seed, cont, title="metres")).convert("RGB"), int)
    sx = (1000 - RIGHT - LEFT) / 17
    row = rgb[TOP + 3]  # above the notes, on a white key's row

    def colour(beat: float) -> np.ndarray:
        return row[round(LEFT + beat * sx)]

    bar, beat = np.array(BAR_LINE), np.array(BEAT_LINE)
    assert np.abs(colour(11) - bar).max() <= 8 and np.abs(colour(12) - beat).max() <= 8
