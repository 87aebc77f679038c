"""The gate's collapse check draws each held-out seed several times, with rng seeds of its own."""

from __future__ import annotations

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
    collapse_rate,
    collapse_requests,
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
    assert got["pattern_reuse_se"] == pytest.approx(standard_error(reuse), nan_ok=True)
    assert got["long_run_share_se"] == pytest.approx(standard_error(runs), nan_ok=True)
    # a style the model does not know is dropped, as before
    odd = [replace(p, style="no-such-style") for p in seeds]
    assert {r.options.style for r in draw_requests(odd, 1, 4, ("none", "folk"))} == {None}
