"""The score picture: engraved by verovio, rasterised by resvg, on white, small enough for chat."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest

from engine.audio.score import MAX_PNG_BYTES, WIDTH_PX, engrave_result, score_png
from engine.music.musicxml import SEED_COLOUR, score_xml
from engine.music.notes import Note, Piece

pytest.importorskip("verovio")
pytest.importorskip("resvg_py")
Image = pytest.importorskip("PIL.Image")


def two_hands(bars: int, seed_bars: int = 4) -> tuple[Piece, Piece]:
    """A busy piano texture: a bass line under eighth-note melody with chords."""
    rng = random.Random(bars)
    notes = []
    for bar in range(bars):
        for beat in range(4):
            t = bar * 4 + beat
            notes.append(Note(t, 1.0, 43 + rng.choice([0, 4, 7, 12])))
            for half in (0.0, 0.5):
                notes.append(Note(t + half, 0.5, 67 + rng.choice([0, 2, 4, 5, 7, 9, 11, 12])))
                if rng.random() < 0.3:
                    notes.append(Note(t + half, 0.5, 62 + rng.choice([0, 2])))
    notes.sort(key=lambda n: (n.start, n.pitch))
    split = seed_bars * 4
    return (
        Piece(tuple(n for n in notes if n.start < split)),
        Piece(tuple(n for n in notes if n.start >= split)),
    )


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_32_bars_of_two_hands_fit_on_white_under_the_size_limit():
    seed, cont = two_hands(32)
    png = score_png(score_xml(seed, cont, key=(0, "major")))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < MAX_PNG_BYTES
    img = pixels(png)
    height, width, _ = img.shape
    assert width == WIDTH_PX and height > width  # several systems, stacked
    assert (img[:5, :5] == 255).all() and (img[-5:, -5:] == 255).all()  # white, not transparent
    white = (img > 240).all(axis=2).mean()
    assert 0.6 < white < 0.98  # ink on paper: neither blank nor black
    r, g, b = (int(SEED_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    seed_ink = (np.abs(img.astype(int) - (r, g, b)).sum(axis=2) < 60).sum()
    assert seed_ink > 500  # the seed's notes are drawn in their colour


def test_staff_lines_are_thick_enough_to_read_at_preview_width():
    """Discord previews a picture at about half size: the gap between staff lines must stay
    several pixels there. Measured on the first staff of a one-staff melody."""
    melody = Piece(tuple(Note(float(i), 1.0, 67 + i % 5) for i in range(16)))
    img = pixels(score_png(score_xml(melody, Piece(()), key=(0, "major"))))
    rows = np.flatnonzero((img.mean(axis=2) < 200).mean(axis=1) > 0.3)  # staff lines
    lines = [rows[0]] + [r for a, r in zip(rows, rows[1:], strict=False) if r > a + 1]
    assert len(lines) == 5  # one staff
    assert np.diff(lines).min() >= 10  # >= 5 px between lines at half size


def test_a_result_gets_musicxml_and_a_picture_and_survives_a_failed_picture(monkeypatch):
    from engine.music.result_midi import to_midi_bytes

    seed, cont = two_hands(8)
    midi = to_midi_bytes(seed, cont)
    done = engrave_result(midi, seed, cont, title="Motif #1")
    assert done.musicxml.startswith(b"<?xml") and done.png is not None

    import engine.audio.score as score_image

    def broken(svg: str) -> bytes:
        raise ValueError("resvg refused")

    monkeypatch.setattr(score_image, "svg_to_png", broken)
    done = engrave_result(midi, seed, cont, title="Motif #1")
    assert done.png is None and b"<score-partwise" in done.musicxml


def test_engraving_works_in_any_thread_after_the_first():
    """The render stage engraves in worker threads; verovio's font path was set only for the
    thread that imported it, so a second thread got "verovio could not read the MusicXML"."""
    import threading

    seed, cont = two_hands(2)
    xml = score_xml(seed, cont, key=(0, "major"))
    assert score_png(xml)[:4] == b"\x89PNG"  # the main thread first
    results: list[object] = []

    def engrave() -> None:
        try:
            results.append(score_png(xml))
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    for _ in range(2):
        thread = threading.Thread(target=engrave)
        thread.start()
        thread.join(60)
    assert all(isinstance(r, bytes) and r[:4] == b"\x89PNG" for r in results), results
