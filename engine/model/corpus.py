"""The training corpus: music21's bundled folk tunes, chorales and Palestrina, parsed once into
one compact .npz (notes on the 12-ticks-per-beat grid) that training and evaluation load fast.

Build: `python -m engine.model.corpus --out engine/data/corpus.npz [--max-per-collection N]
[--limit COLLECTION=N ...]` (`motif corpus build` runs the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import re
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import NotFound
from engine.music import catalog
from engine.music.notes import Note, Piece

log = logging.getLogger(__name__)

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
TICKS_PER_BEAT = 12
SPLITS = ("train", "validation", "test")
FORMAT_VERSION = 1
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


@dataclass
class CorpusStats:
    pieces: dict[str, int] = field(default_factory=dict)  # per collection
    failures: dict[str, int] = field(default_factory=dict)  # per collection
    failure_reasons: dict[str, int] = field(default_factory=dict)  # "repeats", "parse", ...
    splits: dict[str, int] = field(default_factory=dict)
    halved_note_values: int = 0  # pieces rewritten in shorter note values
    total_notes: int = 0
    build_seconds: float = 0.0
    file_bytes: int = 0

    @property
    def total_pieces(self) -> int:
        return sum(self.pieces.values())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CorpusStats:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def split_of(key: str) -> str:
    """Deterministic 90/5/5 split by the piece's corpus path, stable across builds and machines."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


# --- finding the pieces ------------------------------------------------------------------------
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


# --- parsing one piece (runs in worker processes) ---------------------------------------------
class _ParseTimeout(Exception):
    pass


def _on_alarm(signum, frame):  # pragma: no cover - only on a pathological file
    raise _ParseTimeout()


def _init_worker() -> None:
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
    from music21 import converter, dynamics, tempo

    style = COLLECTIONS[item.collection]
    path = _corpus_root() / item.path
    signal.alarm(PARSE_TIMEOUT_S)
    try:
        try:
            if item.number is None:
                score = converter.parse(path, forceSource=True)
            else:
                score = converter.parse(path, number=item.number, forceSource=True)
        except _ParseTimeout:
            return {"failure": "timeout"}
        except Exception:
            return {"failure": "parse"}
        if not hasattr(score, "parts") or not len(score.parts):
            return {"failure": "parse"}
        try:
            if _has_repeats(score):  # expanding deep-copies the score: skip it when there is none
                score = score.expandRepeats()
        except _ParseTimeout:
            return {"failure": "timeout"}
        except Exception:
            return {"failure": "repeats"}
        try:
            first = score.parts[0].getElementsByClass("Measure").first()
            pickup = float(first.paddingLeft) if first is not None else 0.0
            mark = score.recurse().getElementsByClass(tempo.MetronomeMark).first()
            bpm = mark.getQuarterBPM() if mark is not None else None
            bpm = float(bpm) if bpm else DEFAULT_TEMPO[style]
            notes: dict[tuple[int, int], tuple[int, int]] = {}
            for part in score.parts:
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
            title = (score.metadata.title if score.metadata else None) or ""
            time_signature = _time_signature(score)
        except _ParseTimeout:
            return {"failure": "timeout"}
        except Exception:
            return {"failure": "convert"}
    finally:
        signal.alarm(0)
    if not notes:
        return {"failure": "empty"}
    rows = np.array([(o, d, p, v) for (o, p), (d, v) in sorted(notes.items())], dtype=np.int64)
    rows[:, 0] -= rows[0, 0] - rows[0, 0] % (
        TICKS_PER_BEAT * 4 * time_signature[0] // time_signature[1]
    )
    if rows[:, 0].max() + rows[:, 1].max() >= _MAX_TICK:
        return {"failure": "convert"}
    rows, time_signature, bpm, halvings = normalize_note_values(
        rows, time_signature, bpm, tempo_marked=mark is not None
    )
    name = title or Path(item.path).stem + ("" if item.number is None else f" #{item.number}")
    return {
        "notes": rows.astype(np.int32),
        "tempo": min(catalog.MAX_TEMPO, max(catalog.MIN_TEMPO, bpm)),
        "time_signature": time_signature,
        "name": name,
        "halvings": halvings,
    }


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


def _parse_indexed(job: tuple[int, WorkItem]) -> tuple[int, dict]:
    index, item = job
    return index, parse_piece(item)


# --- building the file ---------------------------------------------------------------------------
def _results(items: list[WorkItem], workers: int) -> Iterator[tuple[int, dict]]:
    jobs = list(enumerate(items))
    if workers <= 1:
        _init_worker()
        try:
            yield from map(_parse_indexed, jobs)
        finally:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        return
    # spawn, not fork: the caller may hold torch's threads, which do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, maxtasksperchild=500) as pool:
        yield from pool.imap_unordered(_parse_indexed, jobs, chunksize=4)


def build_corpus(
    out_path: Path,
    *,
    collections: Iterable[str] = tuple(COLLECTIONS),
    max_per_collection: int | dict[str, int] | None = None,
    workers: int = 2,
    progress: bool = True,
) -> CorpusStats:
    """Parse the chosen music21 collections and write the compact corpus file.

    `max_per_collection` caps each collection (an int for all, or a dict per collection);
    pieces that fail to parse or to expand their repeats are skipped and counted.
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    items: list[WorkItem] = []
    for collection in collections:
        limit = (
            max_per_collection.get(collection)
            if isinstance(max_per_collection, dict)
            else max_per_collection
        )
        items += select(work_items(collection), limit)
    stats = CorpusStats(
        pieces=dict.fromkeys(collections, 0), failures=dict.fromkeys(collections, 0)
    )
    reasons: Counter[str] = Counter()
    parsed: dict[int, dict] = {}
    for done, (index, result) in enumerate(_results(items, workers), start=1):
        item = items[index]
        if "failure" in result:
            stats.failures[item.collection] += 1
            reasons[result["failure"]] += 1
        else:
            parsed[index] = result
            stats.halved_note_values += bool(result["halvings"])
        if progress and (done % 100 == 0 or done == len(items)):
            rate = done / (time.perf_counter() - started)
            print(
                f"corpus: {done}/{len(items)} parsed, {sum(stats.failures.values())} skipped, "
                f"{rate:.1f}/s",
                file=sys.stderr,
                flush=True,
            )
    stats.failure_reasons = dict(reasons)

    order = sorted(parsed)  # the items' fixed order, whatever order the workers finished in
    styles = tuple(dict.fromkeys(COLLECTIONS[c] for c in collections))
    collection_names = tuple(dict.fromkeys(collections))
    counts = [len(parsed[i]["notes"]) for i in order]
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    notes = (
        np.concatenate([parsed[i]["notes"] for i in order])
        if order
        else np.zeros((0, 4), dtype=np.int32)
    )
    splits = [split_of(items[i].key) for i in order]
    for i in order:
        stats.pieces[items[i].collection] += 1
    stats.splits = {s: splits.count(s) for s in SPLITS}
    stats.total_notes = int(len(notes))
    stats.build_seconds = round(time.perf_counter() - started, 1)

    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "ticks_per_beat": np.array(TICKS_PER_BEAT),
        "notes": notes,  # (M, 4) int32: onset_tick, duration_tick, pitch, velocity
        "offsets": offsets,  # (P + 1,) piece p is notes[offsets[p]:offsets[p + 1]]
        "style": np.array([styles.index(COLLECTIONS[items[i].collection]) for i in order], np.int8),
        "styles": np.array(styles),
        "collection": np.array(
            [collection_names.index(items[i].collection) for i in order], np.int8
        ),
        "collections": np.array(collection_names),
        "split": np.array([SPLITS.index(s) for s in splits], np.int8),
        "tempo": np.array([parsed[i]["tempo"] for i in order], np.float32),
        "time_signature": np.array([parsed[i]["time_signature"] for i in order], np.int16).reshape(
            -1, 2
        ),
        "name": np.array([parsed[i]["name"] for i in order], dtype=np.str_),
        "path": np.array([items[i].key for i in order], dtype=np.str_),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, stats=np.array(json.dumps(stats.to_dict())), **arrays)
    tmp.replace(out_path)
    stats.file_bytes = out_path.stat().st_size
    meta = {"content_hash": _sha256(out_path), **stats.to_dict()}
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return stats


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- loading -----------------------------------------------------------------------------------
class Corpus:
    """The built corpus in memory; `pieces()` gives `Piece`s, the arrays stay available."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with np.load(self.path, allow_pickle=False) as data:
            self._a = {key: data[key] for key in data.files}
        if int(self._a["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"{self.path}: corpus format {int(self._a['format_version'])}")
        self.ticks_per_beat = int(self._a["ticks_per_beat"])
        self.stats = CorpusStats.from_dict(json.loads(str(self._a["stats"])))
        self.stats.file_bytes = self.path.stat().st_size
        self.content_hash = _sha256(self.path)
        self._all_styles = tuple(str(s) for s in self._a["styles"])

    @property
    def styles(self) -> tuple[str, ...]:
        """The style labels present in the corpus."""
        return self._all_styles

    def __len__(self) -> int:
        return len(self._a["offsets"]) - 1

    @property
    def notes(self) -> np.ndarray:
        """All notes, (M, 4) int32: onset_tick, duration_tick, pitch, velocity."""
        return self._a["notes"]

    @property
    def offsets(self) -> np.ndarray:
        """(P + 1,) int64: piece p's notes are notes[offsets[p]:offsets[p + 1]]."""
        return self._a["offsets"]

    def indices(self, split: str | None = "train", style: str | None = None) -> np.ndarray:
        """Piece indices in a split ("train", "validation", "test" or None for all) and style."""
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
            mask &= self._a["split"] == SPLITS.index(split)
        if style is not None:
            if style not in self._all_styles:
                return np.zeros(0, dtype=np.int64)
            mask &= self._a["style"] == self._all_styles.index(style)
        return np.flatnonzero(mask)

    def piece(self, index: int) -> Piece:
        a, tpb = self._a, self.ticks_per_beat
        rows = a["notes"][a["offsets"][index] : a["offsets"][index + 1]]
        num, den = (int(x) for x in a["time_signature"][index])
        return Piece(
            notes=tuple(
                Note(int(o) / tpb, int(d) / tpb, int(p), int(v)) for o, d, p, v in rows.tolist()
            ),
            tempo_bpm=float(a["tempo"][index]),
            time_signature=(num, den),
            program=0,
            name=str(a["name"][index]),
            style=self._all_styles[int(a["style"][index])],
            meta={
                "path": str(a["path"][index]),
                "collection": str(a["collections"][int(a["collection"][index])]),
                "split": SPLITS[int(a["split"][index])],
            },
        )

    def events(self, index: int, codec) -> np.ndarray:
        """Piece `index` as (N, 5) events of an `engine.model.events.EventCodec`, without `Note`s."""
        if codec.config.ticks_per_beat != self.ticks_per_beat:
            return codec.encode(self.piece(index))
        rows = self.notes[self.offsets[index] : self.offsets[index + 1]]
        num, den = (int(x) for x in self._a["time_signature"][index])
        return codec.encode_ticks(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], (num, den))

    def pieces(self, split: str | None = "train", style: str | None = None) -> list[Piece]:
        return [self.piece(int(i)) for i in self.indices(split, style)]


def load_corpus(path: Path | None = None) -> Corpus:
    """The corpus file at `path` (default: the `corpus_path` setting)."""
    if path is None:
        from engine.settings import get_settings

        path = get_settings().corpus_path
    path = Path(path)
    if not path.is_file():
        raise NotFound(
            f"No corpus at {path}. Build it with `python -m engine.model.corpus --out {path}`."
        )
    return Corpus(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.model.corpus", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-per-collection", type=int, default=None)
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="COLLECTION=N",
        help="cap one collection (repeatable); overrides --max-per-collection for it",
    )
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    limits: int | dict[str, int] | None = args.max_per_collection
    if args.limit:
        limits = {c: args.max_per_collection for c in args.collections}
        for spec in args.limit:
            name, _, n = spec.partition("=")
            limits[name] = int(n)
    stats = build_corpus(
        args.out, collections=args.collections, max_per_collection=limits, workers=args.workers
    )
    print(json.dumps(stats.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    # Run through the imported module so worker processes unpickle `engine.model.corpus` functions.
    from engine.model.corpus import main as _main

    raise SystemExit(_main())
