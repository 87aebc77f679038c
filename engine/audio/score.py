"""The score picture of a result: its MusicXML engraved by verovio, rasterised by resvg.

Both are PyPI wheels with no system libraries. The picture is 1000 px wide like the piano roll,
on white (verovio's SVG is transparent, unreadable on Discord's dark theme), its systems stacked
on one page, and kept under `MAX_PNG_BYTES`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.music.metrics import estimate_key
from engine.music.midi import declared_key
from engine.music.musicxml import score_xml
from engine.music.notes import Piece

log = logging.getLogger(__name__)

WIDTH_PX = 1000
SCALE = 60  # verovio zoom, percent: 11 px between staff lines at WIDTH_PX, 5-6 px in a preview
MAX_PNG_BYTES = 300 * 1024
SERIF = "DejaVu Serif"  # the text font: bar numbers, tempo, instrument, rehearsal mark
_METRONOME = re.compile(
    r"<metronome><beat-unit>quarter</beat-unit>(<beat-unit-dot/>)?<per-minute>([0-9.]+)"
    r"</per-minute></metronome>"
)
_local = threading.local()


def _toolkit():
    """One verovio toolkit per thread (a toolkit is not thread-safe; making one costs ms)."""
    tk = getattr(_local, "toolkit", None)
    if tk is None:
        import verovio

        verovio.enableLog(verovio.LOG_OFF)
        # verovio's default resource path (its fonts) is per thread, and only the thread that
        # imported it has one: a worker's other threads must set it, or nothing loads
        verovio.setDefaultResourcePath(str(Path(verovio.__file__).resolve().parent / "data"))
        tk = verovio.toolkit()
        _local.toolkit = tk
    return tk


def engrave_svg(xml: str, *, width_px: int = WIDTH_PX, scale: int = SCALE) -> str:
    """SVG of MusicXML with every system on one page, `width_px` wide."""
    tk = _toolkit()
    tk.setOptions(
        {
            "pageWidth": width_px * 100 // scale,
            "pageHeight": 60000,
            "adjustPageHeight": True,
            "scale": scale,
            "breaks": "auto",
            "header": "none",
            "footer": "none",
            "pageMarginTop": 60,
            "pageMarginBottom": 60,
            "pageMarginLeft": 60,
            "pageMarginRight": 60,
        }
    )
    # verovio draws the metronome's note with its music font as SVG text, which resvg cannot
    # load: the picture says the tempo in words, with the note from a text font.
    words = _METRONOME.sub(lambda m: f"<words>♩{'.' if m[1] else ''} = {m[2]}</words>", xml)
    if not tk.loadData(words):
        raise ValueError("verovio could not read the MusicXML")
    if tk.getPageCount() < 1:
        raise ValueError("verovio engraved no page")
    return tk.renderToSVG(1)


@lru_cache(maxsize=1)
def _text_fonts() -> list[str]:
    """DejaVu Serif from matplotlib's own copy (a worker dependency): the picture looks the same
    on every machine, with or without system fonts (slim images have none)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [str(folder / f"DejaVuSerif{style}.ttf") for style in ("", "-Bold", "-Italic")]


def svg_to_png(svg: str) -> bytes:
    import resvg_py

    return bytes(
        resvg_py.svg_to_bytes(
            svg_string=svg,
            background="white",
            skip_system_fonts=True,
            font_files=_text_fonts(),
            font_family=SERIF,
            serif_family=SERIF,
        )
    )


def score_png(
    xml: str, *, width_px: int = WIDTH_PX, step: Callable[[], None] | None = None
) -> bytes:
    """PNG of a MusicXML score on white, under MAX_PNG_BYTES (smaller when it must be).
    `step` is called between the engraving's long calls (a worker's heartbeat: verovio and
    resvg keep the GIL for seconds on a long score, so no other thread runs meanwhile)."""
    step = step or (lambda: None)
    svg = engrave_svg(xml, width_px=width_px)
    step()
    png = svg_to_png(svg)
    while len(png) > MAX_PNG_BYTES and width_px > 400:
        step()
        width_px = width_px * 4 // 5
        log.info("score picture %d bytes; engraving it %d px wide", len(png), width_px)
        svg = engrave_svg(xml, width_px=width_px)
        step()
        png = svg_to_png(svg)
    return png


@dataclass(frozen=True)
class EngravedResult:
    musicxml: bytes
    png: bytes | None  # None when engraving failed: the result still has its piano roll


def result_key(midi: bytes, seed: Piece | None, continuation: Piece) -> tuple[int, str] | None:
    """The key to write: the one the seed's file declared, else estimated from the seed (from
    the continuation without one); None without notes."""
    declared = declared_key(midi)
    if declared is not None:
        return declared
    source = seed if seed is not None and seed.notes else continuation
    return estimate_key(source.notes) if source.notes else None


def engrave_result(
    midi: bytes,
    seed: Piece | None,
    continuation: Piece,
    *,
    title: str,
    step: Callable[[], None] | None = None,
) -> EngravedResult:
    """The MusicXML of a result and its score picture. The MusicXML is always written; a
    picture verovio or resvg fails on is logged and left out. `step`: see `score_png`."""
    xml = score_xml(seed, continuation, key=result_key(midi, seed, continuation), title=title)
    try:
        png: bytes | None = score_png(xml, step=step)
    except Exception:  # noqa: BLE001 - the piano roll still shows the result
        log.exception("engraving the score picture failed")
        png = None
    return EngravedResult(musicxml=xml.encode("utf-8"), png=png)
