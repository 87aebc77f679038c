"""A result as a MIDI file: the seed and its continuation written as two tracks, and read back."""

from __future__ import annotations

import io
from dataclasses import replace

from symusic import KeySignature, Score, Tempo, TimeSignature, Track
from symusic import Note as SymusicNote

from engine.music.metre import key_changes, key_of_meta, metre_changes, metres_of
from engine.music.notes import Note, Piece
from engine.music.spelling import key_fifths

OUTPUT_TPQ = 480


def to_midi_bytes(piece: Piece | None, continuation: Piece | None = None) -> bytes:
    """A type 1 MIDI file: track "seed" and, if given, track "continuation" (absolute beats).

    Both tracks use the seed's program; the seed's tempo is written once, its metres and keys
    where they change (the continuation is in the last). With no seed (`piece` None) the file
    holds the continuation alone, in its own metre.
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
    # the seed's metres and keys, as its file or notation changed them (the continuation is in
    # the last: its bar lines follow on from the seed's)
    for beat, num, den in metres_of(piece):
        score.time_signatures.append(TimeSignature(_tick(beat), int(num), int(den)))
    key = key_of_meta(piece)
    keys = piece.key_changes or (((0.0, *key),) if key is not None else ())
    for beat, tonic, mode in keys:  # the declared key travels with the result (the score uses it)
        score.key_signatures.append(
            KeySignature(_tick(beat), key_fifths(tonic, mode), int(mode == "minor"))
        )
    return bytes(score.dumps_midi())


def _tick(beat: float) -> int:
    return max(0, round(beat * OUTPUT_TPQ))


def split_result(midi: bytes) -> tuple[Piece | None, Piece]:
    """The seed and the continuation back from a result MIDI (tracks named by to_midi_bytes)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(io.BytesIO(midi))
    tempo = float(pm.get_tempo_changes()[1][0]) if len(pm.get_tempo_changes()[1]) else 120.0
    spb = 60.0 / tempo
    seed_end = max(
        (n.end / spb for i in pm.instruments if i.name == "seed" for n in i.notes), default=0.0
    )
    signatures = [(ts.time / spb, ts.numerator, ts.denominator) for ts in pm.time_signature_changes]
    metres, signature, _ = metre_changes(signatures, 0.0, seed_end)
    keys, _ = key_changes(
        [
            (ks.time / spb, ks.key_number % 12, "minor" if ks.key_number >= 12 else "major")
            for ks in pm.key_signature_changes
        ],
        0.0,
        seed_end,
    )

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
    if seed is not None:  # the seed's bars keep the metres and keys its file wrote
        seed = replace(seed, metre_changes=metres, key_changes=keys)
    conts = [i for i in pm.instruments if i.name != "seed"]
    cont = piece(conts[0]) if conts else Piece((), tempo_bpm=tempo, time_signature=signature)
    return seed, cont
