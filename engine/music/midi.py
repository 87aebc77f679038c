"""MIDI bytes in and out: untrusted seeds become a `Piece`, a seed and its continuation a file.

Seeds come from strangers, so the header and chunk layout are checked by hand before a parser
sees them, limits are enforced, and only `BadMidi` subclasses ever leave `load_seed`.
No torch here.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from symusic import KeySignature, Score, Tempo, TimeSignature, Track
from symusic import Note as SymusicNote

from engine.errors import BadMidi
from engine.music import catalog
from engine.music.musicxml import key_fifths
from engine.music.notes import Note, Piece

log = logging.getLogger(__name__)

OUTPUT_TPQ = 480
MIN_NOTE_BEATS = 1 / 16  # a note-on with its note-off at the same tick still gets to sound
DEFAULT_TEMPO_BPM = 120.0
DEFAULT_TIME_SIGNATURE = (4, 4)


# --- errors a user can act on --------------------------------------------------------------------
class EmptyMidi(BadMidi):
    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            "The file has no notes. Send a MIDI file with a melody in it.", detail=detail
        )


class DrumOnlyMidi(BadMidi):
    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            "The file has only drum notes (MIDI channel 10). Motif needs pitched notes: "
            "send a melody on any other channel.",
            detail=detail,
        )


class CorruptMidi(BadMidi):
    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            "This file is not a valid MIDI file (it may be damaged or truncated). "
            "Export it again as a standard .mid file.",
            detail=detail,
        )


class UnsupportedMidiType(BadMidi):
    def __init__(self, what: str = "MIDI type 2 (independent patterns)") -> None:
        super().__init__(
            f"This file uses {what}, which Motif does not support. "
            "Export it as a type 0 or type 1 MIDI file.",
            detail=what,
        )


class ZeroLengthMidi(BadMidi):
    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            "Every note in the file has zero length (it ends the moment it starts), "
            "so there is nothing to continue.",
            detail=detail,
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


# --- the hand check before any parser --------------------------------------------------------
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


def _checked_smf(data: bytes, limits: SeedLimits) -> bytes:
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


# --- reading ---------------------------------------------------------------------------------
def _parse_score(smf: bytes) -> Score:
    try:
        return Score.from_midi(smf)
    except Exception as exc:  # the parser's own errors are RuntimeError, ValueError, ...
        raise CorruptMidi(f"parser: {type(exc).__name__}: {exc}") from exc


def _time_signature(score) -> tuple[int, int]:
    for ts in sorted(score.time_signatures, key=lambda t: t.time):
        num, den = int(ts.numerator), int(ts.denominator)
        if 1 <= num <= 32 and den in (1, 2, 4, 8, 16, 32, 64):
            return (num, den)
        break
    return DEFAULT_TIME_SIGNATURE


def _tick_at_seconds(seconds: float, tpq: int, tempos) -> int:
    """The tick reached after `seconds` (the inverse of `_ticks_to_seconds`)."""
    elapsed, last_tick, mspq = 0.0, 0, 500_000
    for tempo in tempos:
        step = (max(0, tempo.time) - last_tick) * mspq / 1e6 / tpq
        if elapsed + step >= seconds:
            break
        elapsed += step
        last_tick, mspq = max(0, tempo.time), tempo.mspq
    return last_tick + int((seconds - elapsed) * 1e6 * tpq / mspq)


def _piece_from_score(score, limits: SeedLimits, name: str, from_bar: int | None = None) -> Piece:
    tpq = int(score.ticks_per_quarter)
    total_notes = sum(len(t.notes) for t in score.tracks)
    pitched = [t for t in score.tracks if not t.is_drum and len(t.notes)]
    drum_notes = sum(len(t.notes) for t in score.tracks if t.is_drum)
    if total_notes == 0:
        raise EmptyMidi()
    if not pitched:
        raise DrumOnlyMidi()

    tempos = sorted(score.tempos, key=lambda t: t.time)
    for tempo in tempos:
        bpm = 60_000_000 / tempo.mspq if tempo.mspq > 0 else math.inf
        if not limits.min_tempo <= bpm <= limits.max_tempo:
            raise AbsurdTempo(bpm, limits.min_tempo, limits.max_tempo)
    tempo_bpm = round(60_000_000 / tempos[0].mspq, 2) if tempos else DEFAULT_TEMPO_BPM

    end_tick = 0
    for track in score.tracks:
        for n in track.notes:
            if n.time < 0 or n.duration < 0:
                raise CorruptMidi("negative note time (overflowing delta times)")
            end_tick = max(end_tick, n.time + n.duration)

    raw = [(n.time, n.duration, n.pitch, n.velocity) for t in pitched for n in t.notes]
    raw.sort(key=lambda r: (r[0], r[2]))
    # An over-long file is cropped to its opening (the seed is what comes before a cut anyway).
    cropped = []
    seconds = _ticks_to_seconds(end_tick, tpq, tempos)
    if seconds > limits.max_duration_s:
        cut = _tick_at_seconds(limits.max_duration_s, tpq, tempos)
        raw = [(t, min(d, cut - t), p, v) for t, d, p, v in raw if t < cut]
        cropped.append(f"its first {limits.max_duration_s / 60:g} minutes of {seconds / 60:.0f}")
    if total_notes > limits.max_notes and len(raw) > limits.max_notes:
        raw = raw[: limits.max_notes]
        cropped.append(f"its first {limits.max_notes:,} notes of {total_notes:,}")
    time_signature = _time_signature(score)
    bar_beats = time_signature[0] * 4 / time_signature[1]
    if from_bar is not None:  # the bars before `from_bar` (counted from 1) are the seed
        last_bar = max(1, math.ceil(max(t + d for t, d, _, _ in raw) / tpq / bar_beats - 1e-9))
        if not 2 <= from_bar <= last_bar + 1:
            raise FromBarOutsideFile(from_bar, last_bar)
        cut = round((from_bar - 1) * bar_beats * tpq)
        raw = [(t, min(d, cut - t), p, v) for t, d, p, v in raw if t < cut]
        if not raw:
            raise FromBarOutsideFile(from_bar, last_bar)
    if all(d == 0 for _, d, _, _ in raw):
        raise ZeroLengthMidi()
    raw = raw[-limits.max_seed_notes :]
    # Drop whole empty bars before the first kept note, so bar positions stay where they were.
    first_beat = raw[0][0] / tpq
    offset = math.floor(first_beat / bar_beats + 1e-9) * bar_beats
    notes = tuple(
        Note(
            start=t / tpq - offset,
            duration=max(d / tpq, MIN_NOTE_BEATS),
            pitch=min(127, max(0, int(p))),
            velocity=min(127, max(1, int(v))),
        )
        for t, d, p, v in raw
    )
    program = max(pitched, key=lambda t: len(t.notes)).program
    meta = {"source_notes": str(len(raw)), "tracks": str(len(pitched))}
    key = _key_signature(score)
    if key is not None:
        meta["key"] = f"{key[0]} {key[1]}"
    if cropped:
        meta["cropped"] = " and ".join(cropped)
    if drum_notes:
        meta["drum_notes"] = str(drum_notes)
    if from_bar is not None:
        meta["from_bar"] = str(from_bar)
    return Piece(
        notes=notes,
        tempo_bpm=float(tempo_bpm),
        time_signature=time_signature,
        program=min(127, max(0, int(program))),
        name=name,
        meta=meta,
    )


def _key_signature(score) -> tuple[int, str] | None:
    """The first key signature as (tonic pitch class, "major" | "minor"), if the file has one."""
    for ks in sorted(score.key_signatures, key=lambda k: k.time):
        if -7 <= int(ks.key) <= 7 and int(ks.tonality) in (0, 1):
            major_tonic = 7 * int(ks.key) % 12
            return ((major_tonic + 9) % 12, "minor") if ks.tonality else (major_tonic, "major")
        break
    return None


def declared_key(data: bytes) -> tuple[int, str] | None:
    """The first key signature of a (trusted, already checked) MIDI file, if it has one."""
    try:
        return _key_signature(Score.from_midi(bytes(data)))
    except Exception:  # noqa: BLE001 - no readable key signature: the caller estimates one
        return None


def key_of_meta(piece: Piece) -> tuple[int, str] | None:
    """The key a piece's meta declares (from a key signature in its file), if any."""
    tonic, _, mode = piece.meta.get("key", "").partition(" ")
    if tonic.isdigit() and int(tonic) < 12 and mode in ("major", "minor"):
        return int(tonic), mode
    return None


def seed_notices(piece: Piece) -> dict[str, str]:
    """What a reply should tell the user about how their file became the seed: cropped to its
    opening, drums left out, the bar the continuation starts from (empty when none applies)."""
    notices = {}
    if piece.meta.get("cropped"):
        notices["seed_cropped"] = f"The file was too long, so the seed is {piece.meta['cropped']}."
    if piece.meta.get("drum_notes"):
        count = int(piece.meta["drum_notes"])
        notices["drums_left_out"] = (
            f"The drums ({count:,} notes) were left out of the seed: Motif continues pitched parts."
        )
    if piece.meta.get("from_bar"):
        bar = int(piece.meta["from_bar"])
        notices["from_bar"] = f"The seed is bars 1-{bar - 1}; the continuation starts at bar {bar}."
    return notices


def _ticks_to_seconds(tick: int, tpq: int, tempos) -> float:
    seconds, last_tick, mspq = 0.0, 0, 500_000
    for tempo in tempos:
        if tempo.time >= tick:
            break
        seconds += (max(0, tempo.time) - last_tick) * mspq / 1e6 / tpq
        last_tick, mspq = max(0, tempo.time), tempo.mspq
    return seconds + (tick - last_tick) * mspq / 1e6 / tpq


def load_seed(
    data: bytes,
    limits: SeedLimits = SeedLimits(),  # noqa: B008
    *,
    name: str = "",
    from_bar: int | None = None,
) -> Piece:
    """The seed melody in untrusted MIDI bytes, or a `BadMidi` whose message says what is wrong.

    Non-drum tracks merge into one polyphonic piece (program of the busiest track); tempo and time
    signature are the first ones (120 BPM and 4/4 without); times are in quarter-note beats.
    A file longer than the duration or note limits is cropped to its opening (meta["cropped"]
    says how); drums are left out (meta["drum_notes"] counts them). `from_bar` (2 or more): only
    the bars before it are the seed (bars of the first time signature); None: the whole file.
    """
    try:
        smf = _checked_smf(bytes(data), limits)
        return _piece_from_score(_parse_score(smf), limits, name, from_bar)
    except BadMidi:
        raise
    except Exception as exc:  # never let a surprise from hostile bytes escape as a crash
        log.warning("unexpected error reading a seed: %r", exc)
        raise CorruptMidi(f"{type(exc).__name__}: {exc}") from exc


def piece_from_midi_file(path: str | Path, *, limits: SeedLimits | None = None) -> Piece:
    """A trusted MIDI file on disk as a piece (generous limits; the whole file is kept)."""
    path = Path(path)
    data = path.read_bytes()
    if limits is None:
        limits = SeedLimits(
            max_bytes=max(len(data), 1),
            max_tracks=65_535,
            max_notes=10_000_000,
            max_duration_s=math.inf,
            min_tempo=1.0,
            max_tempo=2000.0,
            max_seed_notes=10_000_000,
        )
    return load_seed(data, limits, name=path.stem)


def midi_note_count(data: bytes) -> int:
    """How many notes (drums included) a MIDI file holds; `BadMidi` if it cannot be read."""
    try:
        smf = _checked_smf(bytes(data), SeedLimits(max_bytes=max(len(data), 1), max_tracks=65_535))
        return sum(len(t.notes) for t in _parse_score(smf).tracks)
    except BadMidi:
        raise
    except Exception as exc:
        raise CorruptMidi(f"{type(exc).__name__}: {exc}") from exc


# --- writing ---------------------------------------------------------------------------------
def to_midi_bytes(piece: Piece | None, continuation: Piece | None = None) -> bytes:
    """A type 1 MIDI file: track "seed" and, if given, track "continuation" (absolute beats).

    Both tracks use the seed's program; the seed's tempo and time signature are written once.
    With no seed (`piece` None) the file holds the continuation alone, in its own metre.
    """
    parts = [("seed", piece)] if piece is not None else []
    parts += [("continuation", continuation)] if continuation is not None else []
    if not parts:
        raise ValueError("to_midi_bytes needs a seed or a continuation")
    piece = parts[0][1]
    score = Score(OUTPUT_TPQ)
    program = min(127, max(0, int(piece.program)))
    for track_name, part in parts:
        track = Track(track_name, program, False)
        for n in sorted(part.notes, key=lambda n: (n.start, n.pitch)):
            start = max(0, round(n.start * OUTPUT_TPQ))
            track.notes.append(
                SymusicNote(
                    start,
                    max(1, round(n.duration * OUTPUT_TPQ)),
                    min(127, max(0, int(n.pitch))),
                    min(127, max(1, int(n.velocity))),
                )
            )
        score.tracks.append(track)
    score.tempos.append(Tempo(0, float(piece.tempo_bpm)))
    num, den = piece.time_signature
    score.time_signatures.append(TimeSignature(0, int(num), int(den)))
    key = key_of_meta(piece)
    if key is not None:  # the seed's declared key travels with the result (the score uses it)
        score.key_signatures.append(KeySignature(0, key_fifths(*key), int(key[1] == "minor")))
    return bytes(score.dumps_midi())


def split_result(midi: bytes) -> tuple[Piece | None, Piece]:
    """The seed and the continuation back from a result MIDI (tracks named by to_midi_bytes)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(io.BytesIO(midi))
    tempo = float(pm.get_tempo_changes()[1][0]) if len(pm.get_tempo_changes()[1]) else 120.0
    ts = pm.time_signature_changes[0] if pm.time_signature_changes else None
    signature = (ts.numerator, ts.denominator) if ts else (4, 4)
    spb = 60.0 / tempo

    def piece(inst) -> Piece:
        notes = tuple(
            sorted(
                (
                    Note(n.start / spb, (n.end - n.start) / spb, n.pitch, n.velocity)
                    for n in inst.notes
                ),
                key=lambda n: (n.start, n.pitch),
            )
        )
        return Piece(notes, tempo_bpm=tempo, time_signature=signature, program=inst.program)

    seed = next((piece(i) for i in pm.instruments if i.name == "seed"), None)
    conts = [i for i in pm.instruments if i.name != "seed"]
    cont = piece(conts[0]) if conts else Piece((), tempo_bpm=tempo, time_signature=signature)
    return seed, cont
