"""The score pictures and PDF: engraved by verovio into pages, rasterised by resvg, on white,
small enough for chat, readable on a phone."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest

from engine.audio.score import (
    CHAT_PAGES,
    MAX_PNG_BYTES,
    PAGE_HEIGHT_PX,
    PAGE_WIDTH_PX,
    engrave_result,
    engrave_score,
    score_png,
)
from engine.music.musicxml import SEED_INK_COLOUR, score_xml
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
    assert width == PAGE_WIDTH_PX and width < height <= PAGE_HEIGHT_PX  # a page, not a strip
    assert (img[:5, :5] == 255).all() and (img[-5:, -5:] == 255).all()  # white, not transparent
    white = (img > 240).all(axis=2).mean()
    assert 0.6 < white < 0.98  # ink on paper: neither blank nor black
    r, g, b = (int(SEED_INK_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
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
    # a phone shows the 1,400 px page about 360 px wide: >= 3.5 px between its lines there
    assert np.diff(lines).min() >= 14


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
    assert done.png is None and done.pdf is None and b"<score-partwise" in done.musicxml


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


def folk_tune(bars: int) -> tuple[Piece, Piece]:
    """One line of eighths and quarters in 4/4, with a 4-bar seed."""
    rng = random.Random(bars)
    notes, t, pitch = [], 0.0, 67
    while t < bars * 4:
        d = min(rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0]), bars * 4 - t)
        pitch = max(60, min(81, pitch + rng.choice([-4, -3, -2, -1, 1, 2, 3, 5])))
        notes.append(Note(t, d, pitch))
        t += d
    return (
        Piece(tuple(n for n in notes if n.start < 16)),
        Piece(tuple(n for n in notes if n.start >= 16)),
    )


def pdf_pages(pdf: bytes) -> list[bytes]:
    """The decompressed drawing operators of each page of a PDF, read back from its objects."""
    import re
    import zlib

    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    count = int(re.search(rb"/Type /Pages /Kids \[[^\]]*\] /Count (\d+)", pdf)[1])
    streams = re.findall(rb"/Filter /FlateDecode >>\nstream\n(.*?)\nendstream", pdf, re.S)
    assert len(streams) == count == len(re.findall(rb"/Type /Page ", pdf))
    assert b"/MediaBox [0 0 595.28 841.89]" in pdf  # A4
    return [zlib.decompress(data) for data in streams]


@pytest.mark.parametrize("bars", [8, 64, 256])
def test_any_length_reads_as_pages_and_chat_gets_the_first_few(bars):
    """A 64-bar result was one 327 px wide strip 16,012 px tall. Now: pages of a fixed width,
    A4-shaped at most, the first CHAT_PAGES for chat, every page in the PDF, and the bars on
    the chat pages counted so the reply can say which bars it shows."""
    seed, cont = folk_tune(bars + 4)
    score = engrave_score(score_xml(seed, cont, key=(7, "major")))
    assert score.bars_total == bars + 4
    shapes = [pixels(page).shape for page in score.pages]
    assert all(w == PAGE_WIDTH_PX and h <= PAGE_HEIGHT_PX for h, w, _ in shapes), shapes
    assert all(len(page) <= MAX_PNG_BYTES for page in score.pages)
    assert len(score.pages) == min(CHAT_PAGES, score.page_count)
    assert len(pdf_pages(score.pdf)) == score.page_count
    assert score.pages[0][:8] == b"\x89PNG\r\n\x1a\n"
    if bars == 8:
        assert score.page_count == 1 and score.bars_shown == score.bars_total
    else:
        assert score.page_count >= 2  # several pages, not one strip
        assert shapes[0][0] > 1.2 * PAGE_WIDTH_PX  # the first page is page-shaped
    if bars == 256:
        assert 0 < score.bars_shown < score.bars_total
        assert len(score.pages) == CHAT_PAGES


def test_the_pdf_draws_every_page_as_vectors_with_the_seed_in_its_colour():
    """Notes are glyph outlines (filled curves), staff lines strokes, text in Times; the seed's
    notes in the seed's blue; a few KiB a page, not a picture."""
    seed, cont = two_hands(64)
    score = engrave_score(score_xml(seed, cont, key=(0, "major"), title="Motif #7"))
    pages = pdf_pages(score.pdf)
    assert len(pages) == score.page_count >= 3
    first = pages[0]
    r, g, b = (int(SEED_INK_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5))
    blue = f"{r:.2f} {g:.2f} {b:.2f} rg".replace("0.", ".").encode()
    assert first.replace(b"0.", b".").count(blue) > 50  # the seed's noteheads and stems
    assert first.count(b" c ") > 100 and first.count(b" l B Q") > 50  # outlines and lines
    assert b"(Motif) Tj" in first and b"/Image" not in score.pdf
    assert b"(Quarter = 120) Tj" in first  # the tempo, its note in words
    assert len(score.pdf) < 30 * 1024 * score.page_count


def test_the_pdf_looks_like_the_picture_where_a_pdf_renderer_is_installed(tmp_path):
    """Rasterised by poppler (a developer tool, not a dependency), the PDF's first page has the
    picture's ink in the same places."""
    import shutil
    import subprocess

    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    seed, cont = two_hands(12)
    score = engrave_score(score_xml(seed, cont, key=(0, "major")))
    (tmp_path / "s.pdf").write_bytes(score.pdf)
    subprocess.run(["pdftoppm", "-png", "-r", "100", "-f", "1", "-l", "1", "-scale-to-x",
                    str(PAGE_WIDTH_PX), "-scale-to-y", "-1", str(tmp_path / "s.pdf"),
                    str(tmp_path / "p")], check=True)  # fmt: skip
    (page,) = tmp_path.glob("p*.png")
    pdf_ink = pixels(page.read_bytes()).mean(axis=2) < 128
    png_ink = pixels(score.pages[0]).mean(axis=2) < 128
    rows = png_ink.shape[0]
    pdf_ink = pdf_ink[:rows]
    assert abs(pdf_ink.mean() - png_ink.mean()) < 0.25 * png_ink.mean()
    # the same bands of rows carry ink: systems where the picture has them (bands of 20 rows:
    # one-pixel staff lines land a pixel apart in the two rasterisers)
    bands = rows // 20 * 20

    def ink_by_band(ink: np.ndarray) -> np.ndarray:
        return ink[:bands].reshape(-1, 20, ink.shape[1]).mean(axis=(1, 2))

    assert np.corrcoef(ink_by_band(pdf_ink), ink_by_band(png_ink))[0, 1] > 0.9


def test_svg_path_data_becomes_pdf_path_operators():
    """Absolute and relative commands, and the curves whose control point is implied."""
    from engine.audio.svg_path import path_ops

    ops = path_ops("M0 0 L10 10 l5 5 h3 v-2 C1 2 3 4 5 6 s1 1 2 2 Q 1 1 2 2 t 3 3 z M1 1 2 2")
    assert ops.decode().split(" l ") == [
        "0 0 m 10 10",
        "15 15",
        "18 15",
        "18 13",
        "1 2 3 4 5 6 c 7 8 6 7 7 8 c 3 3.33 1.33 1.33 2 2 c 2.67 2.67 3.67 3.67 5 5 c h 1 1 m 2 2 l",
    ]


def test_a_page_over_the_size_limit_is_stored_in_16_colours():
    from engine.audio.score import small_png

    seed, cont = two_hands(24)
    page = engrave_score(score_xml(seed, cont, key=(0, "major"))).pages[0]
    smaller = small_png(page, limit=len(page) - 1)
    assert len(smaller) < len(page) * 0.6
    img = Image.open(io.BytesIO(smaller))
    assert img.mode == "P" and img.size == Image.open(io.BytesIO(page)).size
    assert small_png(page, limit=len(page)) is page  # under the limit: untouched


def test_the_step_hook_runs_between_the_pages_and_before_the_pdf(monkeypatch):
    """A worker's heartbeat (issue #26) rides on `step`: verovio and resvg keep the GIL for
    seconds on a long score, so the engraving calls it between its long calls: after the
    layout, between the chat pages, before and after the PDF."""
    from engine.audio import score as score_image

    calls: list[str] = []
    real_png, real_pdf = score_image.svg_to_png, score_image.pages_pdf

    def png(svg: str) -> bytes:
        calls.append("png")
        return real_png(svg)

    def pdf(svgs: list[str], **kw) -> bytes:  # type: ignore[no-untyped-def]
        calls.append("pdf")
        return real_pdf(svgs, **kw)

    monkeypatch.setattr(score_image, "svg_to_png", png)
    monkeypatch.setattr(score_image, "pages_pdf", pdf)
    from engine.music.result_midi import to_midi_bytes

    seed, cont = two_hands(64)  # three pages or more: two for chat, all in the PDF
    midi = to_midi_bytes(seed, cont)
    done = engrave_result(midi, seed, cont, title="Motif #1", step=lambda: calls.append("step"))
    assert len(done.pages) == CHAT_PAGES and done.pdf is not None
    assert calls == ["step", "png", "step", "png", "step", "pdf", "step"]
