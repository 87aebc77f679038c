"""`score-timewise` MusicXML turned into `score-partwise`, the form music21 reads.

The two forms hold the same elements nested the other way round: timewise is measure → part →
music, partwise part → measure → music. The MusicXML 4.0 stylesheet that converts them
(parttime.xsl) is this tree walk: every measure's `<part id>` content goes, in order, into a
measure of that part, with the measure's own attributes; everything before the first measure
(work, identification, defaults, credits, part-list) is kept as it is.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

import defusedxml.ElementTree as safe_et

_ROOT = b"<score-timewise"


def partwise(xml: bytes) -> bytes:
    """The document in partwise form; a document that is not timewise comes back unchanged.
    Called on checked bytes (no DTD, no entities), in the parser's limited process."""
    if _ROOT not in xml:
        return xml
    root = safe_et.fromstring(xml)
    if _local(root.tag) != "score-timewise":
        return xml
    out = ET.Element("score-partwise", root.attrib)
    parts: dict[str, ET.Element] = {}
    for child in root:
        if _local(child.tag) != "measure":
            out.append(child)
            continue
        for part in child:
            if _local(part.tag) != "part":
                continue
            pid = part.get("id", "")
            if pid not in parts:
                parts[pid] = ET.Element("part", {"id": pid})
            measure = ET.SubElement(parts[pid], "measure", child.attrib)
            measure.extend(list(part))
    order = [sp.get("id", "") for sp in root.iter() if _local(sp.tag) == "score-part"]
    for pid in [*(p for p in order if p in parts), *(p for p in parts if p not in order)]:
        out.append(parts[pid])
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(out)


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""
