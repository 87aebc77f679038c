"""The strain plan: which continuation bars replay a seed bar 8, 4 or 2 bars back.

Real tunes bring their strains back at places in the form, note for note; a sampler that draws
every note afresh rarely replays a whole bar even when the network expects it (six notes at 80%
each come out together a quarter of the time). So before decoding, each continuation bar draws,
from the corpus's own chances at its place in the phrase (engine.model.corpus.strain_returns,
fitted on the training split), whether it replays a seed bar and which; the lookback then votes
for that bar's notes with weight `lookback.PLAN_MU` instead of its fitted mu (engine.model.copy.lookback).
The draws come from a generator of the row's own (its rng seed), so a row plans alike alone or
in a batch, and the same rng seed gives the same plan.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

from engine.model.copy.lookback import LAG_BARS

PHRASE = 8  # bars of the phrase a bar's place is read in
DEFAULT_STRAINS_PATH = Path(__file__).resolve().parents[2] / "data" / "strain-returns.json"
Table = dict[int, list[list[float]]]  # longest available lag -> [lag][place] chance
_PLAN_STREAM = 0x5712A1  # added to a row's rng seed: the plan's draws are their own stream


def load_strain_returns(path: Path = DEFAULT_STRAINS_PATH) -> Table:
    """The shipped chances ({} when there are none: no strain plan)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {int(k): v for k, v in raw["chances"].items()}


@cache
def shipped_strains() -> Table:
    """The shipped chances, read once per process."""
    return load_strain_returns()


def plan_strains(table: Table, bar: int, seed_end: int, bars: int, rng_seed: int) -> list[int]:
    """Per bar index from the seed's first bar (tick 0), the index in LAG_BARS of the lag that
    bar replays, or -1. `bar`: ticks per bar (0: unknown, no plan); `seed_end`: the seed's last
    tick; `bars`: bars to continue. Only bars after the seed's last full bar are planned, and a
    lag only when the bar it looks back to lies wholly in the seed."""
    if bar <= 0 or not table:
        return []
    first = seed_end // bar  # the bar the seed ends in (its rest is continuation)
    last = first + bars + 1
    plan = [-1] * last
    gen = torch.Generator().manual_seed((rng_seed + _PLAN_STREAM) % (2**63))
    draws = torch.rand(last, len(LAG_BARS), generator=gen).tolist()
    for b in range(first, last):
        usable = [lag for lag in LAG_BARS if b - lag >= 0 and (b - lag + 1) * bar <= seed_end]
        if not usable:
            continue
        longest = max(usable)
        chances = table.get(longest)
        if chances is None:
            continue
        lags = sorted((lag for lag in LAG_BARS if lag <= longest), reverse=True)
        for i, lag in enumerate(lags):
            if lag in usable and draws[b][i] < chances[i][b % PHRASE]:
                plan[b] = LAG_BARS.index(lag)
                break
    return plan


def plan_tensor(plans: list[list[int]], device: torch.device) -> torch.Tensor | None:
    """The rows' plans as one (B, bars) tensor, -1 padded; None when no row plans anything."""
    if not any(lag >= 0 for plan in plans for lag in plan):
        return None
    width = max(len(p) for p in plans)
    out = torch.full((len(plans), width), -1, dtype=torch.int64)
    for i, plan in enumerate(plans):
        out[i, : len(plan)] = torch.tensor(plan, dtype=torch.int64)
    return out.to(device)
