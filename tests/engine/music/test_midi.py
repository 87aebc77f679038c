from __future__ import annotations

import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import BadMidi
from engine.music.midi import load_seed, midi_note_count, piece_from_midi_file, seed_notices
from engine.music.midi_check import (
    AbsurdTempo,
    CorruptMidi,
    DrumOnlyMidi,
    EmptyMidi,
    FromBarOutsideFile,
    MidiTooLarge,
    SeedLimits,
    UnsupportedMidiType,
    ZeroLengthMidi,
)
from engine.music.notes import Note, Piece
from engine.music.result_midi import to_midi_bytes


# --- a tiny hand-written SMF builder, so every bad case is a real file ------------------------
def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def track(*events: tuple[int, bytes]) -> bytes:
    body = b"".join(vlq(dt) + ev for dt, ev in events) + b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + body


def smf(*tracks: bytes, fmt: int = 1, division: int = 480, ntracks: int | None = None) -> bytes:
    n = len(tracks) if ntracks is None else ntracks
    return b"MThd" + struct.pack(">IHHH", 6, fmt, n, division) + b"".join(tracks)


def tempo(bpm: float) -> bytes:
    return b"\xff\x51\x03" + round(60_000_000 / bpm).to_bytes(3, "big")


def note(pitch: int, ticks: int = 480, channel: int = 0, velocity: int = 90):
    return [
        (0, bytes([0x90 | channel, pitch, velocity])),
        (ticks, bytes([0x80 | channel, pitch, 0])),
    ]


def melody(pitches=(60, 62, 64, 65), channel: int = 0) -> bytes:
    return track(*[ev for p in pitches for ev in note(p, channel=channel)])


GOOD = smf(track((0, tempo(100)), (0, b"\xff\x58\x04\x03\x02\x18\x08")), melody())


def test_a_good_file_becomes_a_piece():
    piece = load_seed(GOOD, name="tune")
    assert [n.pitch for n in piece.notes] == [60, 62, 64, 65]
    assert [n.start for n in piece.notes] == [0.0, 1.0, 2.0, 3.0]
    assert all(n.duration == 1.0 and n.velocity == 90 for n in piece.notes)
    assert piece.tempo_bpm == 100.0
    assert piece.time_signature == (3, 4)
    assert piece.name == "tune"


def test_defaults_without_tempo_or_metre():
    piece = load_seed(smf(melody()))
    assert piece.tempo_bpm == 120.0 and piece.time_signature == (4, 4)


def test_tracks_merge_and_the_busiest_track_gives_the_program():
    flute = track((0, b"\xc0\x49"), *[ev for p in (72, 74, 76) for ev in note(p)])
    bass = track((0, b"\xc1\x20"), *note(36, 1440, channel=1))
    drums = track(*note(38, channel=9))
    piece = load_seed(smf(flute, bass, drums))
    assert piece.program == 73
    assert sorted(n.pitch for n in piece.notes) == [36, 72, 74, 76]
    assert piece.notes[0].start == 0.0 and {n.pitch for n in piece.notes[:2]} == {36, 72}


def test_leading_empty_bars_are_dropped_and_long_seeds_keep_their_end():
    late = smf(track((480 * 9, b"\x90\x3c\x50"), (480, b"\x80\x3c\x00")))
    assert load_seed(late).notes[0].start == 1.0  # two empty 4/4 bars dropped, beat 1 of bar 3
    many = smf(melody(pitches=[40 + i % 40 for i in range(600)]))
    piece = load_seed(many, SeedLimits(max_seed_notes=512))
    assert len(piece.notes) == 512
    assert piece.notes[-1].pitch == 40 + 599 % 40


def test_zero_length_notes_get_a_minimum_length():
    data = smf(track((0, b"\x90\x3c\x50"), (0, b"\x80\x3c\x00"), *note(62)))
    piece = load_seed(data)
    assert min(n.duration for n in piece.notes) > 0


def test_round_trip_through_to_midi_bytes():
    seed = Piece(
        (Note(0, 1, 60), Note(1, 0.5, 64, 100)), tempo_bpm=90, time_signature=(6, 8), program=73
    )
    cont = Piece((Note(1.5, 1, 67, 70), Note(2.5, 0.25, 69, 70)))
    data = to_midi_bytes(seed, cont)
    back = load_seed(data)
    assert back.tempo_bpm == 90 and back.time_signature == (6, 8) and back.program == 73
    assert [(n.start, n.duration, n.pitch, n.velocity) for n in back.notes] == [
        (n.start, n.duration, n.pitch, n.velocity) for n in seed.notes + cont.notes
    ]
    from symusic import Score

    score = Score.from_midi(data)
    assert [t.name for t in score.tracks] == ["seed", "continuation"]
    assert {t.program for t in score.tracks} == {73}
    assert load_seed(to_midi_bytes(seed)).notes == seed.notes
    assert midi_note_count(data) == 4


def test_piece_from_midi_file(tmp_path):
    path = tmp_path / "tune.mid"
    path.write_bytes(GOOD)
    piece = piece_from_midi_file(path)
    assert piece.name == "tune" and len(piece.notes) == 4


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (smf(track((0, tempo(100)))), EmptyMidi, "no notes"),
        (smf(fmt=1, ntracks=0), EmptyMidi, "no notes"),
        (smf(melody(channel=9)), DrumOnlyMidi, "pitched"),
        (b"", CorruptMidi, "not a valid MIDI"),
        (b"RIFF\x00\x00\x00\x04WAVE", CorruptMidi, "not a valid MIDI"),
        (b"ID3\x03" + bytes(100), CorruptMidi, "not a valid MIDI"),
        (GOOD[:-5], CorruptMidi, "not a valid MIDI"),
        (GOOD[:10], CorruptMidi, "not a valid MIDI"),
        (smf(melody(), fmt=7), CorruptMidi, "not a valid MIDI"),
        (smf(melody(), division=0), CorruptMidi, "not a valid MIDI"),
        (smf(melody(), melody(), fmt=2), UnsupportedMidiType, "type 0 or type 1"),
        (smf(melody(), division=0xE728), UnsupportedMidiType, "SMPTE"),
        (
            smf(
                track(
                    *[(0, b"\x90" + bytes([p, 80])) for p in (60, 64)],
                    (0, b"\x80\x3c\x00"),
                    (0, b"\x80\x40\x00"),
                )
            ),
            ZeroLengthMidi,
            "zero length",
        ),
        (smf(track((0, tempo(5))), melody()), AbsurdTempo, "20 to 400 BPM"),
        (smf(track((0, tempo(1000))), melody()), AbsurdTempo, "20 to 400 BPM"),
        (smf(track((0, b"\xff\x51\x03\x00\x00\x00")), melody()), AbsurdTempo, "infinite"),
        (GOOD + bytes(1_048_576), MidiTooLarge, "1,048,576 bytes"),
        (smf(*[melody()] * 65), MidiTooLarge, "64 tracks"),
        (smf(melody(), ntracks=200), MidiTooLarge, "64 tracks"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_bad_files_raise_typed_errors_with_clear_messages(data, error, words):
    with pytest.raises(error) as info:
        load_seed(data)
    assert isinstance(info.value, BadMidi)
    assert words in info.value.user_message


def test_trailing_junk_and_foreign_chunks_are_tolerated():
    foreign = b"XFIH" + struct.pack(">I", 4) + b"abcd"
    data = GOOD[:14] + foreign + GOOD[14:] + b"\x00\x00garbage"
    assert len(load_seed(data).notes) == 4
    riff_body = b"RMID" + b"data" + struct.pack("<I", len(GOOD)) + GOOD
    assert len(load_seed(b"RIFF" + struct.pack("<I", len(riff_body)) + riff_body).notes) == 4


def test_limits_are_configurable():
    with pytest.raises(MidiTooLarge, match="10 bytes"):
        load_seed(GOOD, SeedLimits(max_bytes=10))
    assert len(load_seed(GOOD, SeedLimits(max_notes=3)).notes) == 3


def test_over_long_files_are_cropped_to_their_opening_not_refused():
    # 20,002 64th notes (10 minutes at 120 bpm): the first 20,000 are kept
    many = load_seed(
        smf(track(*[ev for _ in range(10_001) for p in (60, 62) for ev in note(p, 30)]))
    )
    assert len(many.notes) == 512 and many.meta["cropped"] == "its first 20,000 notes of 20,002"
    # the seed ends with the 20,000th note (beat 19,999 / 16; whole empty bars, 1,216 beats,
    # are dropped before the 512 notes the seed keeps)
    assert many.notes[-1].start == pytest.approx(19_999 / 16 - 1216) and many.notes[-1].pitch == 62
    # 21 minutes at 120 bpm, a note per beat: cropped to the notes that start in 20 minutes
    long = load_seed(smf(melody(pitches=[60, 64] * 1260)))
    assert long.meta["cropped"] == "its first 20 minutes of 21"
    assert long.end_beat - long.notes[0].start <= 512 and long.notes[-1].start < 2400
    one = load_seed(smf(track((0, b"\x90\x3c\x50"), (480 * 2 * 60 * 21, b"\x80\x3c\x00"))))
    assert one.notes[0].duration == pytest.approx(2 * 60 * 20)  # the long note, cut at 20 min
    assert seed_notices(one) == {
        "seed_cropped": "The file was too long, so the seed is its first 20 minutes of 21."
    }
    assert "cropped" not in load_seed(GOOD).meta and seed_notices(load_seed(GOOD)) == {}


def test_from_bar_makes_the_bars_before_it_the_seed():
    # 8 bars of 4/4, one quarter note per beat, pitches 40..71 in order
    song = smf(melody(pitches=list(range(40, 72))))
    whole = load_seed(song)
    assert len(whole.notes) == 32 and "from_bar" not in whole.meta
    seed = load_seed(song, from_bar=3)
    assert [n.pitch for n in seed.notes] == list(range(40, 48))  # bars 1-2
    assert seed_notices(seed)["from_bar"] == (
        "The seed is bars 1-2; the continuation starts at bar 3."
    )
    assert load_seed(song, from_bar=9).notes == whole.notes  # bar 9: just after the end
    for bad in (1, 10, 0, -3):
        with pytest.raises(FromBarOutsideFile, match="bars 1 to 8") as info:
            load_seed(song, from_bar=bad)
        assert isinstance(info.value, BadMidi)
    # a note held across the cut is cut there
    held = smf(track(*note(60, ticks=480 * 6)))
    assert load_seed(held, from_bar=2).notes[0].duration == 4.0


def test_drums_are_left_out_and_the_notice_says_so():
    drums = track(*[ev for _ in range(6) for ev in note(36, channel=9)])
    piece = load_seed(smf(melody(), drums))
    assert [n.pitch for n in piece.notes] == [60, 62, 64, 65]
    assert piece.meta["drum_notes"] == "6"
    assert seed_notices(piece)["drums_left_out"].startswith("The drums (6 notes) were left out")


# --- fuzzing: mutated real files may only ever raise BadMidi ----------------------------------
SEEDS = [
    GOOD,
    smf(
        track(
            (0, tempo(140)),
            (0, b"\xc0\x18"),
            *[ev for p in range(48, 84, 3) for ev in note(p, 240)],
        )
    ),
    # running status, a sysex, a pitch bend, drums and two pitched tracks
    smf(
        track(
            (0, b"\xf0\x05\x7e\x7f\x09\x01\xf7"),
            (0, b"\x90\x3c\x40"),
            (120, b"\x3e\x40"),
            (120, b"\x3c\x00"),
            (0, b"\x3e\x00"),
            (0, b"\xe0\x00\x40"),
        ),
        melody(channel=9),
        melody((70, 72, 74), channel=3),
    ),
    to_midi_bytes(
        Piece(
            (Note(0, 1, 60), Note(0, 1, 64), Note(1.5, 0.25, 67)),
            tempo_bpm=75,
            time_signature=(6, 8),
        ),
        Piece((Note(2, 1, 62),)),
    ),
]


def _check(data: bytes) -> None:
    started = time.perf_counter()
    try:
        piece = load_seed(data)
    except BadMidi as exc:
        assert exc.user_message
    else:
        assert isinstance(piece, Piece) and piece.notes
        assert 0 < len(piece.notes) <= 512
        assert all(n.start >= 0 and n.duration > 0 and 0 <= n.pitch <= 127 for n in piece.notes)
        assert all(1 <= n.velocity <= 127 for n in piece.notes)
        assert 20 <= piece.tempo_bpm <= 400
    assert time.perf_counter() - started < 1.0


FUZZ = settings(
    max_examples=500, deadline=1000, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_fuzz_byte_flips(seed, flips):
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    _check(bytes(data))


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(0, 10**6), st.binary(max_size=64), st.booleans())
def test_fuzz_truncation_and_insertion(seed, pos, blob, cut):
    pos %= len(seed) + 1
    _check(seed[:pos] if cut else seed[:pos] + blob + seed[pos:])


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
)
def test_fuzz_header_and_chunk_lengths(seed, fmt, ntracks, division, header_len, track_len):
    data = bytearray(seed)
    field = fmt % 4
    if field == 0:
        data[8:10] = struct.pack(">H", fmt % 5)
        data[10:12] = struct.pack(">H", ntracks % 80)
    elif field == 1:
        data[12:14] = struct.pack(">H", division)
    elif field == 2:
        data[4:8] = struct.pack(">I", header_len % 64)
    else:
        first = data.find(b"MTrk")
        data[first + 4 : first + 8] = struct.pack(">I", track_len % (len(data) * 2))
    _check(bytes(data))


@FUZZ
@given(st.sampled_from(SEEDS), st.integers(0, 10**6), st.binary(min_size=1, max_size=12))
def test_fuzz_event_bytes_inside_a_track(seed, pos, blob):
    # Overwrite bytes inside a track body but keep the chunk length right: exercises the parser.
    data = bytearray(seed)
    first = data.find(b"MTrk") + 8
    start = first + pos % max(1, len(data) - first)
    data[start : start + len(blob)] = blob
    tail = len(data) - first
    data[first - 4 : first] = (
        struct.pack(">I", tail) if data.count(b"MTrk") == 1 else data[first - 4 : first]
    )
    _check(bytes(data))


def test_a_continuation_without_seed_is_written_as_continuation():
    cont = Piece((Note(0, 1, 67, 70), Note(1, 0.5, 69, 70)), tempo_bpm=140, time_signature=(3, 4))
    data = to_midi_bytes(None, cont)
    from symusic import Score

    assert [t.name for t in Score.from_midi(data).tracks] == ["continuation"]
    back = load_seed(data)
    assert back.tempo_bpm == 140 and back.time_signature == (3, 4)
    assert [n.pitch for n in back.notes] == [67, 69]
    with pytest.raises(ValueError):
        to_midi_bytes(None, None)
