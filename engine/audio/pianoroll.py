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
from pathlib import Path

import numpy as np

from engine.music.notes import Piece

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
    Bar lines follow the seed's time signature (the continuation's without a seed)."""
    from PIL import Image, ImageDraw

    parts = [(p, c, label) for p, c, label in (
        (seed, SEED_COLOUR, "seed"), (continuation, CONTINUATION_COLOUR, "continuation"))
        if p is not None]  # fmt: skip
    metre = seed if seed is not None else continuation
    all_notes = [n for p, _, _ in parts for n in p.notes]
    if all_notes:
        low = min(n.pitch for n in all_notes) - 2
        high = max(n.pitch for n in all_notes) + 2
        end = max(n.end for n in all_notes)
    else:
        low, high, end = 58, 72, metre.beats_per_bar
    if high - low < 12:  # at least an octave, so a few notes do not become huge blocks
        pad = (12 - (high - low)) / 2
        low, high = int(low - math.floor(pad)), int(high + math.ceil(pad))
    bar = metre.beats_per_bar
    end = max(bar, math.ceil(end / bar) * bar)

    # the plot area in pixels; pitch p's row is centred on y(p), one row per semitone
    x0, x1 = LEFT, width_px - RIGHT
    y0, y1 = TOP, height_px - BOTTOM
    sx = (x1 - x0) / end
    sy = (y1 - y0) / (high - low + 1)

    def x(beat: float) -> float:
        return x0 + beat * sx

    def y(pitch: float) -> float:
        return y1 - (pitch - low + 0.5) * sy

    image = Image.new("RGB", (width_px, height_px), WHITE)
    draw = ImageDraw.Draw(image)
    # Black-key rows shaded, as on a keyboard: helps reading intervals.
    for p in range(low, high + 1):
        if p % 12 in BLACK_KEYS:
            draw.rectangle((x0, round(y(p + 0.5)), x1, round(y(p - 0.5)) - 1), fill=BLACK_KEY_ROW)
    n_bars = round(end / bar)
    if n_bars <= 32:  # beat lines only while they stay visibly apart
        step = 4 / metre.time_signature[1]  # denominator units
        for b in np.arange(0, end + 1e-9, step):
            if b % bar:
                draw.line((round(x(b)), y0, round(x(b)), y1), fill=BEAT_LINE)
    for p in range(low, high + 1):
        if p % 12 == 0:
            draw.line((x0, round(y(p - 0.5)), x1, round(y(p - 0.5))), fill=OCTAVE_LINE)
    for i in range(n_bars + 1):
        draw.line((round(x(i * bar)), y0, round(x(i * bar)), y1), fill=BAR_LINE)

    for piece, colour, _label in parts:
        edge = _rgb(colour)
        for n in piece.notes:
            alpha = 0.45 + 0.55 * min(127, max(1, n.velocity)) / 127  # louder notes darker
            face = tuple(round(255 + (c - 255) * alpha) for c in edge)
            left, right = round(x(n.start)), round(x(n.start + max(n.duration, 0.05)))
            top, bottom = round(y(n.pitch + 0.4)), round(y(n.pitch - 0.4))
            draw.rectangle((left, top, max(left + 1, right), max(top + 1, bottom)), fill=face,
                           outline=edge)  # fmt: skip

    font = _font(_px(FONT))
    handles: list[tuple[str, str, bool]] = [(c, label, False) for _, c, label in parts]
    if seed is not None and seed.notes:
        sx_end = round(x(seed.end_beat))
        for top in range(y0, y1, 9):  # dashed
            draw.line((sx_end, top, sx_end, min(top + 5, y1)), fill=_rgb(SEED_END_COLOUR), width=2)
        handles.append((SEED_END_COLOUR, "seed ends", True))
    # the frame: left, bottom and right spines (no top, as before)
    draw.line((x0, y0, x0, y1), fill=SPINE)
    draw.line((x0, y1, x1, y1), fill=SPINE)
    draw.line((x1, y0, x1, y1), fill=SPINE)

    # legend, to the right of the plot
    line_h = _px(FONT) + 8
    for i, (colour, label, dashed) in enumerate(handles):
        top = y0 + 2 + i * line_h
        if dashed:
            for lx in (x1 + 6, x1 + 20):
                draw.line((lx, top + 7, lx + 9, top + 7), fill=_rgb(colour), width=2)
        else:
            draw.rectangle((x1 + 6, top + 2, x1 + 30, top + 12), fill=_rgb(colour))
        draw.text((x1 + 38, top + 7), label, fill=SPINE, font=font, anchor="lm")

    # Pitch axis: every C always; every natural note when the range is narrow.
    span = high - low
    step_pcs = {0} if span > 24 else ({0, 2, 4, 5, 7, 9, 11} if span <= 14 else {0, 4, 7})
    for p in range(low, high + 1):
        if p % 12 in step_pcs:
            draw.text((x0 - 4, y(p)), note_name(p), fill=SPINE, font=font, anchor="rm")
    label = Image.new("RGB", (60, _px(FONT) + 6), WHITE)
    ImageDraw.Draw(label).text((30, label.height / 2), "pitch", fill=SPINE, font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (2, round((y0 + y1) / 2) - 30))

    every = max(1, math.ceil(n_bars / MAX_BAR_LABELS))
    for i in range(0, n_bars, every):
        draw.text((x(i * bar), y1 + 4), str(i + 1), fill=SPINE, font=font, anchor="mt")
    draw.text(((x0 + x1) / 2, height_px - 6),
              f"bar ({metre.time_signature[0]}/{metre.time_signature[1]}, "
              f"{metre.tempo_bpm:g} BPM)", fill=SPINE, font=font, anchor="md")  # fmt: skip
    draw.text((x0, TOP - 8), title, fill=SPINE, font=_font(_px(FONT + 2)), anchor="ld")

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
