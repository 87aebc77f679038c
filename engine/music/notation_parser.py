"""The process that parses ABC and MusicXML seeds with music21: `python -m engine.music.notation_parser`.

It imports music21 once, then serves requests on stdin (a JSON line, then the text) with one
JSON line each on stdout. Every parse runs in a forked child with an address-space limit; the
child is killed when it runs past the time limit. Replies carry plain values only. The checks
that need no parser (sizes, entity declarations, the first ABC tune) ran before, in
`engine.music.notation`; the XML tree check runs here, inside the limited child.

The bot starts it with a scrubbed environment in an empty folder (`engine.music.notation`), and
it turns its own network off: the text is data, read with `parseData` and an explicit format,
never a path or a URL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import select
import signal
import sys
import time
from typing import Any, BinaryIO

from engine.music.timewise import partwise

log = logging.getLogger(__name__)


class TooLarge(Exception):
    def __init__(self, what: str, limit: str) -> None:
        super().__init__(what)
        self.what, self.limit = what, limit


def downbeat_shift(part: Any, score: Any, change_at: float = float("inf")) -> float:
    """How far to move a part's notes so that its bar lines fall on the metre's: the phase most
    of its later measures start at (those before a metre change). A pickup moves them by what
    it lacks of a bar; so does a first bar longer than the metre (or than 4/4 in a tune without
    one), which music21 leaves at offset 0 with every later bar line off the beat. `change_at`:
    the offset of the first metre change."""
    measures = list(part.getElementsByClass("Measure"))
    first = measures[0] if measures else None
    meter = next(iter(score.recurse().getElementsByClass("TimeSignature")), None)
    bar = float(meter.barDuration.quarterLength) if meter is not None else 4.0
    in_first_metre = [m for m in measures[1:] if float(m.offset) < change_at - 1e-9]
    starts = [round(float(m.offset) % bar, 4) for m in in_first_metre] if bar > 0 else []
    if not starts:
        return float(first.paddingLeft) if first is not None else 0.0
    phase = max(set(starts), key=lambda p: (starts.count(p), -starts.index(p)))
    return (-phase) % bar


class Unsafe(Exception):
    """XML that declares entities, or is not a MusicXML score."""


XML_ROOTS = ("score-partwise", "score-timewise")


def check_xml_tree(text: bytes) -> None:
    """The MusicXML's tree, built with defusedxml here in the limited child (a small .mxl can
    unpack to megabytes of nested elements): no entities, a score at the root."""
    import defusedxml.ElementTree as safe_et
    from defusedxml import DefusedXmlException

    try:
        root = safe_et.fromstring(
            text, forbid_dtd=False, forbid_entities=True, forbid_external=True
        )
    except DefusedXmlException as exc:
        raise Unsafe(f"{type(exc).__name__}: {exc}") from exc
    tag = root.tag.rsplit("}", 1)[-1] if isinstance(root.tag, str) else ""
    if tag not in XML_ROOTS:
        raise ValueError(f"root element <{tag}> is not a MusicXML score")


def parsed_notes(kind: str, text: bytes, max_notes: int, max_parts: int) -> dict[str, Any]:
    """music21's reading of an ABC tune or a MusicXML score, as plain values: notes as (onset,
    length, pitch, velocity) in quarter notes from the first bar line, tempo, metre, key,
    program, title."""
    from music21 import converter

    if kind == "abc":
        # parseData, never parse: parse() reads a string that names a file or a URL as that file
        score = converter.parseData(abc_fields_on_lines(text.decode("utf-8")), format="abc")
    else:
        check_xml_tree(text)
        text = partwise(text)  # music21 reads partwise only: a timewise score is turned first
        score = converter.parseData(text, format="musicxml")
    if hasattr(score, "scores") and len(score.scores):  # an Opus: its first score
        score = score.scores[0]
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    if len(parts) > max_parts:
        raise TooLarge(f"{len(parts)} parts", f"{max_parts} parts")
    notes: list[tuple[float, float, int, int]] = []
    program = None
    metres: list[list[float]] = []
    keys: list[list[float]] = []
    declared = abc_metres(text.decode("utf-8")) if kind == "abc" else None
    for index, part in enumerate(parts):
        part = part.stripTies()
        written = written_metres(part, declared)  # the first part's stand for the score's
        change_at = written[1][0] if len(written) > 1 else float("inf")
        pickup = downbeat_shift(part, score, change_at)  # an upbeat, or an irregular first bar
        if index == 0:
            metres = [[b + pickup if b > 0 else 0.0, n, d] for b, n, d in written]
            keys = _keys(part, pickup)
        if program is None:
            inst = part.getInstrument(returnDefault=False)
            program = getattr(inst, "midiProgram", None) if inst is not None else None
        for n in part.flatten().notes:
            length = float(n.quarterLength)
            if length <= 0 or not hasattr(n, "pitches"):
                continue  # grace notes
            velocity = n.volume.velocity or 80
            for p in n.pitches:
                notes.append((float(n.offset) + pickup, length, int(p.midi), int(velocity)))
            if len(notes) > max_notes:
                raise TooLarge(f"over {max_notes:,} notes", f"{max_notes:,} notes")
    tempo = next(iter(score.recurse().getElementsByClass("MetronomeMark")), None)
    meter = next(iter(score.recurse().getElementsByClass("TimeSignature")), None)
    key = next(iter(score.recurse().getElementsByClass("KeySignature")), None)
    title = score.metadata.title if score.metadata is not None else None
    return {
        "notes": notes,
        "tempo": float(tempo.getQuarterBPM()) if tempo is not None else None,
        "meter": [int(meter.numerator), int(meter.denominator)] if meter is not None else None,
        "fifths": int(key.sharps) if key is not None else None,
        "minor": key is not None and getattr(key, "mode", "major") == "minor",
        "meters": metres,  # [beat, numerator, denominator] where each starts, in time order
        "keys": keys,  # [beat, fifths, 1 if minor else 0] likewise
        "program": program if isinstance(program, int) else None,
        "title": str(title or ""),
    }


def _keys(part: Any, pickup: float) -> list[list[float]]:
    """A part's key signatures where each starts, [beat, fifths, 1 if minor], in beats of the
    notes' timeline (one at 0 stays there: a pickup moves the notes after it, not the opening
    key)."""
    keys = []
    for ks in part.flatten().getElementsByClass("KeySignature"):
        beat = float(ks.offset) + pickup if float(ks.offset) > 0 else 0.0
        keys.append([beat, int(ks.sharps), int(getattr(ks, "mode", "major") == "minor")])
    return keys


def written_metres(
    part: Any, declared: list[tuple[int, int]] | None
) -> list[tuple[float, int, int]]:
    """The part's time signatures as (offset, numerator, denominator), in order. In ABC only
    those the tune writes (`declared`: its M: fields in order): music21 adds its own around a
    bar of the wrong length (a 5-beat first bar in 4/4 becomes 4/4, 1/4, 4/4), and those are
    left out. None (MusicXML): all of them."""
    found = [
        (float(ts.offset), int(ts.numerator), int(ts.denominator))
        for ts in part.flatten().getElementsByClass("TimeSignature")
    ]
    if declared is None:
        return found
    if not declared:
        return []
    kept = [(0.0, *declared[0])]  # the header's holds from the start
    for metre in declared[1:]:
        later = (f for f in found if f[0] > kept[-1][0] and f[1:] == metre)
        match = next(later, None)
        if match is not None:
            kept.append(match)
    return kept


_ABC_METRE = re.compile(r"^M:[ \t]*(C\||C|\d{1,3}[ \t]*/[ \t]*\d{1,3})", re.M)


def abc_metres(tune: str) -> list[tuple[int, int]]:
    """The metres an ABC tune's M: fields write (header and body, inline ones after
    `abc_fields_on_lines`), in order: C is 4/4, C| is 2/2; M:none and compound numerators
    such as 2+3/8 are skipped (music21 reads those its own way)."""
    out = []
    for match in _ABC_METRE.finditer(abc_fields_on_lines(tune)):
        value = match[1].replace(" ", "").replace("\t", "")
        if value == "C":
            out.append((4, 4))
        elif value == "C|":
            out.append((2, 2))
        else:
            num, den = value.split("/")
            out.append((int(num), int(den)))
    return out


# An ABC field inside the tune's body: inline ([M:3/4]) or on a line of its own. music21 reads
# neither inline fields nor a lone field line between bars (it keeps only the second of two),
# so each becomes a line of its own after a harmless N: (notes) line.
_ABC_INLINE_FIELD = re.compile(r"\[([KLMQ]):([^\]\n]{0,80})\]")
_ABC_FIELD_LINE = re.compile(r"[KLMQ]:")
_ABC_COMMENT = re.compile(r"(?<!\\)%")


def abc_fields_on_lines(tune: str) -> str:
    """An ABC tune whose metre, key, length and tempo fields inside its body all reach
    music21: each on a line of its own after an N: line. The header, comments and empty lines
    (the tune's end) are left as they are."""
    head = re.search(r"^K:.*$", tune, re.M)  # the header ends with its K: field
    if head is None:
        return tune
    out: list[str] = []
    for line in tune[head.end() :].split("\n"):
        if _ABC_FIELD_LINE.match(line):
            out += ["N:motif", line]
            continue
        comment = _ABC_COMMENT.search(line)
        code = line[: comment.start()] if comment else line
        parts = _ABC_INLINE_FIELD.split(code)  # text, (field, value, text)...
        if len(parts) == 1:
            out.append(line)
            continue
        text = parts[0]
        for i in range(1, len(parts), 3):
            if text.strip():
                out.append(text)
            out += ["N:motif", f"{parts[i]}:{parts[i + 1].strip()}"]
            text = parts[i + 2]
        rest = text + (line[comment.start() :] if comment else "")
        if rest.strip():  # never an empty line: that would end the tune
            out.append(rest)
    return tune[: head.end()] + "\n".join(out)


def _child(request: dict[str, Any], text: bytes, out_fd: int) -> None:
    """In the forked child: limit memory, parse, write one JSON reply, exit."""
    try:
        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        current = 0
    limit = current + int(request["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # the parser process kills this child at the time limit; should the parser itself die
    # first, the alarm (whose default action ends the process) still does
    signal.alarm(int(float(request["timeout_s"])) + 2)
    try:
        result = parsed_notes(
            request["kind"], text, int(request["max_notes"]), int(request["max_parts"])
        )
        reply: dict[str, Any] = {"status": "ok", "result": result}
    except TooLarge as exc:
        reply = {"status": "too-large", "what": exc.what, "limit": exc.limit}
    except Unsafe as exc:
        reply = {"status": "unsafe", "detail": str(exc)[:300]}
    except MemoryError:
        reply = {"status": "too-large", "what": "more memory than a seed may use", "limit": "-"}
    except BaseException as exc:  # noqa: BLE001 - whatever the parser raises: unreadable
        reply = {"status": "error", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}
    data = json.dumps(reply).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(out_fd, view) :]


def serve_one(request: dict[str, Any], text: bytes) -> dict[str, Any]:
    """Parse in a forked child; its reply, or a timeout after killing it."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_fd)
            _child(request, text, write_fd)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + float(request["timeout_s"])
    chunks: list[bytes] = []
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                timed_out = True
                break
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if timed_out:
        return {"status": "timeout"}
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"status": "error", "detail": "the parser died (out of memory or crashed)"}


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    while True:
        line = requests.readline()
        if not line:
            return
        request = json.loads(line)
        text = requests.read(int(request["size"]))
        replies.write(json.dumps(serve_one(request, text)).encode() + b"\n")
        replies.flush()


def no_network() -> None:
    """Turn this process's sockets off: nothing a seed names is ever fetched (music21 can
    download), whatever the parser does with it."""
    import socket

    def refused(*args: object, **kwargs: object) -> Any:
        raise OSError("the notation parser has no network")

    for name in ("create_connection", "getaddrinfo", "socketpair"):
        setattr(socket, name, refused)
    socket.socket.connect = refused  # type: ignore[method-assign]
    socket.socket.connect_ex = refused  # type: ignore[method-assign]


def serve_process() -> None:
    """The process's body (not a command line: `engine.music.parsers` boots it, and so does
    `python -m`): music21 once, no network, requests on stdin, replies on stdout."""
    import defusedxml.ElementTree  # noqa: F401 - imported once, here, like music21
    import music21  # noqa: F401 - once, here: every forked child shares it

    no_network()

    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever music21 prints goes to stderr, never into the replies
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    serve_process()
