"""The score of a result: its MusicXML engraved by verovio into pages, rasterised by resvg.

Both are PyPI wheels with no system libraries. Every page is `PAGE_WIDTH_PX` wide and at most
A4-shaped (`PAGE_HEIGHT_PX`), on white (verovio's SVG is transparent, unreadable on Discord's dark
theme), at a music size a phone can read. Chat gets the first `CHAT_PAGES` pages as PNGs, each
under `MAX_PNG_BYTES`; the PDF (engine.audio.score_pdf, vector) has every page. verovio lays the
whole score out once; only the chat pages are rasterised, so the cost grows slowly and linearly
with the bars.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.audio.score_pdf import pages_pdf
from engine.music.keys import key_for_metrics
from engine.music.midi import declared_key
from engine.music.musicxml import score_xml
from engine.music.notes import Piece

log = logging.getLogger(__name__)

PAGE_WIDTH_PX = 1400
PAGE_HEIGHT_PX = 1980  # A4's shape (1 : 1.414): the last page is cut where its music ends
# verovio zoom, percent: 14 px between staff lines, about 3.5 px on a phone that shows the
# picture 360 px wide; 4-6 bars of eighths to a system
SCALE = 80
CHAT_PAGES = 2  # about 16 systems: what a chat picture shows; the PDF has the rest
MAX_PNG_BYTES = 400 * 1024  # per page; Discord's upload cap is 10 MiB, but chat loads them all
SERIF = "DejaVu Serif"  # the text font: bar numbers, tempo, instrument, rehearsal mark
_METRONOME = re.compile(
    r"<metronome><beat-unit>quarter</beat-unit>(<beat-unit-dot/>)?<per-minute>([0-9.]+)"
    r"</per-minute></metronome>"
)
_MEASURE = re.compile(r'class="measure[" ]')
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


def _load(xml: str, width_px: int, height_px: int, scale: int):
    tk = _toolkit()
    tk.setOptions(
        {
            "pageWidth": width_px * 100 // scale,
            "pageHeight": height_px * 100 // scale,
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
    return tk


def engrave_pages(
    xml: str,
    *,
    width_px: int = PAGE_WIDTH_PX,
    height_px: int = PAGE_HEIGHT_PX,
    scale: int = SCALE,
    limit: int | None = None,
) -> list[str]:
    """The SVG of each page of a MusicXML score (the first `limit` pages when given)."""
    tk = _load(xml, width_px, height_px, scale)
    count = tk.getPageCount() if limit is None else min(limit, tk.getPageCount())
    return [tk.renderToSVG(page) for page in range(1, count + 1)]


def engrave_svg(xml: str, *, width_px: int = PAGE_WIDTH_PX, scale: int = SCALE) -> str:
    """The first page's SVG."""
    return engrave_pages(xml, width_px=width_px, scale=scale, limit=1)[0]


def page_bars(svg: str) -> int:
    """How many bars (measures) a page's SVG draws."""
    return len(_MEASURE.findall(svg))


@lru_cache(maxsize=1)
def _text_fonts() -> list[str]:
    """DejaVu Serif from matplotlib's own copy (a worker dependency): the picture looks the same
    on every machine, with or without system fonts (slim images have none)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [str(folder / f"DejaVuSerif{style}.ttf") for style in ("", "-Bold", "-Italic")]


def svg_to_png(svg: str, *, zoom: float = 1.0) -> bytes:
    import resvg_py

    return bytes(
        resvg_py.svg_to_bytes(
            svg_string=svg,
            background="white",
            skip_system_fonts=True,
            font_files=_text_fonts(),
            font_family=SERIF,
            serif_family=SERIF,
            zoom=zoom,
        )
    )


def small_png(png: bytes, limit: int = MAX_PNG_BYTES) -> bytes:
    """The PNG, or the same picture in 16 colours when it is over `limit` bytes (ink, the
    seed's blue and their anti-aliasing need few; the file shrinks about threefold)."""
    if len(png) <= limit:
        return png
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=16)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False)
    log.info("score page %d bytes; %d in 16 colours", len(png), out.tell())
    return out.getvalue()


Step = Callable[[], None]


def _no_step() -> None:
    pass


def score_png(xml: str, *, width_px: int = PAGE_WIDTH_PX, step: Step | None = None) -> bytes:
    """The first page of a MusicXML score as a PNG on white, under MAX_PNG_BYTES. `step` is
    called between the engraving's long calls (see `engrave_score`)."""
    svg = engrave_svg(xml, width_px=width_px)
    (step or _no_step)()
    return small_png(svg_to_png(svg))


@dataclass(frozen=True)
class EngravedScore:
    pages: tuple[bytes, ...]  # the PNGs chat shows: the first CHAT_PAGES pages
    pdf: bytes  # every page
    bars_shown: int  # the bars on `pages`
    bars_total: int
    page_count: int


def engrave_score(
    xml: str, *, chat_pages: int = CHAT_PAGES, step: Step | None = None
) -> EngravedScore:
    """A score laid out once: its first `chat_pages` pages rasterised for chat, every page
    drawn as vectors in the PDF. `step` is called between the long calls (the layout, each
    page's rasterising, the PDF): a worker's heartbeat, since verovio and resvg keep the GIL
    for seconds on a long score, so no other thread runs meanwhile."""
    step = step or _no_step
    svgs = engrave_pages(xml)
    pages: list[bytes] = []
    for svg in svgs[:chat_pages]:
        step()
        pages.append(small_png(svg_to_png(svg)))
    step()
    pdf = pages_pdf(svgs, page_width_px=PAGE_WIDTH_PX)
    step()
    return EngravedScore(
        pages=tuple(pages),
        pdf=pdf,
        bars_shown=sum(page_bars(svg) for svg in svgs[:chat_pages]),
        bars_total=sum(page_bars(svg) for svg in svgs),
        page_count=len(svgs),
    )


@dataclass(frozen=True)
class EngravedResult:
    musicxml: bytes
    # the score's pictures and PDF; empty/None when engraving failed: the result still has its
    # MusicXML and piano roll
    pages: tuple[bytes, ...] = ()
    pdf: bytes | None = None
    bars_shown: int = 0
    bars_total: int = 0

    @property
    def png(self) -> bytes | None:
        """The first page (what chat shows inline)."""
        return self.pages[0] if self.pages else None


def result_key(midi: bytes, seed: Piece | None, continuation: Piece) -> tuple[int, str] | None:
    """The key to write: the one the seed's file declared, else estimated from the seed (from
    the continuation without one); None without notes."""
    declared = declared_key(midi)
    if declared is not None:
        return declared
    source = seed if seed is not None and seed.notes else continuation
    return key_for_metrics(source.notes) if source.notes else None


def engrave_result(
    midi: bytes,
    seed: Piece | None,
    continuation: Piece,
    *,
    title: str,
    step: Step | None = None,
) -> EngravedResult:
    """The MusicXML of a result, its score pages and PDF. The MusicXML is always written; a
    score verovio or resvg fails on is logged and left out. `step`: see `engrave_score`."""
    xml = score_xml(seed, continuation, key=result_key(midi, seed, continuation), title=title)
    try:
        score = engrave_score(xml, step=step)
    except Exception:  # noqa: BLE001 - the piano roll and the MusicXML still show the result
        log.exception("engraving the score failed")
        return EngravedResult(musicxml=xml.encode("utf-8"))
    return EngravedResult(
        musicxml=xml.encode("utf-8"),
        pages=score.pages,
        pdf=score.pdf,
        bars_shown=score.bars_shown,
        bars_total=score.bars_total,
    )
