"""A PDF of score pages: each page's picture on an A4 sheet, written by hand.

No PDF library ships as a wheel without system libraries and also reads verovio's SVG, and
Pillow's own PDF writer stores colour pictures as JPEG, which smears thin staff lines. So each
page is stored losslessly (Flate, the compression PNG uses) in a PDF of a few objects a page:
what a printer needs, readable by every PDF viewer.
"""

from __future__ import annotations

import io
import zlib

A4_PT = (595.28, 841.89)  # PDF points (1/72 in)


def _raw_rgb(png: bytes) -> tuple[int, int, bytes]:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    return img.width, img.height, img.tobytes()


def pages_pdf(pngs: list[bytes], *, page_width_px: int) -> bytes:
    """A PDF with one A4 page per PNG, each drawn at the page's full width (a picture
    `page_width_px` wide spans the sheet; a narrower one keeps its scale), from the top."""
    if not pngs:
        raise ValueError("a PDF needs at least one page")
    width_pt, height_pt = A4_PT
    pt_per_px = width_pt / page_width_px
    objects: list[bytes] = []  # object n is objects[n - 1]

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled in once the page tree's number is known
    pages_ref = add(b"")
    kids = []
    for png in pngs:
        w, h, raw = _raw_rgb(png)
        data = zlib.compress(raw, 6)
        image = add(
            b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
            b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream"
            % (w, h, len(data), data)
        )
        draw_w, draw_h = w * pt_per_px, min(h * pt_per_px, height_pt)
        content = b"q %.2f 0 0 %.2f 0 %.2f cm /Im0 Do Q" % (draw_w, draw_h, height_pt - draw_h)
        stream = add(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
        kids.append(
            add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.2f %.2f] "
                b"/Resources << /XObject << /Im0 %d 0 R >> >> /Contents %d 0 R >>"
                % (pages_ref, width_pt, height_pt, image, stream)
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
