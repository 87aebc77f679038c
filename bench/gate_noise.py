"""How much of the retrain gate's verdict is chance? One model's gate figures drawn again and again.

`python -m bench.gate_noise MODEL.pt [--seeds 96] [--draws 4] [--blocks 6] [--collapse-draws 40]
[--threads 1]`: the gate's seed-fidelity figures (engine.worker.gate.seed_fidelity's shares of
figures that recur, runs and key kept) on the corpus's test split, `--blocks` times, each block
with rng seeds of its own; their spread (sd) is what the gate's tolerances must stand above. And
the model's collapses in `--collapse-draws` draws of each of the gate's 12 seeds. The gate's
settings before 2026-12-08 were `--seeds 24 --draws 1 --collapse-draws 5`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FIGURES = ("pattern_reuse", "long_run_share", "key_kept_independent")
BLOCK = 1_000_003  # rng seeds of block b start at b x BLOCK: no two blocks share one


def in_block(requests: list[Any], block: int) -> list[Any]:
    """The requests with their rng seeds moved to block `block` (block 0: the gate's own)."""
    from dataclasses import replace

    return [
        replace(r, options=replace(r.options, rng_seed=block * BLOCK + r.options.rng_seed))
        for r in requests
    ]


def run(
    model: Path,
    n_seeds: int = 96,
    draws: int = 4,
    blocks: int = 6,
    collapse_draws: int = 40,
    corpus: Path | None = None,
) -> dict[str, Any]:
    from engine.model.checkpoint import load_checkpoint
    from engine.model.corpus.load import load_corpus
    from engine.model.fidelity import summarize_fidelity
    from engine.model.generate.continuation import continue_batch
    from engine.music.metrics import is_collapsed
    from engine.worker.gate import (
        FIDELITY_BARS,
        collapse_requests,
        draw_requests,
        fidelity_seeds,
        gate_seeds,
    )

    lm = load_checkpoint(model)
    test = load_corpus(corpus).pieces("test")
    seeds = fidelity_seeds(test, n_seeds)
    rows: list[dict[str, float]] = []
    for b in range(blocks):
        t0 = time.perf_counter()
        requests = in_block(draw_requests(seeds, draws, FIDELITY_BARS, lm.codec.config.styles), b)
        outs = continue_batch(lm, requests)
        figures = summarize_fidelity(outs, [seeds[i % len(seeds)] for i in range(len(outs))])
        rows.append({k: figures[k] for k in FIGURES} | {"seconds": time.perf_counter() - t0})
    collapsed = continue_batch(lm, collapse_requests(gate_seeds(test), collapse_draws))
    return {
        "model": str(model),
        "seeds": len(seeds),
        "draws": draws,
        "blocks": rows,
        "sd": {k: statistics.stdev([r[k] for r in rows]) if blocks > 1 else None for k in FIGURES},
        "collapsed": sum(is_collapsed(o.notes) for o in collapsed),
        "collapse_draws": len(collapsed),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate_noise", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--seeds", type=int, default=96)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--collapse-draws", type=int, default=40)
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if min(args.seeds, args.draws, args.blocks, args.collapse_draws) < 1:
        parser.error("--seeds, --draws, --blocks and --collapse-draws must be at least 1")
    import torch

    torch.set_num_threads(args.threads)
    result = run(args.model, args.seeds, args.draws, args.blocks, args.collapse_draws, args.corpus)
    print(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
