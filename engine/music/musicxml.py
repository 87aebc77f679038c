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
from engine.music.measures import (
    TICKS,
    Event,
    Measure,
    beam_marks,
    beat_ticks,
    measure_at,
    measure_events,
    quantised,
    split_voices,
    tuplet_marks,
)
from engine.music.metre import bars
from engine.music.notes import Piece, notated_metre
from engine.music.spelling import Speller, key_fifths

log = logging.getLogger(__name__)

SEED_INK_COLOUR = (
    "#2F5F9E"  # the piano roll's seed blue, darker to read as ink (MusicXML: upper case)
)
MARK = "Motif"  # the mark over the continuation's first note
MIDDLE_C = 60


def _note_xml(
    ev: Event,
    pitch: int | None,
    chord: bool,
    voice: int,
    staff: int,
    speller: Speller,
    beams: dict[int, str],
    tuplet: str | None,
) -> str:
    ticks, kind, dots, triplet = ev.value
    colour = f' color="{SEED_INK_COLOUR}"' if ev.seed and pitch is not None else ""
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
    writes C major / A minor without a signature. Tempo and instrument are the seed's (the
    continuation's without a seed); so are the metres and keys: the seed's bars keep each metre
    and key signature it changes to, and the continuation's bars follow on in the last."""
    first = seed if seed is not None else continuation
    notes = quantised(seed, True) + quantised(continuation, False)
    fifths = key_fifths(*key) if key else 0
    layout = layout_for([p for _, _, p, _ in notes], _polyphonic(notes))
    end = max((s + d for s, d, _, _ in notes), default=0)
    grid = score_measures(first, end)
    starts = [g.start for g in grid]
    n_bars = len(grid)
    cont_start = min((s for s, _, _, is_seed in notes if not is_seed), default=None)
    # the mark sits on the continuation's first note, mid-bar when the seed ends mid-bar (a
    # shortened last bar that balances a pickup); the double bar only where the join is a bar line
    mark = None
    if seed is not None and cont_start is not None:
        at = measure_at(grid, starts, cont_start)
        mark = (at, cont_start - grid[at].start)
    # a seed that starts after its first downbeat opens with a pickup: written as a short
    # (implicit) measure of its own notes, not a bar of rests and an upbeat
    first_onset = min((s for s, _, _, _ in notes), default=0)
    pickup = first_onset if seed is not None and 0 < first_onset < grid[0].length else 0
    measures = _staff_measures(notes, layout, grid)
    key_at = _key_changes(seed, grid, starts)

    out = _header(first, title)
    speller = Speller(fifths)
    for m in range(n_bars):
        speller.new_measure()
        short = pickup if m == 0 else 0
        out.append(f'<measure number="{m + 1 - bool(pickup)}"{_IMPLICIT if short else ""}>')
        if m == 0:
            out += _opening(first, grid[0].metre, fifths, key[1] if key else "major", layout)
        else:
            changed = _changed_attributes(grid[m - 1].metre, grid[m].metre, key_at.get(m))
            if changed:
                out.append(changed)
            if m in key_at:
                speller = Speller(key_at[m][0])
        mark_at = mark[1] if mark is not None and m == mark[0] else None
        out += _measure_notes(measures, m, grid[m], speller, mark_at=mark_at, skip=short)
        if mark is not None and mark[1] == 0 and m == mark[0] - 1:
            out.append('<barline location="right"><bar-style>light-light</bar-style></barline>')
        if m == n_bars - 1:
            out.append('<barline location="right"><bar-style>light-heavy</bar-style></barline>')
        out.append("</measure>")
    out.append("</part></score-partwise>")
    return "\n".join(line for line in out if line)


def score_measures(first: Piece, end: int) -> list[Measure]:
    """The measures that cover `end` ticks: in the piece's metres where it changes them (the
    last holds on), else in its one metre (4/4 for one no score writes: 1/64 is a bar shorter
    than one tick)."""
    metres = first.metre_changes or ((0.0, *notated_metre(first.time_signature)),)
    found = bars(metres, end / TICKS)
    starts = [round(b.start * TICKS) for b in found]
    return [
        Measure(
            start,
            max(1, starts[i + 1] - start if i + 1 < len(found) else round(b.length * TICKS)),
            beat_ticks(b.metre),
            b.metre,
        )
        for i, (start, b) in enumerate(zip(starts, found, strict=True))
    ]


def _key_changes(
    seed: Piece | None, grid: list[Measure], starts: list[int]
) -> dict[int, tuple[int, str]]:
    """{measure index: (fifths, mode)} of the seed's key changes after its opening: each from
    the first bar line at or after it (notes before that bar line take accidentals)."""
    found: dict[int, tuple[int, str]] = {}
    for beat, tonic, mode in seed.key_changes if seed is not None else ():
        tick = round(beat * TICKS)
        if tick <= 0:
            continue
        index = measure_at(grid, starts, tick)
        index += grid[index].start < tick
        if index < len(grid):
            found[index] = (key_fifths(tonic, mode), mode)
    return found


def _changed_attributes(
    before: tuple[int, int], metre: tuple[int, int], key: tuple[int, str] | None
) -> str:
    """The attributes that open a measure whose key or metre changes ("" for neither)."""
    key_xml = f"<key><fifths>{key[0]}</fifths><mode>{key[1]}</mode></key>" if key else ""
    time_xml = (
        f"<time><beats>{metre[0]}</beats><beat-type>{metre[1]}</beat-type></time>"
        if metre != before
        else ""
    )
    return f"<attributes>{key_xml}{time_xml}</attributes>" if key_xml or time_xml else ""


def _staff_measures(
    notes: list[tuple[int, int, int, bool]], layout: Layout, grid: list[Measure]
) -> list[list[dict[int, list[Event]]]]:
    """[staff][voice][measure]: the events of each measure, voice by voice, staff by staff (a
    grand staff splits at middle C); the first voice of a staff shows its rests."""
    staves: list[list[tuple[int, int, int, bool]]]
    if layout.staves == 2:
        staves = [[n for n in notes if n[2] >= MIDDLE_C], [n for n in notes if n[2] < MIDDLE_C]]
    else:
        staves = [notes]
    measures = []
    for staff_notes in staves:
        voices = split_voices(staff_notes) or [[]]
        measures.append(
            [measure_events(v, grid, show_rests=(i == 0)) for i, v in enumerate(voices)]
        )
    return measures


def _header(first: Piece, title: str) -> list[str]:
    """The score's title, encoding and its one part with its instrument, up to the part's start."""
    program = min(127, max(0, int(first.program)))
    instrument = catalog.PROGRAM_NAMES.get(program, f"GM program {program}").title()
    return [
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


def _opening(
    first: Piece, metre: tuple[int, int], fifths: int, mode: str, layout: Layout
) -> list[str]:
    """The first measure's attributes (divisions, key, time, staves, clefs) and tempo mark."""
    num, den = metre
    tempo = round(float(first.tempo_bpm), 2)
    compound = den == 8 and num % 3 == 0 and num > 3  # 6/8, 9/8, 12/8: dotted quarter beats
    beat_unit = (
        "<beat-unit>quarter</beat-unit><beat-unit-dot/>"
        if compound
        else ("<beat-unit>quarter</beat-unit>")
    )
    per_minute = round(tempo / 1.5, 2) if compound else tempo
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
    return [
        f"<attributes><divisions>{TICKS}</divisions>"
        f"<key><fifths>{fifths}</fifths><mode>{mode}</mode></key>"
        f"<time><beats>{num}</beats><beat-type>{den}</beat-type></time>"
        + (f"<staves>{layout.staves}</staves>" if layout.staves == 2 else "")
        + clefs
        + "</attributes>",
        '<direction placement="above"><direction-type><metronome>'
        f"{beat_unit}<per-minute>{per_minute:g}</per-minute>"
        f'</metronome></direction-type><sound tempo="{tempo:g}"/></direction>',
    ]


_IMPLICIT = ' implicit="yes"'  # a pickup measure: shorter than the metre, not counted


def _mark(mid_bar: bool) -> str:
    """The *Motif* mark, written before the continuation's first note. At a bar line it is a
    rehearsal mark; mid-bar, a boxed bold direction (engravers put rehearsal marks at the bar
    line whatever their place in the measure)."""
    if mid_bar:
        text = f'<words enclosure="rectangle" font-weight="bold" font-style="normal">{MARK}</words>'
    else:
        text = f"<rehearsal>{MARK}</rehearsal>"
    return f'<direction placement="above"><direction-type>{text}</direction-type></direction>'


def _measure_notes(
    measures: list[list[dict[int, list[Event]]]],
    m: int,
    measure: Measure,
    speller: Speller,
    *,
    mark_at: int | None = None,
    skip: int = 0,
) -> list[str]:
    """Measure `m`'s notes, voice after voice (each later voice backs up a bar), with the mark
    `mark_at` ticks into the bar; `skip`: a pickup measure, whose rests before it are left out."""
    bar, beat = measure.length, measure.beat
    out = []
    voice_no = 0
    for staff_index, staff_voices in enumerate(measures):
        for voice_measures in staff_voices:
            voice_no += 1
            events = [
                e
                for e in voice_measures[m]
                if e.pitches or (e.start + e.value[0] > skip and not (skip and e.whole_bar))
            ]
            if voice_no > 1:
                out.append(f"<backup><duration>{bar - skip}</duration></backup>")
            beams = beam_marks(events, beat)
            tuplets = tuplet_marks(events)
            for ev, beam, tuplet in zip(events, beams, tuplets, strict=True):
                if mark_at is not None and ev.start >= mark_at:
                    out.append(_mark(mid_bar=mark_at > 0))
                    mark_at = None
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
    return out


def _polyphonic(notes: list[tuple[int, int, int, bool]]) -> bool:
    ordered = sorted(notes)
    return any(b[0] < a[0] + a[1] for a, b in zip(ordered, ordered[1:], strict=False))
