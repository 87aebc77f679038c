"""A piano-roll picture of a request: the seed and its continuation, for the chat message.

Drawn with Pillow straight onto the pixels (rectangles, lines, DejaVu Sans text): the same
picture matplotlib's figure machinery drew, at about a tenth of its cost (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.music.metre import Bar, metres_of, piece_bars
from engine.music.notes import Note, Piece

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

SEED_COLOUR = "#3b6fb6"  # blue
CONTINUATION_COLOUR = "#e07b20"  # orange: tells apart for the common colour-vision deficiencies
SEED_END_COLOUR = "#444444"
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
BLACK_KEYS = frozenset({1, 3, 6, 8, 10})
MAX_BAR_LABELS = 16
FONT = 11  # Discord shows a 1000 px picture at about half size: smaller text blurs
# margins in pixels: note names on the left, the legend on the right, bar numbers below, title
LEFT, RIGHT, BOTTOM, TOP = 52, 150, 50, 34
WHITE = (255, 255, 255)
BLACK_KEY_ROW = (243, 243, 243)  # black at 4.5 % over white
OCTAVE_LINE, BAR_LINE, BEAT_LINE, SPINE = (
    (153, 153, 153),
    (136, 136, 136),
    (204, 204, 204),
    (0, 0, 0),
)


def note_name(pitch: int) -> str:
    """Scientific pitch notation, MIDI 60 = C4."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def _rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


@functools.cache
def _font(size: int):  # type: ignore[no-untyped-def]
    """DejaVu Sans, the font matplotlib ships (found without importing matplotlib); Pillow's
    own scalable default when it is absent."""
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def _px(points: float) -> int:
    return max(1, round(points * 100 / 72))  # font points at 100 dpi, as the old figure


def piano_roll_png(
    seed: Piece | None,
    continuation: Piece,
    *,
    title: str,
    width_px: int = 1000,
    height_px: int = 400,
) -> bytes:
    """PNG of the seed (blue) and continuation (orange) on one timeline in beats.

    Both pieces share the timeline: the continuation's beats count from the start of the seed.
    Bar lines follow the seed's metres, changes included (the continuation's without a seed)."""
    from PIL import Image, ImageDraw

    parts = [
        (p, c, label)
        for p, c, label in (
            (seed, SEED_COLOUR, "seed"),
            (continuation, CONTINUATION_COLOUR, "continuation"),
        )
        if p is not None
    ]
    metre = seed if seed is not None else continuation
    frame = _Frame.around([n for p, _, _ in parts for n in p.notes], metre, width_px, height_px)
    image = Image.new("RGB", (width_px, height_px), WHITE)
    draw = ImageDraw.Draw(image)
    _draw_grid(draw, frame, metre)
    _draw_notes(draw, frame, parts)
    handles: list[tuple[str, str, bool]] = [(c, label, False) for _, c, label in parts]
    if seed is not None and seed.notes:
        _draw_seed_end(draw, frame, seed)
        handles.append((SEED_END_COLOUR, "seed ends", True))
    # the frame: left, bottom and right spines (no top, as before)
    draw.line((frame.x0, frame.y0, frame.x0, frame.y1), fill=SPINE)
    draw.line((frame.x0, frame.y1, frame.x1, frame.y1), fill=SPINE)
    draw.line((frame.x1, frame.y0, frame.x1, frame.y1), fill=SPINE)
    _draw_legend(draw, frame, handles)
    _draw_axes(image, draw, frame, metre, title)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


@dataclass(frozen=True)
class _Frame:
    """The plot area in pixels and what it shows: pitches low..high (one row per semitone,
    pitch p's row centred on y(p)) and beats 0..end in `bars`."""

    x0: int
    x1: int
    y0: int
    y1: int
    height_px: int
    low: int
    high: int
    end: float
    bars: tuple[Bar, ...]

    @classmethod
    def around(cls, notes: list[Note], metre: Piece, width_px: int, height_px: int) -> _Frame:
        """The pitch range with a margin (an octave at least, so a few notes do not become
        huge blocks), and whole bars up to the last note's end."""
        if notes:
            low = min(n.pitch for n in notes) - 2
            high = max(n.pitch for n in notes) + 2
            end = max(n.end for n in notes)
        else:
            low, high, end = 58, 72, 0.0
        if high - low < 12:
            pad = (12 - (high - low)) / 2
            low, high = int(low - math.floor(pad)), int(high + math.ceil(pad))
        bars = tuple(piece_bars(metre, end))
        end = bars[-1].start + bars[-1].length
        return cls(LEFT, width_px - RIGHT, TOP, height_px - BOTTOM, height_px, low, high, end, bars)

    @property
    def n_bars(self) -> int:
        return len(self.bars)

    def x(self, beat: float) -> float:
        return self.x0 + beat * ((self.x1 - self.x0) / self.end)

    def y(self, pitch: float) -> float:
        return self.y1 - (pitch - self.low + 0.5) * (
            (self.y1 - self.y0) / (self.high - self.low + 1)
        )


def _draw_grid(draw: ImageDraw.ImageDraw, f: _Frame, metre: Piece) -> None:
    """Black-key rows shaded, as on a keyboard (it helps reading intervals); beat, octave and
    bar lines."""
    x, y = f.x, f.y
    for p in range(f.low, f.high + 1):
        if p % 12 in BLACK_KEYS:
            draw.rectangle(
                (f.x0, round(y(p + 0.5)), f.x1, round(y(p - 0.5)) - 1), fill=BLACK_KEY_ROW
            )
    if f.n_bars <= 32:  # beat lines only while they stay visibly apart
        for bar in f.bars:
            step = 4 / bar.metre[1]  # denominator units
            for b in np.arange(bar.start + step, bar.start + bar.length - 1e-9, step):
                draw.line((round(x(b)), f.y0, round(x(b)), f.y1), fill=BEAT_LINE)
    for p in range(f.low, f.high + 1):
        if p % 12 == 0:
            draw.line((f.x0, round(y(p - 0.5)), f.x1, round(y(p - 0.5))), fill=OCTAVE_LINE)
    for beat in [b.start for b in f.bars] + [f.end]:
        draw.line((round(x(beat)), f.y0, round(x(beat)), f.y1), fill=BAR_LINE)


def _draw_notes(draw: ImageDraw.ImageDraw, f: _Frame, parts: list[tuple[Piece, str, str]]) -> None:
    for piece, colour, _label in parts:
        edge = _rgb(colour)
        for n in piece.notes:
            alpha = 0.45 + 0.55 * min(127, max(1, n.velocity)) / 127  # louder notes darker
            face = tuple(round(255 + (c - 255) * alpha) for c in edge)
            left, right = round(f.x(n.start)), round(f.x(n.start + max(n.duration, 0.05)))
            top, bottom = round(f.y(n.pitch + 0.4)), round(f.y(n.pitch - 0.4))
            draw.rectangle(
                (left, top, max(left + 1, right), max(top + 1, bottom)), fill=face, outline=edge
            )


def _draw_seed_end(draw: ImageDraw.ImageDraw, f: _Frame, seed: Piece) -> None:
    """A dashed line where the seed ends."""
    sx_end = round(f.x(seed.end_beat))
    for top in range(f.y0, f.y1, 9):
        draw.line((sx_end, top, sx_end, min(top + 5, f.y1)), fill=_rgb(SEED_END_COLOUR), width=2)


def _draw_legend(
    draw: ImageDraw.ImageDraw, f: _Frame, handles: list[tuple[str, str, bool]]
) -> None:
    """To the right of the plot: a swatch (or a dashed line) and a label each."""
    font = _font(_px(FONT))
    line_h = _px(FONT) + 8
    for i, (colour, label, dashed) in enumerate(handles):
        top = f.y0 + 2 + i * line_h
        if dashed:
            for lx in (f.x1 + 6, f.x1 + 20):
                draw.line((lx, top + 7, lx + 9, top + 7), fill=_rgb(colour), width=2)
        else:
            draw.rectangle((f.x1 + 6, top + 2, f.x1 + 30, top + 12), fill=_rgb(colour))
        draw.text((f.x1 + 38, top + 7), label, fill=SPINE, font=font, anchor="lm")


def _draw_axes(
    image: Image.Image, draw: ImageDraw.ImageDraw, f: _Frame, metre: Piece, title: str
) -> None:
    """Pitch names (every C always; every natural note when the range is narrow), bar numbers,
    the axis labels and the title."""
    from PIL import Image, ImageDraw

    font = _font(_px(FONT))
    span = f.high - f.low
    step_pcs = {0} if span > 24 else ({0, 2, 4, 5, 7, 9, 11} if span <= 14 else {0, 4, 7})
    for p in range(f.low, f.high + 1):
        if p % 12 in step_pcs:
            draw.text((f.x0 - 4, f.y(p)), note_name(p), fill=SPINE, font=font, anchor="rm")
    label = Image.new("RGB", (60, _px(FONT) + 6), WHITE)
    ImageDraw.Draw(label).text((30, label.height / 2), "pitch", fill=SPINE, font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (2, round((f.y0 + f.y1) / 2) - 30))

    every = max(1, math.ceil(f.n_bars / MAX_BAR_LABELS))
    for i in range(0, f.n_bars, every):
        draw.text((f.x(f.bars[i].start), f.y1 + 4), str(i + 1), fill=SPINE, font=font, anchor="mt")
    written = [f"{n}/{d}" for _, n, d in metres_of(metre)]
    metres = " → ".join(written if len(written) <= 3 else [written[0], "…", written[-1]])
    draw.text(
        ((f.x0 + f.x1) / 2, f.height_px - 6),
        f"bar ({metres}, {metre.tempo_bpm:g} BPM)",
        fill=SPINE,
        font=font,
        anchor="md",
    )
    draw.text((f.x0, TOP - 8), title, fill=SPINE, font=_font(_px(FONT + 2)), anchor="ld")
