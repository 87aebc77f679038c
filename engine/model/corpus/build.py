"""Building the corpus file: the chosen collections parsed in worker processes, split by path,
and written as one .npz with a .json summary beside it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from engine.model.corpus.load import CORPUS_FORMAT_VERSION, SPLITS, CorpusStats, file_sha256
from engine.model.corpus.parse import (
    COLLECTIONS,
    WorkItem,
    init_worker,
    parse_piece,
    select,
    work_items,
)
from engine.music.notes import TICKS_PER_BEAT


def split_of(key: str) -> str:
    """Deterministic 90/5/5 split by the piece's corpus path, stable across builds and machines."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def _parse_indexed(job: tuple[int, WorkItem]) -> tuple[int, dict]:
    index, item = job
    return index, parse_piece(item)


def _results(items: list[WorkItem], workers: int) -> Iterator[tuple[int, dict]]:
    jobs = list(enumerate(items))
    if workers <= 1:
        init_worker()
        try:
            yield from map(_parse_indexed, jobs)
        finally:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        return
    # spawn, not fork: the caller may hold torch's threads, which do not survive a fork.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=init_worker, maxtasksperchild=500) as pool:
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
    parsed = _parse_all(items, workers, stats, started, progress)
    arrays = _arrays(items, parsed, tuple(collections), stats, started)
    write_corpus_file(out_path, arrays, stats)
    return stats


def _parse_all(
    items: list[WorkItem], workers: int, stats: CorpusStats, started: float, progress: bool
) -> dict[int, dict]:
    """Each item parsed, by its index in `items`; the failures counted in `stats`."""
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
    return parsed


def _arrays(
    items: list[WorkItem],
    parsed: dict[int, dict],
    collections: tuple[str, ...],
    stats: CorpusStats,
    started: float,
) -> dict[str, np.ndarray]:
    """The file's arrays, the pieces in the items' order; the counts go into `stats`."""
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
    return {
        "format_version": np.array(CORPUS_FORMAT_VERSION),
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


def write_corpus_file(out_path: Path, arrays: dict[str, np.ndarray], stats: CorpusStats) -> None:
    """The .npz (written whole, then moved into place) and its .json summary beside it."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, stats=np.array(json.dumps(stats.to_dict())), **arrays)
    tmp.replace(out_path)
    stats.file_bytes = out_path.stat().st_size
    meta = {"content_hash": file_sha256(out_path), **stats.to_dict()}
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
