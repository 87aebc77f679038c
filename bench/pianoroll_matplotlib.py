"""The piano roll as engine/audio/pianoroll.py drew it before issue #19: matplotlib's figure machinery
on the Agg canvas. Kept only as the bench's before-figure (`render_bench`), not used by Motif."""

from __future__ import annotations

import io
import logging

import numpy as np

from engine.audio.pianoroll import (
    BLACK_KEYS,
    CONTINUATION_COLOUR,
    FONT,
    MAX_BAR_LABELS,
    SEED_COLOUR,
    SEED_END_COLOUR,
    note_name,
)
from engine.music.notes import Piece

log = logging.getLogger(__name__)

DPI = 100


def _note_boxes(piece: Piece) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles (N, 4, 2) for the notes, and their velocities (N,)."""
    if not piece.notes:
        return np.zeros((0, 4, 2)), np.zeros(0)
    arr = np.array([(n.start, n.duration, n.pitch, n.velocity) for n in piece.notes], float)
    start, dur, pitch, vel = arr.T
    x0, x1 = start, start + np.maximum(dur, 0.05)
    y0, y1 = pitch - 0.4, pitch + 0.4
    boxes = np.stack(
        [np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
         np.stack([x0, y1], 1)], axis=1)  # fmt: skip
    return boxes, vel


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from PIL import Image  # a matplotlib dependency

    parts = [(p, c, label) for p, c, label in (
        (seed, SEED_COLOUR, "seed"), (continuation, CONTINUATION_COLOUR, "continuation"))
        if p is not None]  # fmt: skip
    metre = seed if seed is not None else continuation
    all_notes = [n for p, _, _ in parts for n in p.notes]

    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    if all_notes:
        low = min(n.pitch for n in all_notes) - 2
        high = max(n.pitch for n in all_notes) + 2
        end = max(n.end for n in all_notes)
    else:
        low, high, end = 58, 72, metre.beats_per_bar
    if high - low < 12:  # at least an octave, so a few notes do not become huge blocks
        pad = (12 - (high - low)) / 2
        low, high = int(low - np.floor(pad)), int(high + np.ceil(pad))
    bar = metre.beats_per_bar
    end = max(bar, np.ceil(end / bar) * bar)
    ax.set_xlim(0, end)
    ax.set_ylim(low - 0.5, high + 0.5)

    # Black-key rows shaded, as on a keyboard: helps reading intervals.
    black = [p for p in range(low, high + 1) if p % 12 in BLACK_KEYS]
    ax.barh(black, end, height=1.0, left=0, color="#000000", alpha=0.045, lw=0, zorder=0)
    octaves = [p - 0.5 for p in range(low, high + 1) if p % 12 == 0]
    ax.hlines(octaves, 0, end, color="#999999", lw=0.6, zorder=0.5)

    n_bars = int(round(end / bar))
    ax.vlines([i * bar for i in range(n_bars + 1)], low - 0.5, high + 0.5, color="#888888",
              lw=0.8, zorder=0.5)  # fmt: skip
    if n_bars <= 32:  # beat lines only while they stay visibly apart
        beats = np.arange(0, end + 1e-9, 4 / metre.time_signature[1])  # denominator units
        ax.vlines([b for b in beats if b % bar], low - 0.5, high + 0.5, color="#cccccc",
                  lw=0.4, zorder=0.4)  # fmt: skip

    for piece, colour, _label in parts:
        boxes, vel = _note_boxes(piece)
        if len(boxes):
            alpha = 0.45 + 0.55 * np.clip(vel, 1, 127) / 127  # louder notes darker
            faces = np.tile(np.array(_rgb(colour)), (len(boxes), 1))
            faces = np.column_stack([faces, alpha])
            ax.add_collection(PolyCollection(boxes, facecolors=faces, edgecolors=colour,
                                             linewidths=0.6, zorder=2))  # fmt: skip

    handles = [Patch(facecolor=c, edgecolor=c, label=label) for _, c, label in parts]
    if seed is not None and seed.notes:
        seed_end = seed.end_beat
        ax.axvline(seed_end, color=SEED_END_COLOUR, lw=1.6, ls="--", zorder=3)
        handles.append(Line2D([], [], color=SEED_END_COLOUR, lw=1.6, ls="--", label="seed ends"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=FONT,
              frameon=False, borderaxespad=0)  # fmt: skip

    # Pitch axis: every C always; every natural note when the range is narrow.
    span = high - low
    step_pcs = {0} if span > 24 else ({0, 2, 4, 5, 7, 9, 11} if span <= 14 else {0, 4, 7})
    ticks = [p for p in range(low, high + 1) if p % 12 in step_pcs]
    ax.set_yticks(ticks, [note_name(p) for p in ticks], fontsize=FONT)
    ax.set_ylabel("pitch", fontsize=FONT)

    every = max(1, int(np.ceil(n_bars / MAX_BAR_LABELS)))
    bar_ticks = [i * bar for i in range(0, n_bars, every)]
    ax.set_xticks(bar_ticks, [str(i + 1) for i in range(0, n_bars, every)], fontsize=FONT)
    ax.set_xlabel(
        f"bar ({metre.time_signature[0]}/{metre.time_signature[1]}, "
        f"{metre.tempo_bpm:g} BPM)", fontsize=FONT)  # fmt: skip
    ax.tick_params(length=0)
    ax.spines["top"].set_visible(False)
    ax.set_title(title, fontsize=FONT + 2, loc="left")
    # Fixed margins in pixels (tight_layout would draw the figure twice): room for the note
    # names on the left, the legend on the right, bar numbers below and the title above.
    fig.subplots_adjust(left=52 / width_px, right=1 - 150 / width_px,
                        bottom=50 / height_px, top=1 - 34 / height_px)  # fmt: skip

    canvas.draw()
    image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _rgb(colour: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return to_rgb(colour)
