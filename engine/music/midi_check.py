"""Untrusted MIDI bytes checked by hand before a parser sees them: the limits, the errors a user
can act on, and the standard file rebuilt from checked chunks."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from engine.errors import BadMidi
from engine.music import catalog


class _Refusal(BadMidi):
    """A refusal whose message is fixed; `detail` (for the log) says what was found."""

    message = ""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(self.message, detail=detail)


class EmptyMidi(_Refusal):
    message = "The file has no notes. Send a MIDI file with a melody in it."


class DrumOnlyMidi(_Refusal):
    message = (
        "The file has only drum notes (MIDI channel 10). Motif needs pitched notes: "
        "send a melody on any other channel."
    )


class CorruptMidi(_Refusal):
    message = (
        "This file is not a valid MIDI file (it may be damaged or truncated). "
        "Export it again as a standard .mid file."
    )


class UnsupportedMidiType(BadMidi):
    def __init__(self, what: str = "MIDI type 2 (independent patterns)") -> None:
        super().__init__(
            f"This file uses {what}, which Motif does not support. "
            "Export it as a type 0 or type 1 MIDI file.",
            detail=what,
        )


class ZeroLengthMidi(_Refusal):
    message = (
        "Every note in the file has zero length (it ends the moment it starts), "
        "so there is nothing to continue."
    )


class AbsurdTempo(BadMidi):
    def __init__(self, bpm: float, low: float, high: float) -> None:
        shown = "infinite" if not math.isfinite(bpm) else f"{bpm:g}"
        super().__init__(
            f"The file sets a tempo of {shown} BPM; Motif accepts {low:g} to {high:g} BPM.",
            detail=f"tempo {bpm!r} outside [{low}, {high}]",
        )


class MidiTooLarge(BadMidi):
    def __init__(self, what: str, limit: str) -> None:
        super().__init__(f"The file is too large: {what} (the limit is {limit}).", detail=what)


class FromBarOutsideFile(BadMidi):
    def __init__(self, from_bar: int, last_bar: int) -> None:
        super().__init__(
            f"from_bar is {from_bar}, but the file's notes fill bars 1 to {last_bar}: pick a bar "
            f"from 2 to {last_bar + 1} (the bars before it are the seed), or leave it out to "
            "continue from the end.",
            detail=f"from_bar {from_bar} outside 2..{last_bar + 1}",
        )


@dataclass(frozen=True)
class SeedLimits:
    max_bytes: int = 1_048_576
    max_tracks: int = 64
    max_notes: int = 20_000
    max_duration_s: float = 1200.0
    min_tempo: float = catalog.SEED_MIN_TEMPO
    max_tempo: float = catalog.SEED_MAX_TEMPO
    max_seed_notes: int = 512  # a longer seed keeps its last notes: they are what gets continued


def _unwrap_riff(data: bytes) -> bytes:
    """RIFF MIDI (.rmi) wraps a standard file in a `data` chunk."""
    if len(data) < 12 or data[8:12] != b"RMID":
        raise CorruptMidi("RIFF file that is not RMID")
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"data":
            return data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    raise CorruptMidi("RIFF MIDI without a data chunk")


def checked_smf(data: bytes, limits: SeedLimits) -> bytes:
    """A standard MIDI file rebuilt from the data's header and MTrk chunks, after checking both.

    The rebuilt file has a 6-byte header whose track count matches its chunks, and no foreign
    chunks, so the parser never meets a layout the header lies about.
    """
    if len(data) > limits.max_bytes:
        raise MidiTooLarge(f"{len(data):,} bytes", f"{limits.max_bytes:,} bytes")
    if data[:4] == b"RIFF":
        data = _unwrap_riff(data)
    if len(data) < 14 or data[:4] != b"MThd":
        raise CorruptMidi("no MThd header")
    header_len = struct.unpack(">I", data[4:8])[0]
    if header_len < 6 or 8 + header_len > len(data):
        raise CorruptMidi(f"bad header length {header_len}")
    fmt, ntracks, division = struct.unpack(">HHH", data[8:14])
    if fmt == 2:
        raise UnsupportedMidiType()
    if fmt > 2:
        raise CorruptMidi(f"unknown MIDI format {fmt}")
    if division & 0x8000:
        raise UnsupportedMidiType("SMPTE time code instead of beats")
    if division == 0:
        raise CorruptMidi("zero ticks per quarter note")
    if ntracks > limits.max_tracks:
        raise MidiTooLarge(f"{ntracks} tracks", f"{limits.max_tracks} tracks")

    tracks: list[bytes] = []
    pos = 8 + header_len
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        size = struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"MTrk":
            if len(body) != size:
                raise CorruptMidi(f"track chunk claims {size} bytes, {len(body)} left")
            tracks.append(body)
            if len(tracks) > limits.max_tracks:
                raise MidiTooLarge(
                    f"more than {limits.max_tracks} tracks", f"{limits.max_tracks} tracks"
                )
        elif tracks and (len(body) != size or not (cid.isascii() and cid.isalnum())):
            break  # junk after the tracks, as some writers leave: ignore it
        elif len(body) != size or not (cid.isascii() and cid.isalnum()):
            raise CorruptMidi(f"unreadable chunk {cid!r} before any track")
        pos += 8 + size
    if not tracks:
        raise EmptyMidi("no MTrk chunk")
    if fmt == 0 and len(tracks) != 1:
        fmt = 1  # some writers say type 0 and write several tracks; read them as type 1
    out = [b"MThd", struct.pack(">IHHH", 6, fmt, len(tracks), division)]
    for body in tracks:
        out += [b"MTrk", struct.pack(">I", len(body)), body]
    return b"".join(out)
