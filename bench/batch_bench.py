"""Batch scaling: 1, 8 and 32 concurrent requests decoded together by `continue_batch`, as a
worker drains waiting jobs into one batch.
"""

from __future__ import annotations

import logging
from typing import Any

from bench import workload
from bench.generation_bench import count_steps
from engine.model.generate.continuation import continue_batch
from engine.model.generate.request import GenerationRequest
from engine.music.request import ComposeOptions

log = logging.getLogger(__name__)

TEMPERATURES = (0.8, 0.9, 1.0, 1.1, 1.2)
TOP_PS = (0.9, 0.95, 1.0)


def requests(n: int, bars: int, seed_bars: int = 4, corpus_path: str | None = None
             ) -> tuple[list[GenerationRequest], str]:  # fmt: skip
    """`n` different requests: user-sized seeds (the first `seed_bars` bars of different pieces),
    temperatures, top-p and random seeds."""
    pieces, label = workload.music(max(n, 8), corpus_path)
    seeds = [workload.first_bars(p, seed_bars) for p in pieces]
    reqs = [
        GenerationRequest(
            seeds[i % len(seeds)],
            ComposeOptions(
                bars=bars,
                temperature=TEMPERATURES[i % len(TEMPERATURES)],
                top_p=TOP_PS[i % len(TOP_PS)],
                rng_seed=1000 + i,
            ),
        )
        for i in range(n)
    ]
    return reqs, label


def run(
    repeats: int = 5,
    sizes: tuple[int, ...] = (1, 8, 32),
    bars: int = 8,
    model_path: str | None = None,
    corpus_path: str | None = None,
) -> dict[str, Any]:
    """Wall time and aggregate notes/s per batch size, median of `repeats` interleaved rounds.

    B=1 decodes each of the `max(sizes)` requests alone, one after another (wall = the mean per
    request: what one user waits for when alone); B>1 decodes the first B requests in one
    `continue_batch` call (wall = that call: every row of a batch waits for the longest).
    ratio = wall(largest) / wall(1), per round, median."""
    choice = workload.motif_model(model_path)
    lm = choice.lm
    n = max(sizes)
    reqs, music_label = requests(n, bars, corpus_path=corpus_path)

    def decode(b: int):  # type: ignore[no-untyped-def]
        if b == 1:
            return lambda: sum(len(continue_batch(lm, [r])[0].notes) for r in reqs)
        return lambda: sum(len(p.notes) for p in continue_batch(lm, reqs[:b]))

    # Warm, and count each size's decode steps (a batch's: its longest row's notes + 1).
    steps = {b: count_steps(lm, decode(b))[1] for b in sizes}
    t = workload.interleaved({str(b): decode(b) for b in sizes}, repeats)
    out: dict[str, Any] = {"model": choice.label, "music": music_label,
                           "repeats": repeats, "bars": bars, "sizes": list(sizes)}  # fmt: skip
    calls = {b: (n if b == 1 else 1) for b in sizes}  # continue_batch calls per round
    walls: dict[int, list[float]] = {b: [s / calls[b] for s, _ in t[str(b)]] for b in sizes}
    for b in sizes:
        runs = t[str(b)]
        out[f"b{b}_wall_s"] = workload.median(walls[b])
        out[f"b{b}_notes"] = runs[0][1]
        out[f"b{b}_notes_per_s"] = workload.median([notes / s for s, notes in runs])
        out[f"b{b}_steps"] = steps[b] / calls[b]
        out[f"b{b}_ms_per_step"] = 1000 * workload.median([s for s, _ in runs]) / steps[b]
    lo, hi = min(sizes), max(sizes)
    out["b1_alone"] = n if lo == 1 else 0
    out["ratio"] = workload.median([a / b for a, b in zip(walls[hi], walls[lo], strict=True)])
    out["ratio_label"] = f"wall({hi}) / wall({lo})"
    # A batch also runs as many steps as its longest row: per step shows what width alone costs.
    out["per_step_ratio"] = out[f"b{hi}_ms_per_step"] / out[f"b{lo}_ms_per_step"]
    out["ratio_target"] = 4.0
    return out
