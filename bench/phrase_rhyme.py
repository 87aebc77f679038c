"""Do phrase endings rhyme? A tune that rests on a held note at the end of its 4th bar mostly
rests at the end of its 8th too; does Motif's continuation of its first 4 bars?

`python -m bench.phrase_rhyme [--model engine/data/motif-default.pt] [--split validation]`: for
every piece of the corpus split with 12 bars or more, whether a note of a beat or more starts in
bar 4 (the seed's last) and in bar 8 (continuation bar 4), in the real music and in Motif's
continuation (8 bars, open ending, rng seed = the piece's index), split by whether the seed
held. Never the judge's sets (the test split, Aird's Airs): this is where a generation rule
would be justified or not, not where one is measured.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bench.form import beat_length, held_in_bar
from engine.music.notes import Piece
from engine.music.request import ComposeOptions
from engine.settings import DEFAULT_MODEL_PATH

SEED_BARS, BARS = 4, 8


def rhyme(lm: object, pieces: Sequence[Piece], batch: int = 16) -> dict[str, dict[str, float]]:
    """{"seed held" | "seed not held": {"pieces", "real", "motif"}}: the share of pieces whose
    bar 8 holds a note, in the real music and in Motif's continuation."""
    from engine.model.generate.continuation import continue_batch
    from engine.model.generate.request import GenerationRequest

    long = [p for p in pieces if p.notes and p.notes[-1].start >= 3 * SEED_BARS * p.beats_per_bar]
    seeds = [
        replace(p, notes=tuple(n for n in p.notes if n.start < SEED_BARS * p.beats_per_bar - 1e-9))
        for p in long
    ]
    requests = [
        GenerationRequest(s, ComposeOptions(bars=BARS, rng_seed=i, ending="open", style=s.style))
        for i, s in enumerate(seeds)
    ]
    made = [
        o
        for k in range(0, len(requests), batch)
        for o in continue_batch(lm, requests[k : k + batch])
    ]
    counts: Counter[tuple[bool, str]] = Counter()
    for piece, out in zip(long, made, strict=True):
        beat, bpb = beat_length(piece.time_signature), piece.beats_per_bar
        held = held_in_bar(piece.notes, SEED_BARS, 0.0, bpb, beat)
        counts[(held, "pieces")] += 1
        counts[(held, "real")] += held_in_bar(piece.notes, 2 * SEED_BARS, 0.0, bpb, beat)
        counts[(held, "motif")] += held_in_bar(out.notes, 2 * SEED_BARS, 0.0, bpb, beat)
    result = {}
    for held, name in ((True, "seed held"), (False, "seed not held")):
        n = counts[(held, "pieces")]
        result[name] = {
            "pieces": float(n),
            "real": counts[(held, "real")] / n if n else float("nan"),
            "motif": counts[(held, "motif")] / n if n else float("nan"),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.phrase_rhyme", description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--corpus", type=Path, default=None)
    p.add_argument("--split", default="validation", choices=["train", "validation"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from engine.model.checkpoint import load_checkpoint
    from engine.model.corpus.load import load_corpus

    torch.set_num_threads(args.threads)
    figures = rhyme(load_checkpoint(args.model), load_corpus(args.corpus).pieces(args.split))
    print(f"| {args.split} split | pieces | bar 8 holds a note: real | Motif |")
    print("|---|---:|---:|---:|")
    for name, row in figures.items():
        print(f"| {name} in bar 4 | {row['pieces']:.0f} | {row['real']:.0%} | {row['motif']:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
