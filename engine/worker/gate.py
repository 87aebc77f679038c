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
GATE_DRAWS = 40  # rng seeds each, for both models: 480 draws tell a model that collapses 1 time
# in 100 from one that collapses 1 time in 500 (60 draws passed the first 1 time in 2)
GATE_BARS = 4
COLLAPSE_TOLERANCE = 0.005  # share of draws the candidate may collapse in beyond the active's
# Seed fidelity (engine.model.fidelity): a candidate may not pass by forgetting its seeds. Measured on
# the same held-out seeds (4 bars, 8 continued) and rng seeds for the candidate and the active
# model. One draw of 24 seeds put the shipped model's share of recurring figures anywhere from 42%
# to 67% by its rng seeds alone (sd 0.07, against a tolerance of 0.05); 96 seeds drawn 4 times
# each: sd 0.012 (runs 0.018), 13 s a model on one core (`python -m bench.gate_noise`).
FIDELITY_SEEDS = 96
FIDELITY_DRAWS = 4
FIDELITY_SEED_BARS, FIDELITY_BARS = 4, 8
GAIN_TOLERANCE = 0.05  # nats per note the content gain (key held fixed) may fall
REUSE_TOLERANCE = 0.05  # share of the seed's figures that recur: may fall this much
LONG_RUN_TOLERANCE = 0.10  # share of continuations with 4+ repeated pitches: may rise this much
# Both shares are sampled: a candidate is refused on them only when it is worse by the tolerance
# and two standard errors of the difference beyond it, draw by draw (`compare`,
# `fidelity_reason`), so that a test split of a few pieces cannot refuse a model by chance alone.
PER_DRAW = "per_draw"  # seed_fidelity's key for its draws' own values


def draw_requests(
    seeds: list[Piece], draws: int, bars: int, styles: tuple[str, ...] | None = None
) -> list[GenerationRequest]:
    """Each seed continued `bars` bars with `draws` rng seeds: draw k of seed i has rng seed
    i + k x len(seeds), so the first draw is seed i's own and no two draws share one. The seed's
    style where the model knows it (`styles`; None: always)."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.generate.request import GenerationRequest

    n = len(seeds)
    return [
        GenerationRequest(
            s,
            ComposeOptions(
                bars=bars,
                style=s.style if styles is None or s.style in styles else None,
                rng_seed=i + k * n,
            ),
        )
        for k in range(draws)
        for i, s in enumerate(seeds)
    ]


def collapse_requests(seeds: list[Piece], draws: int = GATE_DRAWS) -> list[GenerationRequest]:
    """Each seed continued GATE_BARS bars with `draws` rng seeds (`draw_requests`)."""
    return draw_requests(seeds, draws, GATE_BARS)


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
        notes = p.notes_between(end=2 * p.beats_per_bar)
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
        notes = p.notes_between(end=FIDELITY_SEED_BARS * p.beats_per_bar)
        if len(notes) >= 8:
            seeds.append(replace(p, notes=notes))
        if len(seeds) >= n:
            break
    return seeds


def seed_fidelity(
    lm: Any, seeds: list[Piece], pieces: list[Piece], draws: int = FIDELITY_DRAWS
) -> dict[str, Any]:
    """The gate's seed-fidelity figures of one model: engine.model.fidelity's summary of its
    continuations of `seeds`, each drawn `draws` times (fixed rng seeds, `draw_requests`), and
    its seed information gain on `pieces`. PER_DRAW keeps each draw's share of figures that
    recur and whether it runs, for `compare` to pair with the other model's same draw."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.fidelity import (
        has_long_run,
        pattern_reuse,
        seed_information_gain,
        summarize_fidelity,
    )

    # deferred: as above
    from engine.model.generate.continuation import continue_batch

    requests = draw_requests(seeds, draws, FIDELITY_BARS, lm.codec.config.styles)
    outs = continue_batch(lm, requests)
    seeds_of = [seeds[i % len(seeds)] for i in range(len(outs))]
    figures = summarize_fidelity(outs, seeds_of) if seeds else {}
    gain = seed_information_gain(lm, pieces, max_windows=256)
    keep = ("pattern_reuse", "long_run_share", "key_kept_independent")
    reuse = [pattern_reuse(s.notes, o.notes) for s, o in zip(seeds_of, outs, strict=True)]
    runs = [float(has_long_run(o.notes)) for o in outs]
    return {
        **{k: figures[k] for k in keep if k in figures},
        PER_DRAW: {"pattern_reuse": reuse, "long_run_share": runs},
        "gain_content": gain.get("gain_content", float("nan")),
        "gain_total": gain.get("gain_total", float("nan")),
    }


def paired_error(cand: list[float], act: list[float]) -> float | None:
    """The standard error of the mean difference of two models' values on the same draws
    (the same seed and rng seed), pairs with a NaN left out; None with fewer than 2 pairs."""
    se = standard_error([c - a for c, a in zip(cand, act, strict=True)])
    return None if math.isnan(se) else se


def standard_error(values: list[float]) -> float:
    """The standard error of the mean of `values`, NaNs left out; NaN with fewer than 2."""
    kept = [v for v in values if not math.isnan(v)]
    if len(kept) < 2:
        return math.nan
    mean = sum(kept) / len(kept)
    return math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1) / len(kept))


def nll_per_note(lm: Any, pieces: list[Piece], max_windows: int | None = None) -> float | None:
    """The NLL per note event on `pieces` of what the model generates from: the network with
    the shipped copy path mixed in, as it decodes and as the content gain scores it
    (engine.model.train.step.evaluate_nll). What goes live is that mixture, so a network trained
    to complement the copy path (`motif train --through-copy`) is compared by it too."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.train.step import evaluate_nll

    return evaluate_nll(lm, pieces, max_windows=max_windows, with_copy=True).get("nll_per_note")


def model_figures(lm: Any, base_test: list[Piece]) -> dict[str, Any]:
    """One model's side of the gate on the base corpus's held-out pieces: NLL per note, the
    share of collapsed continuations, and seed fidelity."""
    return {
        "base_nll": nll_per_note(lm, base_test, max_windows=256),
        "collapse_rate": collapse_rate(lm, gate_seeds(base_test)),
        "fidelity": seed_fidelity(lm, fidelity_seeds(base_test), base_test),
    }


def compare(cand: dict[str, Any], act: dict[str, Any]) -> dict[str, Any]:
    """What the gate compares: the candidate's and the active model's `model_figures` side by
    side; beside the candidate's shares, the standard error of their difference from the active
    model's, draw by draw (`<share>_diff_se`; the draws themselves are not kept)."""
    fid_c, fid_a = dict(cand["fidelity"]), dict(act["fidelity"])
    draws_c, draws_a = fid_c.pop(PER_DRAW, None), fid_a.pop(PER_DRAW, None)
    if draws_c and draws_a:
        for key in draws_c:
            fid_c[f"{key}_diff_se"] = paired_error(draws_c[key], draws_a[key])
    return {
        "candidate_base_nll": cand["base_nll"],
        "active_base_nll": act["base_nll"],
        "collapse_rate": cand["collapse_rate"],
        "active_collapse_rate": act["collapse_rate"],
        "candidate_fidelity": fid_c,
        "active_fidelity": fid_a,
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
    collapsed, active = metrics.get("collapse_rate") or 0.0, metrics.get("active_collapse_rate")
    if collapsed > (active or 0.0) + (0.0 if active is None else COLLAPSE_TOLERANCE):
        against = "" if active is None else f", against {active:.1%} for the active model"
        return f"{collapsed:.1%} of its continuations collapsed to repeated notes{against}"
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

    def noise(key: str) -> float:
        """Two standard errors of the difference of the two models' shares (0: unknown)."""
        se = cand.get(f"{key}_diff_se")
        return 0.0 if se is None or math.isnan(se) else 2 * se

    reuse_floor = REUSE_TOLERANCE + noise("pattern_reuse")
    if (pair := both("pattern_reuse")) and pair[0] < pair[1] - reuse_floor:
        return (
            f"it develops its seeds less: {pair[0]:.0%} of the seed's figures recur, against "
            f"{pair[1]:.0%} for the active model"
        )
    runs_ceiling = LONG_RUN_TOLERANCE + noise("long_run_share")
    if (pair := both("long_run_share")) and pair[0] > pair[1] + runs_ceiling:
        return (
            f"{pair[0]:.0%} of its continuations repeat a pitch 4+ times in a row, against "
            f"{pair[1]:.0%} for the active model"
        )
    return None
