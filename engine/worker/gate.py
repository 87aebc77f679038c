"""The retrain gate: a candidate becomes active only if its NLL on the base corpus's held-out
set (with the copy path mixed in, as it generates) is not worse than the active model's beyond a
tolerance, its continuations do not collapse and it keeps its seeds about as well
(engine.model.fidelity)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from engine.music.metrics import is_collapsed
from engine.music.notes import Piece
from engine.music.request import ComposeOptions

if TYPE_CHECKING:  # the model's side stays unimported on a render-only worker
    from engine.model.generate.request import GenerationRequest

GATE_SEEDS = 12  # held-out seeds continued for the collapse check
GATE_DRAWS = 5  # rng seeds each: a model that collapses 1 time in 30 passes 12 draws 2 times in
# 3, and 60 draws 1 time in 8
GATE_BARS = 4
# Seed fidelity (engine.model.fidelity): a candidate may not pass by forgetting its seeds. Measured on
# the same held-out seeds (4 bars, 8 continued) for the candidate and the active model.
FIDELITY_SEEDS = 24
FIDELITY_SEED_BARS, FIDELITY_BARS = 4, 8
GAIN_TOLERANCE = 0.05  # nats per note the content gain (key held fixed) may fall
REUSE_TOLERANCE = 0.05  # share of the seed's figures that recur: may fall this much
LONG_RUN_TOLERANCE = 0.10  # share of continuations with 4+ repeated pitches: may rise this much


def collapse_requests(seeds: list[Piece], draws: int = GATE_DRAWS) -> list[GenerationRequest]:
    """Each seed continued GATE_BARS bars with `draws` rng seeds: draw k of seed i has rng seed
    i + k x len(seeds), so the first draw is seed i's own and no two draws share one."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.generate.request import GenerationRequest

    n = len(seeds)
    return [
        GenerationRequest(s, ComposeOptions(bars=GATE_BARS, style=s.style, rng_seed=i + k * n))
        for k in range(draws)
        for i, s in enumerate(seeds)
    ]


def collapse_rate(lm: Any, seeds: list[Piece], draws: int = GATE_DRAWS) -> float:
    """The share of `collapse_requests`' continuations that collapse to repeated notes."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.generate.continuation import continue_batch

    if not seeds:
        return 0.0
    outs = continue_batch(lm, collapse_requests(seeds, draws))
    return sum(is_collapsed(o.notes) for o in outs) / len(outs)


def gate_seeds(pieces: list[Piece], n: int = GATE_SEEDS) -> list[Piece]:
    """The first two bars of held-out pieces, as seeds."""
    from dataclasses import replace

    seeds = []
    for p in pieces:
        cut = 2 * p.beats_per_bar
        notes = tuple(x for x in p.notes if x.start < cut)
        if len(notes) >= 3:
            seeds.append(replace(p, notes=notes))
        if len(seeds) >= n:
            break
    return seeds


def fidelity_seeds(pieces: list[Piece], n: int = FIDELITY_SEEDS) -> list[Piece]:
    """The first FIDELITY_SEED_BARS bars of held-out pieces with at least 8 notes there."""
    from dataclasses import replace

    seeds = []
    for p in pieces:
        cut = FIDELITY_SEED_BARS * p.beats_per_bar
        notes = tuple(x for x in p.notes if x.start < cut - 1e-9)
        if len(notes) >= 8:
            seeds.append(replace(p, notes=notes))
        if len(seeds) >= n:
            break
    return seeds


def seed_fidelity(lm: Any, seeds: list[Piece], pieces: list[Piece]) -> dict[str, float]:
    """The gate's seed-fidelity figures of one model: engine.model.fidelity's summary of its
    continuations of `seeds` (fixed rng seeds) and its seed information gain on `pieces`."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.fidelity import seed_information_gain, summarize_fidelity
    from engine.model.generate.continuation import continue_batch
    from engine.model.generate.request import GenerationRequest

    styles = lm.codec.config.styles
    outs = continue_batch(
        lm,
        [
            GenerationRequest(
                s,
                ComposeOptions(
                    bars=FIDELITY_BARS, style=s.style if s.style in styles else None, rng_seed=i
                ),
            )
            for i, s in enumerate(seeds)
        ],
    )
    figures = summarize_fidelity(outs, seeds) if seeds else {}
    gain = seed_information_gain(lm, pieces, max_windows=256)
    keep = ("pattern_reuse", "long_run_share", "key_kept_independent")
    return {
        **{k: figures[k] for k in keep if k in figures},
        "gain_content": gain.get("gain_content", float("nan")),
        "gain_total": gain.get("gain_total", float("nan")),
    }


def nll_per_note(lm: Any, pieces: list[Piece], max_windows: int | None = None) -> float | None:
    """The NLL per note event on `pieces` of what the model generates from: the network with
    the shipped copy path mixed in, as it decodes and as the content gain scores it
    (engine.model.train.step.evaluate_nll). What goes live is that mixture, so a network trained
    to complement the copy path (`motif train --through-copy`) is compared by it too."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.train.step import evaluate_nll

    return evaluate_nll(lm, pieces, max_windows=max_windows, with_copy=True).get("nll_per_note")


def model_figures(lm: Any, base_test: list[Piece], collapse: bool = True) -> dict[str, Any]:
    """One model's side of the gate on the base corpus's held-out pieces: NLL per note, the
    share of collapsed continuations (the candidate's only: `collapse`), and seed fidelity."""
    return {
        "base_nll": nll_per_note(lm, base_test, max_windows=256),
        "collapse_rate": collapse_rate(lm, gate_seeds(base_test)) if collapse else None,
        "fidelity": seed_fidelity(lm, fidelity_seeds(base_test), base_test),
    }


def compare(cand: dict[str, Any], act: dict[str, Any]) -> dict[str, Any]:
    """What the gate compares: the candidate's and the active model's `model_figures` side by
    side; the collapse share is the candidate's."""
    return {
        "candidate_base_nll": cand["base_nll"],
        "active_base_nll": act["base_nll"],
        "collapse_rate": cand["collapse_rate"],
        "candidate_fidelity": cand["fidelity"],
        "active_fidelity": act["fidelity"],
    }


def gate(metrics: dict[str, Any], tolerance: float) -> str | None:
    """None when the candidate may go live; otherwise the reason it may not."""
    cand, act = metrics.get("candidate_base_nll"), metrics.get("active_base_nll")
    if cand is None or act is None:
        return "the candidate could not be evaluated on the base corpus"
    if cand > act + tolerance:
        return (
            f"base-corpus NLL {cand:.3f} is worse than the active model's {act:.3f} "
            f"by more than {tolerance:g}"
        )
    if metrics.get("collapse_rate", 0.0) > 0.0:
        return f"{metrics['collapse_rate']:.0%} of its continuations collapsed to repeated notes"
    return fidelity_reason(metrics.get("candidate_fidelity"), metrics.get("active_fidelity"))


def fidelity_reason(cand: dict[str, float] | None, act: dict[str, float] | None) -> str | None:
    """Why the candidate keeps its seeds worse than the active model (None: it does not)."""
    cand, act = cand or {}, act or {}

    def both(key: str) -> tuple[float, float] | None:
        c, a = cand.get(key), act.get(key)
        if c is None or a is None or math.isnan(c) or math.isnan(a):
            return None
        return float(c), float(a)

    if (pair := both("gain_content")) and pair[0] < pair[1] - GAIN_TOLERANCE:
        return (
            f"it forgets its seeds: the seed's notes tell it {pair[0]:.3f} nats per note beyond "
            f"the key, the active model {pair[1]:.3f} (tolerance {GAIN_TOLERANCE:g})"
        )
    if (pair := both("pattern_reuse")) and pair[0] < pair[1] - REUSE_TOLERANCE:
        return (
            f"it develops its seeds less: {pair[0]:.0%} of the seed's figures recur, against "
            f"{pair[1]:.0%} for the active model"
        )
    if (pair := both("long_run_share")) and pair[0] > pair[1] + LONG_RUN_TOLERANCE:
        return (
            f"{pair[0]:.0%} of its continuations repeat a pitch 4+ times in a row, against "
            f"{pair[1]:.0%} for the active model"
        )
    return None
