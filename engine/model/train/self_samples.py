"""Reward-ranked self-samples: training on what the model itself generates, kept only where it
comes closest to the real music (expert iteration; RAFT, Dong et al., 2023).

Teacher forcing trains the model on real continuations only, so it never learns from the states
its own sampling reaches. Here the model continues the opening bars of each training piece `k`
times; the draw closest to that piece's real continuation, if it does not collapse, is written
back, after the real seed, as one more training piece. A run on the corpus this writes then
trains on the model's own best continuations beside the real music.

Closeness compares a draw with the real continuation that follows the same seed: the overlap of
their pitch-class, onset-interval and note-length histograms (Yang and Lerch, 2020), less how far
apart their note counts (log ratio) and mean pitches (in octaves) lie, less how far apart they
lie in the share of the seed's figures that recur and in notes per onset, and a point each for
agreeing on whether the key is kept and on a pitch held 4+ times in a row. Only the training
split is drawn from or compared with; the validation and test splits are copied unchanged.

`python -m engine.model.train.self_samples --model M.pt --corpus C.npz --out OUT.npz [--k 4]
[--seed-bars 2 4] [--batch 64] [--threads 1]`
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine.errors import BadParams
from engine.model.checkpoint import LoadedModel
from engine.model.corpus.build import write_corpus_file
from engine.model.corpus.load import SPLITS, Corpus, CorpusStats
from engine.model.events import EventCodec
from engine.model.fidelity import has_long_run, notes_per_onset, pattern_reuse
from engine.model.generate.continuation import continue_batch
from engine.model.generate.request import GenerationRequest
from engine.music.metrics import (
    ioi_histogram,
    is_collapsed,
    key_kept,
    note_length_histogram,
    overlap_area,
    pitch_class_histogram,
)
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions

log = logging.getLogger(__name__)

COLLECTION = "self-samples"  # the written pieces' collection in the corpus file


def closeness(draw: Sequence[Note], real: Sequence[Note], seed: Sequence[Note] = ()) -> float:
    """How close a drawn continuation lies to the real one (higher is closer; at most 3, or 5
    with a `seed`): histogram overlaps, less the log ratio of note counts and the mean pitches'
    distance in octaves; with the seed, also less the gap in how many of its figures recur and
    the log ratio of notes per onset, and 1 for agreeing with the real one on whether the key is
    kept (Krumhansl-Schmuckler, `key_kept`) and on a pitch 4+ times in a row. -inf when either
    is empty."""
    if not draw or not real:
        return -math.inf
    score = overlap_area(pitch_class_histogram(draw), pitch_class_histogram(real))
    score += overlap_area(ioi_histogram(draw), ioi_histogram(real))
    score += overlap_area(note_length_histogram(draw), note_length_histogram(real))
    score -= abs(math.log(len(draw) / len(real)))
    mean_draw = sum(n.pitch for n in draw) / len(draw)
    mean_real = sum(n.pitch for n in real) / len(real)
    score -= abs(mean_draw - mean_real) / 12
    if not seed:
        return score
    reuse = pattern_reuse(seed, draw) - pattern_reuse(seed, real)
    score -= 0.0 if math.isnan(reuse) else abs(reuse)
    score -= abs(math.log(notes_per_onset(draw) / notes_per_onset(real)))
    score += key_kept(seed, draw) == key_kept(seed, real)
    return score + (has_long_run(draw) == has_long_run(real))


def seed_and_real(piece: Piece, seed_bars: int, bars: int) -> tuple[Piece, list[Note]] | None:
    """The piece's first `seed_bars` bars as a seed, each note ending by the cut (so the draw
    starts there, as the real continuation does), and the real notes of the `bars` after them;
    None when either has fewer than 3 notes."""
    cut = seed_bars * piece.beats_per_bar
    end = cut + bars * piece.beats_per_bar
    seed = piece.notes_between(end=cut, clip=True)
    real = list(piece.notes_between(cut, end))
    if len(seed) < 3 or len(real) < 3:
        return None
    return replace(piece, notes=seed), real


Job = tuple[int, int, Piece, list[Note]]  # piece index, seed bars, seed, real continuation


def _requests(lm: LoadedModel, jobs: list[Job], k: int, rng_seed: int) -> list[GenerationRequest]:
    """`k` draws per job, rng seeds rng_seed + k x piece index + draw (open endings)."""
    styles = lm.codec.config.styles
    return [
        GenerationRequest(
            seed,
            ComposeOptions(
                bars=2 * bars,
                style=seed.style if seed.style in styles else None,
                rng_seed=rng_seed + k * i + d,
                ending="open",
            ),
        )
        for i, bars, seed, _ in jobs
        for d in range(k)
    ]


def best_draws(
    lm: LoadedModel,
    pieces: Sequence[Piece],
    *,
    k: int = 4,
    seed_bars: Sequence[int] = (4,),
    batch: int = 64,
    rng_seed: int = 0,
) -> tuple[list[Piece | None], dict[str, float]]:
    """For each piece (seeded with `seed_bars[i % len(seed_bars)]` bars, twice as many
    continued), the seed followed by the closest of `k` draws that does not collapse, or None;
    and counts: how many draws collapsed and the mean closeness of the kept and of all draws."""
    jobs: list[Job] = []
    for i, piece in enumerate(pieces):
        bars = seed_bars[i % len(seed_bars)]
        cut = seed_and_real(piece, bars, 2 * bars)
        if cut is not None:
            jobs.append((i, bars, *cut))
    requests = _requests(lm, jobs, k, rng_seed)
    outs: list[Piece] = []
    for lo in range(0, len(requests), batch):
        outs += continue_batch(lm, requests[lo : lo + batch])
    kept: list[Piece | None] = [None] * len(pieces)
    scores, kept_scores, collapsed = [], [], 0
    for j, (i, _, seed, real) in enumerate(jobs):
        ranked = []
        for out in outs[j * k : (j + 1) * k]:
            s = closeness(out.notes, real, seed.notes)
            scores.append(s)
            if is_collapsed(out.notes):
                collapsed += 1
            else:
                ranked.append((s, out))
        if ranked:
            s, best = max(ranked, key=lambda x: x[0])
            kept_scores.append(s)
            kept[i] = replace(seed, notes=seed.notes + best.notes)
    counts = {
        "seeds": len(jobs),
        "draws": len(requests),
        "collapsed": collapsed,
        "kept": len(kept_scores),
        "closeness_all": _finite_mean(scores),
        "closeness_kept": _finite_mean(kept_scores),
    }
    return kept, counts


def _finite_mean(values: list[float]) -> float:
    """The mean of the finite values (an empty draw scores -inf); NaN for none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def with_self_samples(
    corpus: Corpus, extra: dict[int, Piece], codec: EventCodec
) -> dict[str, np.ndarray]:
    """The corpus's arrays with `extra` (by the index of the training piece each came from)
    appended to the training split, in collection COLLECTION and their source's style; their
    notes on the codec's tick grid (`EventCodec.note_ticks`), which must be the corpus's."""
    a = corpus.arrays()
    order = sorted(extra)
    rows = [np.stack(codec.note_ticks(extra[i]), axis=1).astype(np.int32) for i in order]
    collections = [*(str(c) for c in a["collections"]), COLLECTION]
    a["collections"] = np.array(collections)
    a["notes"] = np.concatenate([a["notes"], *rows]) if rows else a["notes"]
    ends = a["offsets"][-1] + np.cumsum([len(r) for r in rows], dtype=np.int64)
    a["offsets"] = np.concatenate([a["offsets"], ends])
    a["collection"] = np.concatenate(
        [a["collection"], np.full(len(order), len(collections) - 1, np.int8)]
    )
    a["split"] = np.concatenate([a["split"], np.full(len(order), SPLITS.index("train"), np.int8)])
    for key in ("style", "tempo", "time_signature"):
        a[key] = np.concatenate([a[key], a[key][order]]) if order else a[key]
    a["name"] = np.array([*a["name"].tolist(), *(f"{a['name'][i]} (self-sample)" for i in order)])
    a["path"] = np.array([*a["path"].tolist(), *(f"{a['path'][i]}#self" for i in order)])
    return a


def check_source(corpus: Corpus, codec: EventCodec | None = None) -> None:
    """Refuse a corpus that already holds self-samples, or whose tick grid is not the codec's."""
    if COLLECTION in corpus.stats.pieces:
        raise BadParams(
            f"{corpus.path} already holds self-samples: draw from the corpus it came from"
        )
    if codec is not None and codec.config.ticks_per_beat != corpus.ticks_per_beat:
        raise BadParams(
            f"{corpus.path} has {corpus.ticks_per_beat} ticks per beat, the model "
            f"{codec.config.ticks_per_beat}"
        )


def write_self_samples(
    lm: LoadedModel,
    corpus: Corpus,
    out: Path,
    *,
    k: int = 4,
    seed_bars: Sequence[int] = (4,),
    batch: int = 64,
    rng_seed: int = 0,
    threads: int | None = None,
) -> dict[str, float]:
    """Draw (`best_draws`, on the training split; `threads`: torch's, None leaves them) and
    write the corpus with its self-samples to `out` (an .npz and its .json summary); the
    counts, also in the summary."""
    if threads is not None:
        torch.set_num_threads(threads)
    check_source(corpus, lm.codec)
    train = corpus.indices("train")
    pieces = [corpus.piece(int(i)) for i in train]
    kept, counts = best_draws(lm, pieces, k=k, seed_bars=seed_bars, batch=batch, rng_seed=rng_seed)
    log.info("self-samples: %s", counts)
    extra = {int(train[j]): p for j, p in enumerate(kept) if p is not None}
    arrays = with_self_samples(corpus, extra, lm.codec)
    stats = CorpusStats.from_dict(corpus.stats.to_dict())
    stats.pieces[COLLECTION] = len(extra)
    stats.splits["train"] = stats.splits.get("train", 0) + len(extra)
    stats.total_notes = int(len(arrays["notes"]))
    write_corpus_file(out, arrays, stats)
    summary = {"source": str(corpus.path), "source_hash": corpus.content_hash, **counts}
    out.with_suffix(".self-samples.json").write_text(json.dumps(summary, indent=2) + "\n")
    return counts


if __name__ == "__main__":  # the command line is engine.cli.training's
    from engine.cli.training import self_samples_main

    raise SystemExit(self_samples_main())
