"""The gate's collapse check draws each held-out seed several times, with rng seeds of its own."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from engine.model.fidelity import has_long_run, pattern_reuse, summarize_fidelity
from engine.model.generate.continuation import continue_batch
from engine.music.metrics import is_collapsed
from engine.worker.gate import (
    FIDELITY_BARS,
    FIDELITY_DRAWS,
    GATE_BARS,
    GATE_DRAWS,
    PER_DRAW,
    collapse_rate,
    collapse_requests,
    compare,
    draw_requests,
    seed_fidelity,
    standard_error,
)
from tests.conftest import synthetic_pieces

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_each_seed_is_drawn_with_rng_seeds_of_its_own():
    seeds = synthetic_pieces(3, seed=4)
    requests = collapse_requests(seeds, draws=GATE_DRAWS)
    assert GATE_DRAWS >= 3 and len(requests) == 3 * GATE_DRAWS
    rng = [r.options.rng_seed for r in requests]
    assert len(set(rng)) == len(rng)  # no two draws alike
    assert rng[:3] == [0, 1, 2]  # the first draw is each seed's own, as before draws
    for k in range(GATE_DRAWS):  # every draw continues every seed, GATE_BARS bars
        assert [r.seed for r in requests[3 * k : 3 * k + 3]] == seeds
    assert {r.options.bars for r in requests} == {GATE_BARS}


def test_the_collapse_share_counts_every_draw(tiny_lm):
    seeds = synthetic_pieces(2, seed=5)
    outs = continue_batch(tiny_lm, collapse_requests(seeds, draws=3))
    # the draws of one seed are different music, so a collapse in any of them would count
    assert outs[0].notes != outs[2].notes and outs[1].notes != outs[3].notes
    expected = sum(is_collapsed(o.notes) for o in outs) / 6
    assert collapse_rate(tiny_lm, seeds, draws=3) == pytest.approx(expected)
    assert collapse_rate(tiny_lm, []) == 0.0


def test_seed_fidelity_pools_every_draw_of_every_seed(tiny_lm):
    seeds = synthetic_pieces(3, seed=6)
    requests = draw_requests(seeds, FIDELITY_DRAWS, FIDELITY_BARS, tiny_lm.codec.config.styles)
    assert FIDELITY_DRAWS >= 2 and len(requests) == 3 * FIDELITY_DRAWS
    assert len({r.options.rng_seed for r in requests}) == len(requests)
    assert {r.options.bars for r in requests} == {FIDELITY_BARS}
    outs = continue_batch(tiny_lm, requests)
    pooled = summarize_fidelity(outs, [r.seed for r in requests])
    got = seed_fidelity(tiny_lm, seeds, seeds)
    for key in ("pattern_reuse", "long_run_share", "key_kept_independent"):
        assert got[key] == pytest.approx(pooled[key], nan_ok=True)
    reuse = [pattern_reuse(r.seed.notes, o.notes) for r, o in zip(requests, outs, strict=True)]
    runs = [float(has_long_run(o.notes)) for o in outs]
    assert got[PER_DRAW]["pattern_reuse"] == pytest.approx(reuse, nan_ok=True)
    assert got[PER_DRAW]["long_run_share"] == runs
    # a style the model does not know is dropped, as before
    odd = [replace(p, style="no-such-style") for p in seeds]
    assert {r.options.style for r in draw_requests(odd, 1, 4, ("none", "folk"))} == {None}


def test_compare_pairs_the_two_models_draw_by_draw_and_keeps_no_draws():
    def side(reuse, runs):
        fidelity = {
            "pattern_reuse": 0.5,
            PER_DRAW: {"pattern_reuse": reuse, "long_run_share": runs},
        }
        return {"base_nll": 3.0, "collapse_rate": 0.0, "fidelity": fidelity}

    cand = side([0.5, 0.7, float("nan"), 0.2], [1.0, 0.0, 0.0, 0.0])
    act = side([0.4, 0.4, 0.3, 0.2], [0.0, 0.0, 0.0, 0.0])
    metrics = compare(cand, act)
    fid = metrics["candidate_fidelity"]
    assert fid["pattern_reuse_diff_se"] == pytest.approx(standard_error([0.1, 0.3, 0.0]))
    assert fid["long_run_share_diff_se"] == pytest.approx(0.25)  # sd 0.5 of 1, 0, 0, 0 over 2
    assert PER_DRAW not in fid and PER_DRAW not in metrics["active_fidelity"]
    assert PER_DRAW in cand["fidelity"]  # its inputs are left as they were
    json.dumps(metrics, allow_nan=False)  # what the database keeps: no NaN, no lists of draws
    one = compare(side([0.5], [0.0]), side([0.4], [0.0]))["candidate_fidelity"]
    assert one["pattern_reuse_diff_se"] is None  # one pair: no error (JSON null, not NaN)
