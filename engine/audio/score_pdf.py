"""A vector PDF of verovio's score pages, written by hand from their SVG.

No PDF library ships as a wheel without system libraries and also reads SVG (cairosvg needs
libcairo), and rasterising every page for the PDF costs as much as all the rest of a result's
rendering. verovio's SVG uses a small part of SVG: groups with translate/scale, paths, glyphs
(`<use>` of paths in `<defs>`), polygons, ellipses, rectangles and a few lines of text. This walks
that part into PDF drawing operators: A4 pages, sharp at any zoom, a few KiB a page, and linear
in the pages. Text uses the PDF's standard Times fonts (no font to embed).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from xml.etree import ElementTree

from engine.audio.svg_path import n as _n
from engine.audio.svg_path import path_ops

A4_PT = (595.28, 841.89)  # PDF points (1/72 in)
_SVG = "{http://www.w3.org/2000/svg}"
_XLINK = "{http://www.w3.org/1999/xlink}href"
_TRANSFORM = re.compile(r"(\w+)\s*\(([^)]*)\)")
_NAMED = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}
# the fonts of the standard 14 every PDF viewer has: regular, bold, italic
FONTS = {"F1": "Times-Roman", "F2": "Times-Bold", "F3": "Times-Italic"}
_BOLD = {"ending", "fing", "reh", "tempo"}  # as verovio's own style sheet has them
_ITALIC = {"dir", "dynam", "mNum"}
_KAPPA = 0.5523  # a quarter circle as one cubic Bézier


Matrix = tuple[float, float, float, float, float, float]
Colour = tuple[float, float, float]


def _colour(value: str | None, current: Colour) -> Colour | None:
    """An SVG colour; None for "none"."""
    if value is None or value == "currentColor":
        return current
    if value == "none":
        return None
    if value.startswith("#") and len(value) == 7:
        return tuple(int(value[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]
    return _NAMED.get(value, current)


def _matrix(transform: str | None) -> Matrix | None:
    if not transform:
        return None
    m: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    for name, args in _TRANSFORM.findall(transform):
        v = [float(x) for x in re.split(r"[\s,]+", args.strip()) if x]
        if name == "translate":
            step: Matrix = (1, 0, 0, 1, v[0], v[1] if len(v) > 1 else 0.0)
        elif name == "scale":
            step = (v[0], 0, 0, v[1] if len(v) > 1 else v[0], 0, 0)
        elif name == "matrix":
            step = (v[0], v[1], v[2], v[3], v[4], v[5])
        elif name == "rotate":
            a = math.radians(v[0])
            step = (math.cos(a), math.sin(a), -math.sin(a), math.cos(a), 0, 0)
        else:
            continue
        m = _times(step, m)
    return m


def _times(inner: Matrix, outer: Matrix) -> Matrix:
    """The matrix applying `inner` first, then `outer` (PDF's row-vector order)."""
    a, b, c, d, e, f = inner
    A, B, C, D, E, F = outer
    return (
        a * A + b * C,
        a * B + b * D,
        c * A + d * C,
        c * B + d * D,
        e * A + f * C + E,
        e * B + f * D + F,
    )


def _cm(m: Matrix) -> bytes:
    return b"%s %s %s %s %s %s cm" % tuple(_n(v, 6) for v in m)


def _ellipse_ops(cx: float, cy: float, rx: float, ry: float) -> bytes:
    kx, ky = rx * _KAPPA, ry * _KAPPA
    pts = [
        (cx + rx, cy, cx + rx, cy + ky, cx + kx, cy + ry, cx, cy + ry),
        (cx, cy + ry, cx - kx, cy + ry, cx - rx, cy + ky, cx - rx, cy),
        (cx - rx, cy, cx - rx, cy - ky, cx - kx, cy - ry, cx, cy - ry),
        (cx, cy - ry, cx + kx, cy - ry, cx + rx, cy - ky, cx + rx, cy),
    ]
    ops = [b"%s %s m" % (_n(pts[0][0]), _n(pts[0][1]))]
    ops += [b"%s %s %s %s %s %s c" % tuple(_n(v) for v in p[2:]) for p in pts]
    return b" ".join(ops) + b" h"


@dataclass(frozen=True)
class _Style:
    colour: Colour = (0.0, 0.0, 0.0)  # currentColor: verovio strokes every shape with it
    fill: str | None = None  # the fill attribute in force (None: black / currentColor)
    stroke_width: float = 1.0
    round_caps: bool = False
    font: str = "F1"


def _text(el: ElementTree.Element) -> Iterator[tuple[str, float]]:
    """(text, font size) of a <text> element's tspans, in order."""
    size = 0.0
    for node in el.iter():
        size = float(node.get("font-size", f"{size}px").rstrip("px") or 0)
        if node.text and node.text.strip() and size > 0:
            yield node.text.strip(), size


def _pdf_string(text: str) -> bytes:
    # the tempo's note is not in the standard fonts' character set: said in words
    text = text.replace("♩.", "Dotted quarter").replace("♩", "Quarter")
    raw = text.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


# A score draws a few dozen glyphs (noteheads, clefs, accidentals) thousands of times: their
# path data is read once, not at every use (that was half the PDF's time).
_glyph_ops = lru_cache(maxsize=1024)(path_ops)


class _Page:
    """The drawing operators of one page's SVG."""

    def __init__(self, root: ElementTree.Element) -> None:
        self.glyphs: dict[str, ElementTree.Element] = {}
        for defs in root.iter(f"{_SVG}defs"):
            for glyph in defs:
                if glyph.get("id"):
                    self.glyphs[glyph.get("id", "")] = glyph
        self.ops: list[bytes] = []

    def walk(self, el: ElementTree.Element, style: _Style) -> None:
        tag = el.tag.removeprefix(_SVG)
        if tag in ("defs", "desc", "style", "title"):
            return
        classes = set((el.get("class") or "").split())
        if "placeholder" in classes or el.get("visibility") == "hidden":
            return
        style = self._styled(el, style, classes)
        matrix = _matrix(el.get("transform"))
        if matrix is not None:
            self.ops.append(b"q " + _cm(matrix))
        if tag in ("g", "svg"):
            for child in el:
                self.walk(child, style)
        elif tag == "use":
            glyph = self.glyphs.get((el.get(_XLINK) or el.get("href") or "").lstrip("#"))
            if glyph is not None:
                for shape in glyph.iter(f"{_SVG}path"):
                    self._glyph_path(shape, style)
        elif tag == "path":
            self._shape(path_ops(el.get("d", "")), el, style)
        elif tag in ("polygon", "polyline"):
            pts = [float(v) for v in re.split(r"[\s,]+", el.get("points", "").strip()) if v]
            if len(pts) >= 4:
                ops = [b"%s %s m" % (_n(pts[0]), _n(pts[1]))]
                ops += [
                    b"%s %s l" % (_n(a), _n(b)) for a, b in zip(pts[2::2], pts[3::2], strict=False)
                ]
                self._shape(
                    b" ".join(ops) + (b" h" if tag == "polygon" else b""),
                    el,
                    style,
                    fill=tag == "polygon",
                )
        elif tag == "ellipse" or tag == "circle":
            r = float(el.get("r", 0))
            rx, ry = float(el.get("rx", r)), float(el.get("ry", r))
            cx, cy = float(el.get("cx", 0)), float(el.get("cy", 0))
            self._shape(_ellipse_ops(cx, cy, rx, ry), el, style)
        elif tag == "rect":
            x, y = float(el.get("x", 0)), float(el.get("y", 0))
            w, h = float(el.get("width", 0)), float(el.get("height", 0))
            box = b"%s %s %s %s re" % (_n(x), _n(y), _n(w), _n(h))
            self._shape(box, el, style, fill=el.get("fill-opacity") != "0")
        elif tag == "text":
            self._text(el, style)
        if matrix is not None:
            self.ops.append(b"Q")

    def _styled(self, el: ElementTree.Element, style: _Style, classes: set[str]) -> _Style:
        changes: dict[str, object] = {}
        if el.get("color"):
            changes["colour"] = _colour(el.get("color"), style.colour) or style.colour
        if el.get("fill"):
            changes["fill"] = el.get("fill")
        if classes & _BOLD:
            changes["font"] = "F2"
        elif classes & _ITALIC:
            changes["font"] = "F3"
        if el.get("font-weight") == "bold":
            changes["font"] = "F2"
        elif el.get("font-style") == "italic":
            changes["font"] = "F3"
        return replace(style, **changes) if changes else style  # type: ignore[arg-type]

    def _fill_colour(self, el: ElementTree.Element, style: _Style) -> Colour | None:
        return _colour(el.get("fill") or style.fill, style.colour)

    def _shape(
        self, ops: bytes, el: ElementTree.Element, style: _Style, *, fill: bool = True
    ) -> None:
        if not ops:
            return
        fill_colour = self._fill_colour(el, style) if fill else None
        stroke = el.get("stroke")
        stroke_colour = None if stroke == "none" else _colour(stroke, style.colour)
        width = float(el.get("stroke-width", style.stroke_width))
        caps = el.get("stroke-linecap") == "round"
        parts = [b"q"]
        if fill_colour is not None:
            parts.append(b"%s %s %s rg" % tuple(_n(c) for c in fill_colour))
        if stroke_colour is not None:
            parts.append(b"%s %s %s RG %s w" % (*(_n(c) for c in stroke_colour), _n(width)))
            if caps:
                parts.append(b"1 J 1 j")
        paint = b"B" if fill_colour and stroke_colour else b"f" if fill_colour else b"S"
        if fill_colour is None and stroke_colour is None:
            return
        parts += [ops, paint, b"Q"]
        self.ops.append(b" ".join(parts))

    def _glyph_path(self, shape: ElementTree.Element, style: _Style) -> None:
        colour = _colour(style.fill, style.colour) or style.colour
        matrix = _matrix(shape.get("transform"))
        ops = [b"q"]
        if matrix is not None:
            ops.append(_cm(matrix))
        ops += [
            b"%s %s %s rg" % tuple(_n(c) for c in colour),
            _glyph_ops(shape.get("d", "")),
            b"f Q",
        ]
        self.ops.append(b" ".join(ops))

    def _text(self, el: ElementTree.Element, style: _Style) -> None:
        x, y = float(el.get("x", 0)), float(el.get("y", 0))
        anchor = el.get("text-anchor", "start")
        colour = _colour(el.get("fill") or style.fill, style.colour) or style.colour
        for text, size in _text(el):
            # Times averages about half an em a character: enough to centre a bar number
            width = 0.5 * size * len(text)
            left = x - (width if anchor == "end" else width / 2 if anchor == "middle" else 0)
            # SVG's y axis points down: the text is drawn upright in a flipped frame
            self.ops.append(
                b"BT /%s %s Tf %s %s %s rg 1 0 0 -1 %s %s Tm %s Tj ET"
                % (
                    style.font.encode(),
                    _n(size),
                    *(_n(c) for c in colour),
                    _n(left),
                    _n(y),
                    _pdf_string(text),
                )
            )
            x = left + width if anchor == "start" else x


def svg_page(svg: str, page_width_px: int) -> tuple[float, bytes]:
    """(height in points, PDF content stream) of one verovio page on an A4-wide sheet: a page
    `page_width_px` wide spans the sheet's width."""
    root = ElementTree.fromstring(svg)
    width_px = float(root.get("width", "0").rstrip("px"))
    height_px = float(root.get("height", "0").rstrip("px"))
    inner = next((e for e in root.iter(f"{_SVG}svg") if e.get("viewBox")), None)
    view = [float(v) for v in inner.get("viewBox", "").split()] if inner is not None else []
    pt_per_px = A4_PT[0] / page_width_px
    scale = pt_per_px * (width_px / view[2] if view else 1.0)
    page = _Page(root)
    # from the SVG's frame (y down, view box units) to the sheet's (y up, points), top-aligned
    page.ops.append(_cm((scale, 0, 0, -scale, 0, A4_PT[1])))
    if view:
        page.ops.append(_cm((1, 0, 0, 1, -view[0], -view[1])))
    page.walk(inner if inner is not None else root, _Style())
    return height_px * pt_per_px, b"\n".join(page.ops)


def pages_pdf(svgs: list[str], *, page_width_px: int) -> bytes:
    """A PDF with one A4 page per verovio SVG page."""
    if not svgs:
        raise ValueError("a PDF needs at least one page")
    width_pt, height_pt = A4_PT
    objects: list[bytes] = []  # object n is objects[n - 1]

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in once the page tree's number is known
    pages_ref = add(b"")
    fonts = b" ".join(
        b"/%s %d 0 R"
        % (
            name.encode(),
            add(
                b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>"
                % base.encode()
            ),
        )
        for name, base in FONTS.items()
    )
    kids = []
    for svg in svgs:
        _height, content = svg_page(svg, page_width_px)
        data = zlib.compress(content, 6)
        stream = add(
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(data), data)
        )
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %s %s] "
                b"/Resources << /Font << %s >> >> /Contents %d 0 R >>"
                % (pages_ref, _n(width_pt), _n(height_pt), fonts, stream)
            )
        )
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_ref
    objects[pages_ref - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        catalog,
        xref,
    )
    return bytes(out)
