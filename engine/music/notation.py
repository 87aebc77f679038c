"""ABC and MusicXML seeds: untrusted notation in, a checked MIDI seed out.

Cheap checks run here before any parser: size, the first tune of a multi-tune ABC file, the
zip layout of .mxl, and XML that declares entities or an internal DTD is refused.
music21 then parses in another process (`engine.music.notation_parser`, which imports it once and
forks a child per parse) under a time limit and an address-space limit, so a parser stuck or
swelling on a hostile file is stopped; the processes are a small pool shared fairly between users
(`engine.music.parsers`). Its notes
become MIDI bytes that pass `load_seed` like any MIDI seed (note, duration and tempo limits).
Only `MotifError`s leave `load_notation_seed`; this process never imports music21.
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
import zipfile
from dataclasses import dataclass, field

from engine.errors import MotifError
from engine.music.metre import key_changes, metre_changes
from engine.music.midi import load_seed
from engine.music.midi_check import AbsurdTempo, SeedLimits
from engine.music.notation_terms import abc_problem, dropped_remark, no_notes
from engine.music.notes import KeyChange, Note, Piece
from engine.music.parsers import ParserBusy, ParserPool
from engine.music.result_midi import to_midi_bytes

log = logging.getLogger(__name__)

ABC_SUFFIXES = (".abc",)
MUSICXML_SUFFIXES = (".musicxml", ".xml")
MXL_SUFFIXES = (".mxl",)
NOTATION_SUFFIXES = ABC_SUFFIXES + MUSICXML_SUFFIXES + MXL_SUFFIXES


# --- errors a user can act on ------------------------------------------------------------------
class BadNotation(MotifError):
    """An ABC or MusicXML seed that cannot be used; the message says why."""


class NotationTooLarge(BadNotation):
    def __init__(self, what: str, limit: str) -> None:
        super().__init__(f"The seed is too large: {what} (the limit is {limit}).", detail=what)


class UnsafeXml(BadNotation):
    def __init__(self, detail: str) -> None:
        super().__init__(
            "This MusicXML file declares XML entities or an internal DTD, which Motif refuses "
            "for safety. Export it again from your notation program.",
            detail=detail,
        )


class UnreadableNotation(BadNotation):
    def __init__(self, kind: str, detail: str) -> None:
        hint = (
            "Check the tune's header (X:, M:, L:, K:) and its notes."
            if kind == "ABC"
            else "Export it again as uncompressed (.musicxml) or compressed (.mxl) MusicXML."
        )
        problem = abc_problem(detail) if kind == "ABC" else None  # the construct, when named
        message = (
            f"Motif could not read this ABC at {problem}."
            if problem
            else f"Motif could not read this {kind}: {hint}"
        )
        super().__init__(message, detail=detail)


class NotationTimeout(BadNotation):
    def __init__(self, kind: str, seconds: float) -> None:
        super().__init__(
            f"Reading this {kind} took longer than {seconds:g} s, so Motif stopped. "
            "Send a shorter or simpler file.",
            detail=f"{kind} parse timed out after {seconds} s",
        )


@dataclass(frozen=True)
class NotationLimits:
    max_bytes: int = SeedLimits().max_bytes  # the file as sent (.mxl compressed)
    max_xml_bytes: int = 4 * 1024 * 1024  # MusicXML once unzipped
    max_abc_tune_chars: int = 64 * 1024  # the one ABC tune that is parsed
    max_zip_entries: int = 32
    max_parts: int = SeedLimits().max_tracks
    max_notes: int = SeedLimits().max_notes
    parse_timeout_s: float = 10.0
    parse_memory_bytes: int = 768 * 1024 * 1024  # address space the parser may add
    midi: SeedLimits = field(default_factory=SeedLimits)


@dataclass(frozen=True)
class NotationSeed:
    """A notation seed as Motif stores it: MIDI bytes, the piece, and what to tell the user."""

    midi: bytes
    piece: Piece
    title: str
    remarks: tuple[str, ...] = ()


def is_notation_name(filename: str) -> bool:
    return filename.lower().endswith(NOTATION_SUFFIXES)


def notation_kind(filename: str) -> str | None:
    """ "abc", "musicxml" or "mxl" by the file name; None for anything else."""
    name = filename.lower()
    if name.endswith(ABC_SUFFIXES):
        return "abc"
    if name.endswith(MXL_SUFFIXES):
        return "mxl"
    if name.endswith(MUSICXML_SUFFIXES):
        return "musicxml"
    return None


# --- the cheap checks, in this process ---------------------------------------------------------
_TUNE_START = re.compile(r"^X:", re.M)
_KEY_FIELD = re.compile(r"^K:", re.M)


def first_abc_tune(text: str, limits: NotationLimits) -> tuple[str, int]:
    """The first tune of an ABC text (from its X: line to the next) and how many tunes there are.
    Without X: lines the whole text is one tune."""
    starts = [m.start() for m in _TUNE_START.finditer(text)]
    if not starts:
        tune, count = text, 1
    else:
        end = starts[1] if len(starts) > 1 else len(text)
        tune, count = text[starts[0] : end], len(starts)
    if not _KEY_FIELD.search(tune):
        raise UnreadableNotation("ABC", "no K: field in the first tune")
    if len(tune) > limits.max_abc_tune_chars:
        raise NotationTooLarge(
            f"a tune of {len(tune):,} characters", f"{limits.max_abc_tune_chars:,} characters"
        )
    return tune, count


_KEY_LINE = re.compile(r"(?:^|\s)K:[ \t]*(\S+)")
_FIELD_START = re.compile(r"\s(?=[A-Za-z]:)")  # one space, not a run: linear on any text
_FENCE_LANG = re.compile(r"(?:abc)?[ \t]*\n?", re.I)
PASTED_NAME = "pasted.abc"


def abc_in_code_block(text: str) -> str | None:
    """The ABC in a chat message's first code block (```abc … ``` or ``` … ```) that has a K:
    field, or None. Fences are found with str.find: a regex over unclosed fences backtracks
    (a 6,000-character option of them took 0.3 s)."""
    at = 0
    while (start := text.find("```", at)) != -1:
        end = text.find("```", start + 3)
        if end == -1:
            return None
        body = text[start + 3 : end]
        fence = _FENCE_LANG.match(body)
        body = body[fence.end() if fence else 0 :]
        if _KEY_FIELD.search(body) or _KEY_LINE.search(body):
            return body.strip()
        at = end + 3
    return None


def abc_from_chat(text: str) -> str:
    """ABC typed into chat. A slash command's text option has no line breaks, so a tune pasted
    there arrives on one line: its header fields get their lines back (the key field must be one
    word, such as K:Em, for the notes after it to start the body)."""
    text = abc_in_code_block(text) or text.strip()
    if "\n" in text:
        return text
    key = _KEY_LINE.search(text)
    if key is None:
        return text
    header = [f.strip() for f in _FIELD_START.split(text[: key.start()]) if f.strip()]
    return "\n".join([*header, f"K:{key.group(1)}", text[key.end() :].strip()]) + "\n"


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _unzip_mxl(data: bytes, limits: NotationLimits) -> bytes:
    """The score inside a compressed MusicXML file, read with its size bounded (zip bombs)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
        if len(entries) > limits.max_zip_entries:
            raise NotationTooLarge(f"{len(entries)} files inside", f"{limits.max_zip_entries}")
        names = {e.filename: e for e in entries}
        root = None
        if "META-INF/container.xml" in names:
            container = _read_member(archive, names["META-INF/container.xml"], 64 * 1024)
            match = re.search(rb'full-path="([^"]+)"', container)
            root = names.get(match.group(1).decode("utf-8", "replace")) if match else None
        if root is None:
            root = next(
                (
                    e
                    for e in entries
                    if not e.filename.startswith("META-INF/")
                    and e.filename.lower().endswith(MUSICXML_SUFFIXES)
                ),
                None,
            )
        if root is None:
            raise UnreadableNotation("MusicXML", "no score inside the .mxl")
        return _read_member(archive, root, limits.max_xml_bytes)
    except BadNotation:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise UnreadableNotation("MusicXML", f"mxl: {type(exc).__name__}: {exc}") from exc


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise NotationTooLarge(f"{info.file_size:,} bytes unzipped", f"{limit:,} bytes")
    with archive.open(info) as fh:
        body = fh.read(limit + 1)
    if len(body) > limit:  # the header lied about the size
        raise NotationTooLarge(f"over {limit:,} bytes unzipped", f"{limit:,} bytes")
    return body


_DOCTYPE = re.compile(rb"<!DOCTYPE[^>\[]*>")


def checked_xml(data: bytes, limits: NotationLimits) -> bytes:
    """MusicXML bytes that declare no entities and no internal DTD, with their DOCTYPE line
    removed (so nothing ever tries to fetch the external DTD). No tree is built here: that
    happens in the limited parser child (a small .mxl can unpack to megabytes of elements)."""
    if len(data) > limits.max_xml_bytes:
        raise NotationTooLarge(f"{len(data):,} bytes", f"{limits.max_xml_bytes:,} bytes")
    if b"<!ENTITY" in data or re.search(rb"<!DOCTYPE[^>]*\[", data):
        raise UnsafeXml("entity declaration or internal DTD subset")
    return _DOCTYPE.sub(b"", data, count=1)


# --- the parse, in a parser process -----------------------------------------------------------
PARSERS = ParserPool()


def parsed(kind: str, text: bytes, limits: NotationLimits, label: str, user: str) -> dict:
    """The parser's reading of checked text, when the fair queue reaches `user`, or the
    `BadNotation` that says why not."""
    request = {
        "kind": kind,
        "timeout_s": limits.parse_timeout_s,
        "memory_bytes": limits.parse_memory_bytes,
        "max_notes": limits.max_notes,
        "max_parts": limits.max_parts,
    }
    reply = PARSERS.parse(user, request, text, limits.parse_timeout_s)
    status = reply.get("status")
    if status == "ok":
        return dict(reply["result"])
    if status == "timeout":
        raise NotationTimeout(label, limits.parse_timeout_s)
    if status == "too-large":
        raise NotationTooLarge(reply["what"], reply["limit"])
    if status == "unsafe":
        raise UnsafeXml(str(reply.get("detail", "")))
    raise UnreadableNotation(label, str(reply.get("detail", status))[:500])


# --- the front door ----------------------------------------------------------------------------
def load_notation_seed(
    data: bytes,
    filename: str,
    limits: NotationLimits = NotationLimits(),  # noqa: B008
    *,
    user: str | None = None,
) -> NotationSeed:
    """An ABC (.abc) or MusicXML (.musicxml, .xml, .mxl) seed as a checked MIDI seed, or a
    `MotifError` whose message says what is wrong. `user` is whose turn it is in the parsers'
    fair queue; a seed that fails after the parse is charged to their budget. None (tools and
    tests, never a request): a turn of its own and no budget."""
    kind = notation_kind(filename)
    if kind is None:
        raise BadNotation(f"`{filename}` is not an ABC or MusicXML file.")
    label = "ABC" if kind == "abc" else "MusicXML"
    if len(data) > limits.max_bytes:
        raise NotationTooLarge(f"{len(data):,} bytes", f"{limits.max_bytes:,} bytes")
    remarks: list[str] = []
    if user is not None:
        PARSERS.check_budget(user)
    started = None
    try:
        if kind == "abc":
            tune, count = first_abc_tune(_decode(bytes(data)), limits)
            if count > 1:
                remarks.append(f"The ABC held {count} tunes; Motif continued the first one.")
            text = tune.encode("utf-8")
        else:
            xml = _unzip_mxl(bytes(data), limits) if kind == "mxl" else bytes(data)
            text = checked_xml(xml, limits)
        started = time.monotonic()
        reading = parsed(kind, text, limits, label, user or "")
        if not reading["notes"]:  # (not "send a MIDI file": the seed is notation)
            raise BadNotation(no_notes(label))
        if dropped := dropped_remark(kind, text):
            remarks.append(dropped)
        piece = _piece(reading, filename, limits, remarks)
        midi = to_midi_bytes(piece)
        seed = load_seed(midi, limits.midi, name=filename)  # the MIDI limits, the same rules
    except ParserBusy:
        raise  # nothing was parsed: not the seed's fault
    except Exception as exc:
        if started is not None and user is not None:  # parser time spent on a useless seed
            PARSERS.charge_failure(user, time.monotonic() - started)
        if isinstance(exc, MotifError):
            raise
        # never let a surprise from hostile bytes escape as a crash
        log.warning("unexpected error reading a %s seed: %r", label, exc)
        raise UnreadableNotation(label, f"{type(exc).__name__}: {exc}") from exc
    return NotationSeed(midi=midi, piece=seed, title=reading["title"], remarks=tuple(remarks))


def _piece(parsed: dict, name: str, limits: NotationLimits, remarks: list[str]) -> Piece:
    notes = tuple(
        sorted(
            (
                Note(start=s, duration=d, pitch=min(127, max(0, p)), velocity=min(127, max(1, v)))
                for s, d, p, v in parsed["notes"]
                if math.isfinite(s) and math.isfinite(d) and s >= 0
            ),
            key=lambda n: (n.start, n.pitch),
        )
    )
    tempo = parsed["tempo"] or 120.0
    if not math.isfinite(tempo) or not limits.midi.min_tempo <= tempo <= limits.midi.max_tempo:
        raise AbsurdTempo(tempo, limits.midi.min_tempo, limits.midi.max_tempo)
    end = max((n.end for n in notes), default=0.0)
    raw_metres = [(float(b), int(n), int(d)) for b, n, d in parsed.get("meters") or []]
    if not raw_metres and parsed["meter"]:
        raw_metres = [(0.0, int(parsed["meter"][0]), int(parsed["meter"][-1]))]
    metres, (num, den), clamped = metre_changes(raw_metres, 0.0, end)
    for metre in dict.fromkeys(clamped):
        remarks.append(
            f"The seed's metre {metre[0]}/{metre[-1]} is beyond what a score writes (a "
            "sixteenth-note beat at the shortest), so Motif read it in 4/4."
        )
    raw_keys = parsed.get("keys") or (
        [[0.0, parsed["fifths"], int(bool(parsed["minor"]))]]
        if parsed["fifths"] is not None
        else []
    )
    keys, first_key = key_changes(
        [_key(float(b), int(f), bool(m)) for b, f, m in raw_keys if -7 <= int(f) <= 7], 0.0, end
    )
    meta = {}
    if first_key is not None:
        meta["key"] = f"{first_key[0]} {first_key[1]}"
    program = parsed["program"]
    return Piece(
        notes=notes,
        tempo_bpm=float(tempo),
        time_signature=(num, den),
        program=int(program) if isinstance(program, int) and 0 <= program <= 127 else 0,
        name=name,
        meta=meta,
        metre_changes=metres,
        key_changes=keys,
    )


def _key(beat: float, fifths: int, minor: bool) -> KeyChange:
    """A key signature (sharps, mode) as a key change (tonic pitch class, mode)."""
    major = 7 * fifths % 12
    return (beat, (major + 9) % 12, "minor") if minor else (beat, major, "major")
