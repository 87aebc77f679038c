"""Fitting the copy path's lambdas by the likelihood of real music.

`fit`: for each field and longest match, the lambda that makes the validation split's real
continuations (teacher forcing, the fixed evaluation windows of engine.model.train.step) most
likely with the copy path mixed in (engine.model.train.copy_mix scores them); the voter weight
from a short list, by the same likelihood. Nothing here looks at generated music.

    python -m engine.model.train.copy_fit --model engine/data/motif-default.pt --out engine/data/copy-params.json
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.model.checkpoint import load_checkpoint
from engine.model.copy.copying import COPY_FIELDS, MAX_MATCH, CopyParams
from engine.model.copy.lookback import LOOKBACK_LEVELS, NO_LOOKBACK
from engine.model.copy.repeats import REPEAT_BINS, REPEAT_RUNS
from engine.model.corpus.load import load_corpus
from engine.model.events import PITCH
from engine.model.network import MotifSeq2Seq
from engine.model.train.copy_mix import collect, mixed_p, nll_of, no_mix
from engine.model.train.data import encode_pieces, eval_batches
from engine.model.train.step import EVAL_SEED_LEN, EVAL_TARGET_LEN
from engine.settings import DEFAULT_MODEL_PATH

WEIGHTS = (1.0, 2.0, 4.0)  # voter weights per figure matched tried by `fit`
EXACTS = (0.0, 2.0, 4.0, 8.0)  # voter weights for an exact (untransposed) match tried by `fit`
ALIGNED = (0.0, 1.0, 2.0)  # voter weights for the same bar position tried by `fit`
GRID = tuple((w, e, a) for w in WEIGHTS for e in EXACTS for a in ALIGNED)
MAX_MATCHES = (4, 6, 8)  # tried by the command; the likeliest wins
LAMBDAS = np.round(np.arange(0.0, 0.96, 0.01), 2)  # lambdas tried per field and match
BIASES = tuple(np.round(np.arange(-4.0, 4.001, 0.05), 2))  # repeat biases tried per cell


def fit_lookback(
    seen: dict[str, torch.Tensor], params: CopyParams, weight_col: int
) -> tuple[tuple[tuple[float, ...], ...], list[list[int]]]:
    """The lookback mus (engine.model.copy.lookback), field by field and level by level, that make
    the real notes most likely with `params`' lambdas; and the notes at each level."""
    table: list[tuple[float, ...]] = []
    counts: list[list[int]] = []
    for f in COPY_FIELDS:
        p_copy = mixed_p(seen, f, replace(params, lookback=NO_LOOKBACK), weight_col)
        level, g = seen[f"l{f}"], seen[f"g{f}"].double()
        table.append(_likeliest_by_level(p_copy, g, level, LOOKBACK_LEVELS))
        counts.append([int((level == lv).sum()) for lv in range(LOOKBACK_LEVELS)])
    return tuple(table), counts


def _likeliest_by_level(
    p_base: torch.Tensor, p_vote: torch.Tensor, level: torch.Tensor, levels: int
) -> tuple[float, ...]:
    """For each level, the weight w from LAMBDAS that makes the notes at that level likeliest
    under (1 - w) x p_base + w x p_vote (probabilities of each note's truth); 0 for a level
    with no notes."""
    weights = torch.tensor(LAMBDAS, dtype=torch.float64)[:, None]
    row = []
    for lv in range(levels):
        here = level == lv
        if not bool(here.any()):
            row.append(0.0)
            continue
        p = p_base[here] * (1 - weights) + p_vote[here] * weights
        nll = -torch.log(p.clamp_min(1e-300)).sum(dim=1)
        row.append(float(weights[int(nll.argmin()), 0]))
    return tuple(row)


def _best_offset(
    pr: torch.Tensor, is_rep: torch.Tensor, base: torch.Tensor, grid: torch.Tensor
) -> float:
    """The offset from `grid` that, added to each note's `base` bias, makes the notes likeliest
    under a standard normal prior on the offset."""
    bias = base[None, :] + grid[:, None]  # (G, n)
    cost = (-bias * is_rep[None, :] + torch.log1p(pr[None, :] * torch.expm1(bias))).sum(1)
    return float(grid[int((cost + grid**2 / 2).argmin())])


def fit_repeat(
    seen: dict[str, torch.Tensor], params: CopyParams, weight_col: int, rounds: int = 6
) -> tuple[tuple[tuple[float, ...], ...], list[dict[str, Any]]]:
    """The repeat biases (engine.model.copy.repeats) that make the pitches most likely with `params`'
    lambdas and mus: bias(bin, run) = a[bin] + r[run] (r of a first sounding 0), each a and r
    under a standard normal prior, fitted in turn for `rounds`. Additive rather than one bias per
    cell: the runs of 2 and 3 are rare in most bins, and in a two-fold split of the validation
    windows the additive form gained more on the held-out half (0.0079 against 0.0076 nats per
    note; docs/seed-fidelity.md). No seed (bin 0): no bias (engine.model.copy.repeats says why)."""
    p_rep = mixed_p(seen, PITCH, params, weight_col, "r")
    is_rep, cell = seen["ris"].double(), seen["rcell"]
    ok = cell >= 0
    p_rep, is_rep, cell = p_rep[ok], is_rep[ok], cell[ok]
    bins, runs = cell // REPEAT_RUNS, cell % REPEAT_RUNS
    grid = torch.tensor(BIASES, dtype=torch.float64)
    a = torch.zeros(REPEAT_BINS, dtype=torch.float64)
    r = torch.zeros(REPEAT_RUNS, dtype=torch.float64)
    for _ in range(rounds):
        for k in range(REPEAT_BINS):
            h = bins == k
            a[k] = _best_offset(p_rep[h], is_rep[h], r[runs[h]], grid) if bool(h.any()) else 0.0
        for k in range(1, REPEAT_RUNS):
            h = runs == k
            r[k] = _best_offset(p_rep[h], is_rep[h], a[bins[h]], grid) if bool(h.any()) else 0.0
    table = a[:, None] + r[None, :]
    table[0] = 0.0  # no seed: no bias applies (engine.model.copy.repeats)
    report = []
    for c in range(REPEAT_BINS * REPEAT_RUNS):
        h = cell == c
        n = int(h.sum())
        real, expected = (float(is_rep[h].mean()), float(p_rep[h].mean())) if n else (math.nan,) * 2
        bias = round(float(table.reshape(-1)[c]), 2)
        report.append({"cell": c, "notes": n, "real": real, "expected": expected, "bias": bias})
    rows = tuple(tuple(round(float(b), 2) for b in row) for row in table)
    return rows, report


def _fit_lambdas(
    seen: dict[str, torch.Tensor], grid: Sequence[tuple[float, float, float]], max_match: int
) -> tuple[CopyParams, float, int]:
    """The lambdas and voter weights of the likeliest grid column: params, NLL per note, column."""
    levels = 2 * (max_match + 1)
    best_total, best_params, best_col = math.inf, CopyParams(0.0, 0.0, no_mix(max_match)), 0
    for w_col, (w, e, a) in enumerate(grid):
        mix = tuple(
            _likeliest_by_level(
                torch.exp(seen[f"m{f}"].double()),
                seen[f"c{f}"][:, w_col].double(),
                seen[f"b{f}"],
                levels,
            )
            for f in COPY_FIELDS
        )
        params = CopyParams(float(w), float(e), mix, float(a))
        total = nll_of(seen, params, w_col)["nll_per_note"]
        if total < best_total:
            best_total, best_params, best_col = total, params, w_col
    return best_params, best_total, best_col


def fit(
    model: MotifSeq2Seq,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    grid: Sequence[tuple[float, float, float]] = GRID,
    max_match: int = MAX_MATCH,
    repeat: bool = True,
    lookback: bool = True,
) -> tuple[CopyParams, dict[str, Any]]:
    """The lambdas (per field and level, from LAMBDAS) and the voter weights (from `grid`)
    that minimise the batches' NLL per note, then with those the lookback mus (`lookback`,
    `fit_lookback`), then the repeat biases (`repeat`, `fit_repeat`); returns them and a
    report."""
    seen = collect(model, batches, device, grid, max_match)
    best_params, best_total, w_best = _fit_lambdas(seen, grid, max_match)
    nll_before_lookback = best_total
    lookback_counts: list[list[int]] = []
    if lookback:
        mus, lookback_counts = fit_lookback(seen, best_params, w_best)
        best_params = replace(best_params, lookback=mus)
        best_total = nll_of(seen, best_params, w_best)["nll_per_note"]
    nll_before_repeat = best_total
    if repeat:
        table, repeat_report = fit_repeat(seen, best_params, w_best)
        best_params = replace(best_params, repeat=table)
        best_total = nll_of(seen, best_params, w_best)["nll_per_note"]
    report = {
        "nll_without_copy": nll_of(seen, CopyParams(0, 0, no_mix(max_match)), 0)["nll_per_note"],
        "max_match": max_match,
        "nll_with_copy": best_total,
        "nll_with_copy_before_lookback": nll_before_lookback,
        "nll_with_copy_before_repeat": nll_before_repeat,
        "lookback_notes_by_level": lookback_counts,
        "repeat": repeat_report if repeat else [],
        "notes": int(seen["notes"].sum()),
        "notes_by_level": {
            str(f): [int((seen[f"b{f}"] == m).sum()) for m in range(-1, 2 * max_match + 2)]
            for f in COPY_FIELDS
        },
        "weight_column": w_best,
    }
    return best_params, report


def fit_file(
    model: Path | None,
    corpus: Path | None,
    out: Path,
    *,
    max_windows: int,
    threads: int,
    max_matches: Sequence[int],
    command: str,
) -> dict[str, Any]:
    """Fit the copy path on the validation split, each `max_matches` tried, and write the
    likeliest as `out` (the form of the shipped copy-params.json); returns what was written."""
    torch.set_num_threads(threads)
    started = time.monotonic()
    lm = load_checkpoint(model or DEFAULT_MODEL_PATH)
    val = load_corpus(corpus).pieces("validation")
    data = encode_pieces(lm.codec, val)
    batches = list(eval_batches(data, lm.codec, 64, EVAL_SEED_LEN, EVAL_TARGET_LEN, max_windows))
    fits = [fit(lm.model, batches, lm.device, max_match=m) for m in max_matches]
    params, report = min(fits, key=lambda f: f[1]["nll_with_copy"])
    report["nll_by_max_match"] = {f[1]["max_match"]: f[1]["nll_with_copy"] for f in fits}
    doc = {
        "model": lm.meta.get("version"),
        "fitted_on": f"validation split, {report['notes']} notes",
        "command": command,
        "report": report,
        "params": params.to_dict(),
        "seconds": round(time.monotonic() - started, 1),
    }
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    return doc


if __name__ == "__main__":  # the command line is engine.cli.training's
    from engine.cli.training import copy_fit_main

    raise SystemExit(copy_fit_main())
