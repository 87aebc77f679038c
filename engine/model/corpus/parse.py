"""music21's collections as Motif reads them: which pieces (`work_items`, `select`) and each
piece parsed into plain arrays on the 12-ticks-per-beat grid (`parse_piece`, run in worker
processes)."""

from __future__ import annotations

import hashlib
import re
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.music import catalog
from engine.music.notes import TICKS_PER_BEAT

# music21 corpus folder -> Motif style label (a conditioning class in engine.model.events).
COLLECTIONS: dict[str, str] = {
    "essenFolksong": "folk",
    "oneills1850": "celtic",
    "ryansMammoth": "celtic",
    "bach": "chorale",
    "palestrina": "renaissance",
}
# Quarter-note tempo where a score has no metronome mark: typical performance tempi.
DEFAULT_TEMPO = {"folk": 100.0, "celtic": 160.0, "chorale": 80.0, "renaissance": 120.0}
PARSE_TIMEOUT_S = 60
_MAX_TICK = np.iinfo(np.int32).max


@dataclass(frozen=True)
class WorkItem:
    """One piece in music21's corpus: a file, and a tune number inside multi-tune ABC files."""

    collection: str
    path: str  # relative to music21's corpus folder, e.g. "essenFolksong/altdeu10.abc"
    number: int | None = None

    @property
    def key(self) -> str:
        return self.path if self.number is None else f"{self.path}#{self.number}"


def _corpus_root() -> Path:
    import music21

    return Path(music21.__file__).resolve().parent / "corpus"


def _abc_numbers(path: Path) -> list[int]:
    text = path.read_text(encoding="latin-1")
    return [int(m) for m in re.findall(r"^X:\s*(\d+)", text, flags=re.MULTILINE)]


def work_items(collection: str) -> list[WorkItem]:
    """Every piece of a collection, in a fixed order."""
    root = _corpus_root()
    folder = root / collection
    if not folder.is_dir():
        raise ValueError(f"music21 has no corpus collection {collection!r}")
    if collection == "bach":  # the 371 chorales, not the other Bach files
        from music21 import corpus
        from music21.corpus import chorales

        items = []
        for name in chorales.Iterator(returnType="filename"):
            found = corpus.getWork(name)
            found = found[0] if isinstance(found, list) else found
            if found:
                items.append(WorkItem(collection, Path(found).relative_to(root).as_posix()))
        return items
    items = []
    for path in sorted(folder.iterdir()):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".abc":
            numbers = _abc_numbers(path)
            if len(numbers) > 1:
                items += [WorkItem(collection, rel, n) for n in numbers]
            else:
                items.append(WorkItem(collection, rel))
        elif path.suffix in (".krn", ".mxl", ".xml", ".musicxml", ".mid"):
            items.append(WorkItem(collection, rel))
    return items


def select(items: list[WorkItem], limit: int | None) -> list[WorkItem]:
    """A deterministic spread-out sample (by hash, not the first files alphabetically)."""
    if limit is None or limit >= len(items):
        return items
    ranked = sorted(items, key=lambda it: hashlib.sha256(it.key.encode()).hexdigest())
    return sorted(ranked[:limit], key=lambda it: it.key)


class _ParseTimeout(Exception):
    pass


def _on_alarm(signum, frame):  # pragma: no cover - only on a pathological file
    raise _ParseTimeout()


def init_worker() -> None:
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _on_alarm)


def _velocity_at(dynamics: list[tuple[float, int]], offset: float, default: int = 80) -> int:
    velocity = default
    for at, v in dynamics:
        if at > offset + 1e-9:
            break
        velocity = v
    return velocity


def _time_signature(score) -> tuple[int, int]:
    from music21 import meter

    ts = score.parts[0].recurse().getElementsByClass(meter.TimeSignature).first()
    if ts is None:
        return (4, 4)
    num, den = int(ts.numerator), int(ts.denominator)
    if 1 <= num <= 32 and den in (1, 2, 4, 8, 16, 32):
        return (num, den)
    return (4, 4)


def _has_repeats(score) -> bool:
    from music21 import bar, repeat, spanner

    marks = (bar.Repeat, repeat.RepeatMark, repeat.RepeatExpression)
    return score.recurse().getElementsByClass(marks).first() is not None or bool(
        score.spannerBundle.getByClass(spanner.RepeatBracket)
    )


def parse_piece(item: WorkItem) -> dict:
    """One piece as plain arrays and fields, or {"failure": reason}.

    Parts merge into one polyphonic piece; repeats are expanded; a pickup bar is padded so
    tick 0 is a downbeat; ties are joined; onsets and lengths go to the 12-tick grid; pieces
    notated in long values are rewritten in shorter ones (`normalize_note_values`).
    """
    signal.alarm(PARSE_TIMEOUT_S)
    try:
        score = _read_score(item)
        if isinstance(score, str):
            return {"failure": score}
        try:
            read = _read_notes(score, COLLECTIONS[item.collection])
        except _ParseTimeout:
            return {"failure": "timeout"}
        except Exception:
            return {"failure": "convert"}
    finally:
        signal.alarm(0)
    if not read.notes:
        return {"failure": "empty"}
    rows = np.array([(o, d, p, v) for (o, p), (d, v) in sorted(read.notes.items())], dtype=np.int64)
    time_signature = read.time_signature
    rows[:, 0] -= rows[0, 0] - rows[0, 0] % (
        TICKS_PER_BEAT * 4 * time_signature[0] // time_signature[1]
    )
    if rows[:, 0].max() + rows[:, 1].max() >= _MAX_TICK:
        return {"failure": "convert"}
    rows, time_signature, bpm, halvings = normalize_note_values(
        rows, time_signature, read.bpm, tempo_marked=read.tempo_marked
    )
    name = read.title or Path(item.path).stem + ("" if item.number is None else f" #{item.number}")
    return {
        "notes": rows.astype(np.int32),
        "tempo": min(catalog.MAX_TEMPO, max(catalog.MIN_TEMPO, bpm)),
        "time_signature": time_signature,
        "name": name,
        "halvings": halvings,
    }


def _read_score(item: WorkItem):
    """The item's score with its repeats expanded, or the reason it could not be read."""
    from music21 import converter

    path = _corpus_root() / item.path
    try:
        if item.number is None:
            score = converter.parse(path, forceSource=True)
        else:
            score = converter.parse(path, number=item.number, forceSource=True)
    except _ParseTimeout:
        return "timeout"
    except Exception:
        return "parse"
    if not hasattr(score, "parts") or not len(score.parts):
        return "parse"
    try:
        if _has_repeats(score):  # expanding deep-copies the score: skip it when there is none
            score = score.expandRepeats()
    except _ParseTimeout:
        return "timeout"
    except Exception:
        return "repeats"
    return score


@dataclass
class _ScoreNotes:
    """What a score holds for the corpus: its notes on the grid, keyed (onset, pitch), with
    (duration, velocity); its tempo, title and metre."""

    notes: dict[tuple[int, int], tuple[int, int]]
    bpm: float
    tempo_marked: bool
    title: str
    time_signature: tuple[int, int]


def _read_notes(score, style: str) -> _ScoreNotes:
    from music21 import tempo

    first = score.parts[0].getElementsByClass("Measure").first()
    pickup = float(first.paddingLeft) if first is not None else 0.0
    mark = score.recurse().getElementsByClass(tempo.MetronomeMark).first()
    bpm = mark.getQuarterBPM() if mark is not None else None
    bpm = float(bpm) if bpm else DEFAULT_TEMPO[style]
    notes: dict[tuple[int, int], tuple[int, int]] = {}
    for part in score.parts:
        _add_part_notes(part, pickup, notes)
    title = (score.metadata.title if score.metadata else None) or ""
    return _ScoreNotes(notes, bpm, mark is not None, title, _time_signature(score))


def _add_part_notes(part, pickup: float, notes: dict[tuple[int, int], tuple[int, int]]) -> None:
    """Add a part's notes; where two share (onset, pitch), the longer stays."""
    from music21 import dynamics

    flat = part.flatten()
    marks = [
        (float(d.offset), max(1, min(127, round(d.volumeScalar * 127))))
        for d in flat.getElementsByClass(dynamics.Dynamic)
        if d.volumeScalar is not None
    ]
    for element in flat.stripTies().notes:
        length = float(element.quarterLength)
        if length <= 0:  # grace notes
            continue
        offset = float(element.offset) + pickup
        onset = round(offset * TICKS_PER_BEAT)
        duration = max(1, round(length * TICKS_PER_BEAT))
        explicit = element.volume.velocity if element.volume.velocity else None
        velocity = explicit or _velocity_at(marks, float(element.offset))
        for pitch in element.pitches:
            key = (onset, int(pitch.midi))
            if 0 <= key[1] <= 127 and duration > notes.get(key, (0, 0))[0]:
                notes[key] = (duration, int(velocity))


def _median_gap(onsets: np.ndarray) -> float:
    gaps = np.diff(np.unique(onsets))
    return float(np.median(gaps)) if len(gaps) else 0.0


def normalize_note_values(
    rows: np.ndarray, time_signature: tuple[int, int], bpm: float, *, tempo_marked: bool
) -> tuple[np.ndarray, tuple[int, int], float, int]:
    """Rewrite pieces notated in long values (4/2 Palestrina, Essen tunes in whole notes) so
    their notes move mostly in quarters and eighths, like everything else and like user seeds.

    While the metre's denominator is 1 or 2 and the median gap between onsets is a beat or
    more, note values are halved and the denominator doubled (4/2 -> 4/4); a tempo from a
    metronome mark doubles too, so the music sounds the same. Otherwise shifts longer than
    `max_shift` (4 beats) and bars longer than `max_position` would be clipped by the events.
    Returns (rows, time_signature, bpm, halvings).
    """
    num, den = time_signature
    halvings = 0
    while den <= 2 and _median_gap(rows[:, 0]) >= TICKS_PER_BEAT:
        halved = rows.copy()
        halved[:, 0] = np.rint(rows[:, 0] / 2)
        halved[:, 1] = np.maximum(1, np.rint(rows[:, 1] / 2))
        # Two notes may now share (onset, pitch): keep the longest, in (onset, pitch) order.
        order = np.lexsort((-halved[:, 1], halved[:, 2], halved[:, 0]))
        halved = halved[order]
        keep = np.ones(len(halved), dtype=bool)
        keep[1:] = (np.diff(halved[:, 0]) != 0) | (np.diff(halved[:, 2]) != 0)
        rows, den, halvings = halved[keep], den * 2, halvings + 1
        if tempo_marked:
            bpm *= 2
    return rows, (num, den), bpm, halvings
