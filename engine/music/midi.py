"""MIDI seeds in: untrusted bytes become a `Piece`.

Seeds come from strangers, so the header and chunk layout are checked by hand before a parser
sees them (engine.music.midi_check), limits are enforced, and only `BadMidi` subclasses ever
leave `load_seed`. The result's file is engine.music.result_midi. No torch here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from symusic import Score

from engine.errors import BadMidi
from engine.music.metre import bar_index, bars, key_changes, metre_changes
from engine.music.midi_check import (
    AbsurdTempo,
    CorruptMidi,
    DrumOnlyMidi,
    EmptyMidi,
    FromBarOutsideFile,
    SeedLimits,
    ZeroLengthMidi,
    checked_smf,
)
from engine.music.notes import KeyChange, MetreChange, Note, Piece

log = logging.getLogger(__name__)

MIN_NOTE_BEATS = 1 / 16  # a note-on with its note-off at the same tick still gets to sound
DEFAULT_TEMPO_BPM = 120.0
DEFAULT_TIME_SIGNATURE = (4, 4)


def _parse_score(smf: bytes) -> Score:
    try:
        return Score.from_midi(smf)
    except Exception as exc:  # the parser's own errors are RuntimeError, ValueError, ...
        raise CorruptMidi(f"parser: {type(exc).__name__}: {exc}") from exc


def _time_signatures(score, tpq: int) -> list[tuple[float, int, int]]:
    """The file's time signatures as (beat, numerator, denominator), in time order (unreadable
    ones left out)."""
    found = []
    for ts in sorted(score.time_signatures, key=lambda t: t.time):
        num, den = int(ts.numerator), int(ts.denominator)
        if num >= 1 and den >= 1:
            found.append((max(0, int(ts.time)) / tpq, num, den))
    return found


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
    tempos, tempo_bpm = _checked_tempos(score, limits)
    raw, cropped = _cropped_notes(score, pitched, limits, tpq, tempos)
    signatures = _time_signatures(score, tpq)
    file_end = max(t + d for t, d, _, _ in raw) / tpq
    metres, metre, clamped = metre_changes(signatures, 0.0, file_end)
    metres = metres or ((0.0, *metre),)
    if from_bar is not None:  # the bars before `from_bar` (counted from 1) are the seed
        raw = _before_bar(raw, from_bar, tpq, metres)
    if all(d == 0 for _, d, _, _ in raw):
        raise ZeroLengthMidi()
    raw = raw[-limits.max_seed_notes :]
    # Drop whole empty bars before the first kept note, so bar positions stay where they were.
    end = max(t + d for t, d, _, _ in raw) / tpq
    grid = bars(metres, end)
    offset = grid[bar_index(grid, raw[0][0] / tpq)].start
    notes = tuple(
        Note(
            start=t / tpq - offset,
            duration=max(d / tpq, MIN_NOTE_BEATS),
            pitch=min(127, max(0, int(p))),
            velocity=min(127, max(1, int(v))),
        )
        for t, d, p, v in raw
    )
    metres, time_signature, _ = metre_changes(signatures, offset, end)
    keys, key = key_changes(_key_signatures(score, tpq), offset, end)
    program = max(pitched, key=lambda t: len(t.notes)).program
    meta = {"source_notes": str(len(raw)), "tracks": str(len(pitched))}
    if key is not None:
        meta["key"] = f"{key[0]} {key[1]}"
    if cropped:
        meta["cropped"] = " and ".join(cropped)
    if drum_notes:
        meta["drum_notes"] = str(drum_notes)
    if from_bar is not None:
        meta["from_bar"] = str(from_bar)
    if clamped:
        meta["metre"] = "/".join(map(str, clamped[0]))
    return Piece(
        notes=notes,
        tempo_bpm=float(tempo_bpm),
        time_signature=time_signature,
        program=min(127, max(0, int(program))),
        name=name,
        meta=meta,
        metre_changes=metres,
        key_changes=keys,
    )


def _checked_tempos(score, limits: SeedLimits) -> tuple[list, float]:
    """The file's tempo changes in time order, each within the limits, and the first in BPM."""
    tempos = sorted(score.tempos, key=lambda t: t.time)
    for tempo in tempos:
        bpm = 60_000_000 / tempo.mspq if tempo.mspq > 0 else math.inf
        if not limits.min_tempo <= bpm <= limits.max_tempo:
            raise AbsurdTempo(bpm, limits.min_tempo, limits.max_tempo)
    return tempos, round(60_000_000 / tempos[0].mspq, 2) if tempos else DEFAULT_TEMPO_BPM


def _cropped_notes(
    score, pitched: list, limits: SeedLimits, tpq: int, tempos: list
) -> tuple[list[tuple[int, int, int, int]], list[str]]:
    """The pitched notes as (tick, duration, pitch, velocity) in time order, an over-long file
    cropped to its opening (the seed is what comes before a cut anyway), and how it was cropped."""
    end_tick = 0
    for track in score.tracks:
        for n in track.notes:
            if n.time < 0 or n.duration < 0:
                raise CorruptMidi("negative note time (overflowing delta times)")
            end_tick = max(end_tick, n.time + n.duration)
    raw = [(n.time, n.duration, n.pitch, n.velocity) for t in pitched for n in t.notes]
    raw.sort(key=lambda r: (r[0], r[2]))
    cropped = []
    seconds = _ticks_to_seconds(end_tick, tpq, tempos)
    if seconds > limits.max_duration_s:
        cut = _tick_at_seconds(limits.max_duration_s, tpq, tempos)
        raw = [(t, min(d, cut - t), p, v) for t, d, p, v in raw if t < cut]
        cropped.append(f"its first {limits.max_duration_s / 60:g} minutes of {seconds / 60:.0f}")
    total_notes = sum(len(t.notes) for t in score.tracks)
    if total_notes > limits.max_notes and len(raw) > limits.max_notes:
        raw = raw[: limits.max_notes]
        cropped.append(f"its first {limits.max_notes:,} notes of {total_notes:,}")
    return raw, cropped


def _before_bar(
    raw: list[tuple[int, int, int, int]],
    from_bar: int,
    tpq: int,
    metres: tuple[MetreChange, ...],
) -> list[tuple[int, int, int, int]]:
    """The notes before bar `from_bar` (counted from 1), the last ones cut at its start."""
    grid = bars(metres, max(t + d for t, d, _, _ in raw) / tpq - 1e-9)
    last_bar = len(grid)
    if not 2 <= from_bar <= last_bar + 1:
        raise FromBarOutsideFile(from_bar, last_bar)
    cut_beat = (
        grid[from_bar - 1].start if from_bar <= last_bar else grid[-1].start + grid[-1].length
    )
    cut = round(cut_beat * tpq)
    raw = [(t, min(d, cut - t), p, v) for t, d, p, v in raw if t < cut]
    if not raw:
        raise FromBarOutsideFile(from_bar, last_bar)
    return raw


def _key_signatures(score, tpq: int) -> list[KeyChange]:
    """The file's key signatures as (beat, tonic pitch class, mode), in time order."""
    found: list[KeyChange] = []
    for ks in sorted(score.key_signatures, key=lambda k: k.time):
        if -7 <= int(ks.key) <= 7 and int(ks.tonality) in (0, 1):
            major_tonic = 7 * int(ks.key) % 12
            tonic, mode = (
                ((major_tonic + 9) % 12, "minor") if ks.tonality else (major_tonic, "major")
            )
            found.append((max(0, int(ks.time)) / tpq, tonic, mode))
    return found


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
    if piece.meta.get("metre"):
        notices["metre_clamped"] = (
            f"The seed's metre {piece.meta['metre']} is beyond what a score writes (a "
            "sixteenth-note beat at the shortest), so Motif read it in 4/4."
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

    Non-drum tracks merge into one polyphonic piece (program of the busiest track); the tempo is
    the first one (120 BPM without); the time signature is the one in force at the seed's end
    (4/4 without), and a seed whose metre or key signature changes lists them
    (`Piece.metre_changes`, `key_changes`); times are in quarter-note beats.
    A file longer than the duration or note limits is cropped to its opening (meta["cropped"]
    says how); drums are left out (meta["drum_notes"] counts them). `from_bar` (2 or more): only
    the bars before it are the seed (the file's bars, across its metre changes); None: the whole
    file.
    """
    try:
        smf = checked_smf(bytes(data), limits)
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
        smf = checked_smf(bytes(data), SeedLimits(max_bytes=max(len(data), 1), max_tracks=65_535))
        return sum(len(t.notes) for t in _parse_score(smf).tracks)
    except BadMidi:
        raise
    except Exception as exc:
        raise CorruptMidi(f"{type(exc).__name__}: {exc}") from exc
