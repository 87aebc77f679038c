"""Two checkpoints' generation speed side by side: ms per note at B=1, interleaved rounds.

`python -m bench.model_speed OLD.pt NEW.pt [--repeats 5] [--threads 1]`: each round continues the
same 8 held-out seeds (4 bars each, 8 bars continued, the generator's default settings) with each
model in turn; the figure is the median over rounds of seconds / notes made.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import workload

log = logging.getLogger(__name__)


def run(
    paths: Sequence[Path],
    repeats: int = 5,
    n_seeds: int = 8,
    bars: int = 8,
    without_copy: bool = False,
) -> dict[str, Any]:
    from engine.model.checkpoint import load_checkpoint
    from engine.model.generate.continuation import continue_seed
    from engine.model.generate.request import Knobs

    pieces, music_label = workload.music(max(n_seeds, 16))
    seeds = [workload.first_bars(p, 4) for p in pieces[:n_seeds]]
    models = {str(p): load_checkpoint(p) for p in paths}

    def subject(lm: Any, copy: bool = True):
        def go() -> int:
            return sum(
                len(continue_seed(lm, s, bars, seed_rng=i, knobs=Knobs(copy=copy)).notes)
                for i, s in enumerate(seeds)
            )

        return go

    subjects = {name: subject(lm) for name, lm in models.items()}
    if without_copy:  # each model again with its copy path off (engine.model.copy.copying)
        subjects.update({f"{n} without copying": subject(lm, False) for n, lm in models.items()})
    for go in subjects.values():  # warm
        go()
    t = workload.interleaved(subjects, repeats)
    return {
        "music": music_label,
        "repeats": repeats,
        "ms_per_note": {k: workload.median([1000 * s / n for s, n in v]) for k, v in t.items()},
        "notes_per_round": {k: v[0][1] for k, v in t.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_speed", description=__doc__)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--without-copy", action="store_true", help="each model without copying too"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    r = run(args.models, repeats=args.repeats, without_copy=args.without_copy)
    for name, ms in r["ms_per_note"].items():
        print(f"{name}: {ms:.3f} ms per note ({r['notes_per_round'][name]} notes per round)")
    first = next(iter(r["ms_per_note"].values()))
    for name, ms in list(r["ms_per_note"].items())[1:]:
        print(f"{name} / first: {ms / first:.2f}x")
    print(f"median of {r['repeats']} interleaved rounds; {r['music']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
