"""A seed and its continuation as MusicXML, written by hand on Motif's event grid.

Notes are quantised to the grid the model speaks (12 ticks a beat: 16ths and triplets exact),
split at bar lines with ties, spelled in the key, and laid out on one staff or, for polyphony or
a wide range, on a grand staff split at middle C, up to two voices a staff. The seed is drawn in
blue and the continuation starts at a double bar with a rehearsal mark. No music21 here: the
output is small, exact and fast enough to write for every result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from xml.sax.saxutils import escape

from engine.music import catalog
from engine.music.notes import DURATION_BINS, TICKS_PER_BEAT, Piece

log = logging.getLogger(__name__)

TICKS = TICKS_PER_BEAT  # Motif's event grid, in ticks a quarter note
LEGATO_GAP = 1 / 4  # a silence shorter than this share of a note (and a 16th) is articulation
SEED_COLOUR = "#2F5F9E"  # the piano roll's seed blue, darker to read as ink (MusicXML: upper case)
MARK = "Motif"  # the rehearsal mark over the first bar of the continuation
VOICES_PER_STAFF = 2
MIDDLE_C = 60

# (ticks, type, dots, triplet) that one note head can show, longest first.
_VALUES: tuple[tuple[int, str, int, bool], ...] = tuple(
    (round(beats * TICKS), kind, dots, triplet)
    for beats, kind, dots, triplet in (
        (6.0, "whole", 1, False),
        (4.0, "whole", 0, False),
        (3.0, "half", 1, False),
        (2.0, "half", 0, False),
        (1.5, "quarter", 1, False),
        (4 / 3, "half", 0, True),
        (1.0, "quarter", 0, False),
        (0.75, "eighth", 1, False),
        (2 / 3, "quarter", 0, True),
        (0.5, "eighth", 0, False),
        (1 / 3, "eighth", 0, True),
        (0.25, "16th", 0, False),
        (1 / 6, "16th", 0, True),
        (1 / 12, "32nd", 0, True),
    )
)
_BEAMS = {"eighth": 1, "16th": 2, "32nd": 3}
_STEPS = "CDEFGAB"
_STEP_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_SHARP_ORDER = "FCGDAEB"
_MAJOR_FIFTHS = {0: 0, 7: 1, 2: 2, 9: 3, 4: 4, 11: 5, 6: 6, 1: -5, 8: -4, 3: -3, 10: -2, 5: -1}
_ACCIDENTAL = {-2: "flat-flat", -1: "flat", 0: "natural", 1: "sharp", 2: "double-sharp"}


def key_fifths(tonic: int, mode: str) -> int:
    """Sharps (+) or flats (-) of the key signature of a (tonic pitch class, mode) key."""
    return _MAJOR_FIFTHS[(tonic + (3 if mode == "minor" else 0)) % 12]


def _key_alters(fifths: int) -> dict[str, int]:
    """The alteration the key signature gives each step."""
    alters = dict.fromkeys(_STEPS, 0)
    for step in _SHARP_ORDER[:fifths] if fifths > 0 else _SHARP_ORDER[::-1][:-fifths]:
        alters[step] = 1 if fifths > 0 else -1
    return alters


def spelling(fifths: int) -> dict[int, tuple[str, int]]:
    """(step, alter) for each pitch class: the key's own notes as the signature spells them,
    others natural where they can be, else sharp in sharp keys and flat in flat keys."""
    table: dict[int, tuple[str, int]] = {}
    for step, alter in _key_alters(fifths).items():
        table[(_STEP_PC[step] + alter) % 12] = (step, alter)
    for pc in range(12):
        if pc in table:
            continue
        natural = next((s for s in _STEPS if _STEP_PC[s] == pc), None)
        if natural is not None:
            table[pc] = (natural, 0)
        elif fifths >= 0:
            table[pc] = (next(s for s in _STEPS if _STEP_PC[s] == pc - 1), 1)
        else:
            table[pc] = (next(s for s in _STEPS if _STEP_PC[s] == (pc + 1) % 12), -1)
    return table


@dataclass
class _Chord:
    start: int  # ticks from the first bar line
    length: int
    pitches: list[int]
    seed: bool


def grid_length(ticks: int) -> int:
    """A note length on the model's grid: the nearest of its duration bins (the shorter on a
    tie), or whole ticks beyond the longest bin."""
    bins = DURATION_BINS
    if ticks >= bins[-1]:
        return ticks
    return min(bins, key=lambda b: (abs(b - ticks), b))


def _quantised(piece: Piece | None, seed: bool) -> list[tuple[int, int, int, bool]]:
    if piece is None:
        return []
    return [
        (max(0, round(n.start * TICKS)), grid_length(round(n.duration * TICKS)), int(n.pitch), seed)
        for n in piece.notes
    ]


def _voices(notes: list[tuple[int, int, int, bool]]) -> list[list[_Chord]]:
    """Notes of one staff as at most VOICES_PER_STAFF voices of non-overlapping chords.

    Notes that start together with the same length form a chord; a chord that finds no free
    voice joins the chord sounding at its onset, or cuts the earliest-ending voice short."""
    groups: dict[tuple[int, int], _Chord] = {}
    for start, length, pitch, seed in notes:
        chord = groups.setdefault((start, length), _Chord(start, length, [], seed))
        if pitch not in chord.pitches:
            chord.pitches.append(pitch)
    voices: list[list[_Chord]] = []
    for chord in sorted(groups.values(), key=lambda c: (c.start, -max(c.pitches))):
        free = [v for v in voices if v[-1].start + v[-1].length <= chord.start]
        if free:
            free[0].append(chord)
        elif len(voices) < VOICES_PER_STAFF:
            voices.append([chord])
        else:
            same = next((v for v in voices if v[-1].start == chord.start), None)
            if same is not None:
                last = same[-1]
                last.pitches.extend(p for p in chord.pitches if p not in last.pitches)
                last.length = min(last.length, chord.length)
            else:
                cut = min(voices, key=lambda v: v[-1].start + v[-1].length)
                cut[-1].length = chord.start - cut[-1].start
                cut.append(chord)
    for voice in voices:  # detached playing reads as rests of a 16th or less: close them
        for chord, nxt in zip(voice, voice[1:], strict=False):
            gap = nxt.start - chord.start - chord.length
            if 0 < gap <= TICKS // 4 and gap <= chord.length * LEGATO_GAP:
                chord.length += gap
    return voices


def _split(length: int) -> list[tuple[int, str, int, bool]]:
    """Note values, longest first, that add up to `length` ticks."""
    parts = []
    while length > 0:
        value = next(v for v in _VALUES if v[0] <= length)
        parts.append(value)
        length -= value[0]
    return parts


@dataclass
class _Event:
    """One note head, chord or rest inside one measure of one voice."""

    start: int  # within the measure
    value: tuple[int, str, int, bool]
    pitches: list[int]  # empty: a rest
    seed: bool
    tie_start: bool = False
    tie_stop: bool = False
    hidden: bool = False
    whole_bar: bool = False  # a rest that fills the measure


def _rest_values(offset: int, span: int, beat: int) -> list[tuple[int, str, int, bool]]:
    """Rest values for `span` ticks from `offset` in a bar: up to the next beat first, then
    beat by beat, so a reader sees where the beats fall (6/8: dotted quarter rests)."""
    parts = []
    end = offset + span
    while offset < end:
        stop = min(end, (offset // beat + 1) * beat)
        if offset % beat == 0:  # on a beat: whole beats at once
            stop = max(stop, offset + (end - offset) // beat * beat)
        parts.extend(_split(stop - offset))
        offset = stop
    return parts


def _measure_events(voice: list[_Chord], bar: int, n_bars: int, show_rests: bool, beat: int):
    """{measure index: [_Event]} of one voice, with rests filling its gaps."""
    out: dict[int, list[_Event]] = {m: [] for m in range(n_bars)}
    cursor = 0
    pieces: list[tuple[int, int, list[int], bool]] = []  # (start, length, pitches, seed)
    for chord in voice:
        if chord.start > cursor:
            pieces.append((cursor, chord.start - cursor, [], False))
        pieces.append((chord.start, chord.length, sorted(chord.pitches), chord.seed))
        cursor = chord.start + chord.length
    if cursor < n_bars * bar:
        pieces.append((cursor, n_bars * bar - cursor, [], False))
    for start, length, pitches, seed in pieces:
        end = start + length
        pos = start
        while pos < end:
            measure, offset = divmod(pos, bar)
            span = min(end, (measure + 1) * bar) - pos
            if not pitches and span == bar:  # a whole bar's rest
                out[measure].append(
                    _Event(
                        0,
                        (bar, "whole", 0, False),
                        [],
                        False,
                        hidden=not show_rests,
                        whole_bar=True,
                    )
                )
                pos += span
                continue
            values = _split(span) if pitches else _rest_values(offset, span, beat)
            for value in values:
                out[measure].append(
                    _Event(
                        offset,
                        value,
                        pitches,
                        seed,
                        tie_stop=bool(pitches) and pos > start,
                        tie_start=bool(pitches) and pos + value[0] < end,
                        hidden=not pitches and not show_rests,
                    )
                )
                offset += value[0]
                pos += value[0]
    return out


def _beams(events: list[_Event], beat: int) -> list[dict[int, str]]:
    """MusicXML beam values per event: notes of a beat that carry flags are beamed together."""
    levels = [0 if not e.pitches else _BEAMS.get(e.value[1], 0) for e in events]  # 0: not beamable
    group = [e.start // beat for e in events]
    out: list[dict[int, str]] = [{} for _ in events]
    for i, level in enumerate(levels):
        if not level:
            continue
        prev = levels[i - 1] if i and group[i - 1] == group[i] else 0
        nxt = levels[i + 1] if i + 1 < len(events) and group[i + 1] == group[i] else 0
        if not prev and not nxt:
            continue
        for k in range(1, level + 1):
            if prev >= k and nxt >= k:
                out[i][k] = "continue"
            elif prev >= k:
                out[i][k] = "end"
            elif nxt >= k:
                out[i][k] = "begin"
            else:
                out[i][k] = "backward hook" if prev else "forward hook"
    return out


class _Speller:
    """Pitch spelling and the accidentals a reader needs, measure by measure."""

    def __init__(self, fifths: int) -> None:
        self.table = spelling(fifths)
        self.signature = _key_alters(fifths)
        self.shown: dict[tuple[int, str, int], int] = {}  # (staff, step, octave): alter

    def new_measure(self) -> None:
        self.shown = {}

    def note(self, pitch: int, staff: int, tied: bool) -> tuple[str, int, int, str | None]:
        step, alter = self.table[pitch % 12]
        octave = (pitch - alter - _STEP_PC[step]) // 12 - 1
        current = self.shown.get((staff, step, octave), self.signature[step])
        accidental = None
        if alter != current and not tied:
            accidental = _ACCIDENTAL[alter]
        self.shown[(staff, step, octave)] = alter
        return step, alter, octave, accidental


def _note_xml(
    ev: _Event,
    pitch: int | None,
    chord: bool,
    voice: int,
    staff: int,
    speller: _Speller,
    beams: dict[int, str],
    tuplet: str | None,
) -> str:
    ticks, kind, dots, triplet = ev.value
    colour = f' color="{SEED_COLOUR}"' if ev.seed and pitch is not None else ""
    hidden = ' print-object="no"' if ev.hidden else ""
    parts = [f"<note{colour}{hidden}>"]
    if chord:
        parts.append("<chord/>")
    if pitch is None:
        parts.append('<rest measure="yes"/>' if ev.whole_bar else "<rest/>")
        accidental = None
    else:
        step, alter, octave, accidental = speller.note(pitch, staff, ev.tie_stop)
        alter_xml = f"<alter>{alter}</alter>" if alter else ""
        parts.append(f"<pitch><step>{step}</step>{alter_xml}<octave>{octave}</octave></pitch>")
    parts.append(f"<duration>{ticks}</duration>")
    if ev.tie_stop:
        parts.append('<tie type="stop"/>')
    if ev.tie_start:
        parts.append('<tie type="start"/>')
    parts.append(f"<voice>{voice}</voice>")
    if not ev.whole_bar:
        parts.append(f"<type>{kind}</type>" + "<dot/>" * dots)
    if accidental:
        parts.append(f"<accidental>{accidental}</accidental>")
    if triplet:
        parts.append(
            "<time-modification><actual-notes>3</actual-notes>"
            "<normal-notes>2</normal-notes></time-modification>"
        )
    parts.append(f"<staff>{staff}</staff>")
    if not chord:
        parts.extend(f'<beam number="{k}">{v}</beam>' for k, v in sorted(beams.items()))
    notations = []
    if ev.tie_stop and pitch is not None:
        notations.append('<tied type="stop"/>')
    if ev.tie_start and pitch is not None:
        notations.append('<tied type="start"/>')
    if tuplet and not chord:
        notations.append(f'<tuplet type="{tuplet}" bracket="no"/>')
    if notations:
        parts.append("<notations>" + "".join(notations) + "</notations>")
    parts.append("</note>")
    return "".join(parts)


def _tuplet_marks(events: list[_Event]) -> list[str | None]:
    """start/stop marks for runs of triplet values that fill whole beats or half beats."""
    marks: list[str | None] = [None] * len(events)
    run_start, total = None, 0
    for i, ev in enumerate(events):
        if not ev.value[3]:
            run_start, total = None, 0
            continue
        if run_start is None:
            run_start, total = i, 0
        total += ev.value[0]
        if total % (TICKS // 2) == 0 and (total * 3 // 2) % (TICKS // 2) == 0:
            if i > run_start:
                marks[run_start], marks[i] = "start", "stop"
            run_start, total = None, 0
    return marks


@dataclass(frozen=True)
class Layout:
    staves: int  # 1 or 2
    clef: str  # "G" or "F" when one staff


def layout_for(pitches: list[int], polyphonic: bool) -> Layout:
    """A grand staff for polyphony or a range no single clef reads well; else the clef that fits."""
    if not pitches:
        return Layout(1, "G")
    low, high = min(pitches), max(pitches)
    if not polyphonic and low >= 53:
        return Layout(1, "G")
    if not polyphonic and high <= 67:
        return Layout(1, "F")
    return Layout(2, "G")


def score_xml(
    seed: Piece | None,
    continuation: Piece,
    *,
    key: tuple[int, str] | None,
    title: str = "",
) -> str:
    """A MusicXML 4.0 partwise score of the seed followed by its continuation (one timeline in
    beats, as `to_midi_bytes` writes it). `key` is the (tonic pitch class, mode) to write; None
    writes C major / A minor without a signature. Tempo, metre and instrument are the seed's
    (the continuation's without a seed)."""
    first = seed if seed is not None else continuation
    num, den = first.time_signature
    bar = max(1, TICKS * num * 4 // den)
    beat = TICKS * 3 // 2 if den == 8 and num % 3 == 0 and num > 3 else TICKS * 4 // den
    notes = _quantised(seed, True) + _quantised(continuation, False)
    fifths = key_fifths(*key) if key else 0
    mode = key[1] if key else "major"
    polyphonic = _polyphonic(notes)
    layout = layout_for([p for _, _, p, _ in notes], polyphonic)
    end = max((s + d for s, d, _, _ in notes), default=bar)
    n_bars = max(1, -(-end // bar))
    cont_start = min((s for s, _, _, is_seed in notes if not is_seed), default=None)
    mark_bar = cont_start // bar if seed is not None and cont_start is not None else None

    staves: list[list[tuple[int, int, int, bool]]]
    if layout.staves == 2:
        staves = [[n for n in notes if n[2] >= MIDDLE_C], [n for n in notes if n[2] < MIDDLE_C]]
    else:
        staves = [notes]
    # {staff: [{measure: events} per voice]}
    measures = []
    for staff_notes in staves:
        voices = _voices(staff_notes) or [[]]
        measures.append(
            [
                _measure_events(v, bar, n_bars, show_rests=(i == 0), beat=beat)
                for i, v in enumerate(voices)
            ]
        )

    program = min(127, max(0, int(first.program)))
    instrument = catalog.PROGRAM_NAMES.get(program, f"GM program {program}").title()
    tempo = round(float(first.tempo_bpm), 2)
    compound = den == 8 and num % 3 == 0 and num > 3  # 6/8, 9/8, 12/8: dotted quarter beats
    beat_unit = (
        "<beat-unit>quarter</beat-unit><beat-unit-dot/>"
        if compound
        else ("<beat-unit>quarter</beat-unit>")
    )
    per_minute = round(tempo / 1.5, 2) if compound else tempo
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<score-partwise version="4.0">',
        f"<work><work-title>{escape(title)}</work-title></work>" if title else "",
        "<identification><encoding><software>Motif</software></encoding></identification>",
        '<part-list><score-part id="P1">',
        f"<part-name>{escape(instrument)}</part-name>",
        f'<score-instrument id="P1-I1"><instrument-name>{escape(instrument)}'
        "</instrument-name></score-instrument>",
        f'<midi-instrument id="P1-I1"><midi-channel>1</midi-channel>'
        f"<midi-program>{program + 1}</midi-program></midi-instrument>",
        "</score-part></part-list>",
        '<part id="P1">',
    ]
    speller = _Speller(fifths)
    for m in range(n_bars):
        speller.new_measure()
        out.append(f'<measure number="{m + 1}">')
        if m == 0:
            clefs = (
                '<clef number="1"><sign>G</sign><line>2</line></clef>'
                '<clef number="2"><sign>F</sign><line>4</line></clef>'
                if layout.staves == 2
                else (
                    "<clef><sign>G</sign><line>2</line></clef>"
                    if layout.clef == "G"
                    else "<clef><sign>F</sign><line>4</line></clef>"
                )
            )
            out.append(
                f"<attributes><divisions>{TICKS}</divisions>"
                f"<key><fifths>{fifths}</fifths><mode>{mode}</mode></key>"
                f"<time><beats>{num}</beats><beat-type>{den}</beat-type></time>"
                + (f"<staves>{layout.staves}</staves>" if layout.staves == 2 else "")
                + clefs
                + "</attributes>"
            )
            out.append(
                '<direction placement="above"><direction-type><metronome>'
                f"{beat_unit}<per-minute>{per_minute:g}</per-minute>"
                f'</metronome></direction-type><sound tempo="{tempo:g}"/></direction>'
            )
        if m == mark_bar:
            out.append(
                '<direction placement="above"><direction-type>'
                f"<rehearsal>{MARK}</rehearsal></direction-type></direction>"
            )
        voice_no = 0
        for staff_index, staff_voices in enumerate(measures):
            for voice_measures in staff_voices:
                voice_no += 1
                events = voice_measures[m]
                if voice_no > 1:
                    out.append(f"<backup><duration>{bar}</duration></backup>")
                beams = _beams(events, beat)
                tuplets = _tuplet_marks(events)
                for ev, beam, tuplet in zip(events, beams, tuplets, strict=True):
                    if not ev.pitches:
                        out.append(
                            _note_xml(ev, None, False, voice_no, staff_index + 1, speller, {}, None)
                        )
                        continue
                    for i, pitch in enumerate(sorted(ev.pitches)):
                        out.append(
                            _note_xml(
                                ev, pitch, i > 0, voice_no, staff_index + 1, speller, beam, tuplet
                            )
                        )
        if mark_bar is not None and m == mark_bar - 1:
            out.append('<barline location="right"><bar-style>light-light</bar-style></barline>')
        if m == n_bars - 1:
            out.append('<barline location="right"><bar-style>light-heavy</bar-style></barline>')
        out.append("</measure>")
    out.append("</part></score-partwise>")
    return "\n".join(line for line in out if line)


def _polyphonic(notes: list[tuple[int, int, int, bool]]) -> bool:
    ordered = sorted(notes)
    return any(b[0] < a[0] + a[1] for a, b in zip(ordered, ordered[1:], strict=False))
