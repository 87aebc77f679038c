"""The strain plan: the corpus's chances that a bar replays the bar 8, 4 or 2 before it, the
per-row plan drawn from them, and the lookback voting for a planned bar's notes."""

from __future__ import annotations

import pytest
import torch

from engine.model.copy.copying import NO_COPY, CopyMemory, CopyParams
from engine.model.copy.lookback import LAG_BARS, LOOKBACK_LEVELS, PLAN_MU
from engine.model.copy.strains import PHRASE, load_strain_returns, plan_strains, plan_tensor
from engine.model.corpus.strain_returns import bar_contents, fit_strain_returns
from engine.model.events import PITCH, SHIFT, EventCodec
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions

CODEC = EventCodec()
SIZES = (CODEC.n_shift, CODEC.n_pitch, CODEC.n_duration)
BAR = 48  # 4/4 at 12 ticks per beat
LOW_MU = CopyParams(0.0, 0.0, NO_COPY.mix, lookback=((0.01,) * LOOKBACK_LEVELS,) * 3)


def _tune(bars: list[list[int]]) -> Piece:
    """Quarter notes, four to a 4/4 bar."""
    notes = [Note(4.0 * b + i, 1.0, p, 90) for b, bar in enumerate(bars) for i, p in enumerate(bar)]
    return Piece(tuple(notes), time_signature=(4, 4))


A = [[60 + b, 62, 64, 65] for b in range(8)]  # an 8-bar strain, each bar its own
B = [[67 + b, 65, 64, 62] for b in range(8)]


def test_the_chances_count_bars_that_replay_the_bar_eight_back():
    aabb = _tune(A + A + B + B)
    assert bar_contents(aabb)[8] == bar_contents(aabb)[0]
    fitted = fit_strain_returns([aabb])
    eight = fitted["chances"]["8"]
    assert len(eight) == len(LAG_BARS) and len(eight[0]) == PHRASE
    # bars 8-15 replay 0-7, 24-31 replay 16-23; bars 16-23 replay nothing 8 back (nor 4 or 2)
    assert eight[0] == [0.6667] * PHRASE
    assert eight[1] == [0.0] * PHRASE  # no bar replays the bar 4 before it
    assert fitted["bars"]["8"] == 24


def test_a_plan_uses_only_lags_that_reach_back_into_the_seed():
    sure = {lag: [[1.0] * PHRASE for _ in LAG_BARS if _ <= lag] for lag in LAG_BARS}
    seed_end = 4 * BAR  # a 4-bar seed
    plan = plan_strains(sure, BAR, seed_end, 8, rng_seed=3)
    # bars 4-7 can look 4 back (and 2 back), bars 8-11 only 8 back; bar 12 is past the seed
    assert plan[:4] == [-1] * 4
    assert plan[4:8] == [LAG_BARS.index(4)] * 4
    assert plan[8:12] == [LAG_BARS.index(8)] * 4
    assert all(lag == -1 for lag in plan[12:])
    assert plan_strains(sure, 0, seed_end, 8, rng_seed=3) == []  # no bar length, no plan
    assert plan_strains({}, BAR, seed_end, 8, rng_seed=3) == []


def test_the_same_rng_seed_gives_the_same_plan():
    shipped = load_strain_returns()
    assert set(shipped) == set(LAG_BARS)
    plans = [plan_strains(shipped, BAR, 8 * BAR, 64, rng_seed=s) for s in (2, 2, 3)]
    assert plans[0] == plans[1] != plans[2]
    assert any(lag >= 0 for lag in plans[0])  # this one replays some bar
    # over many rows, about the corpus's chance of a replay in each bar that can look back
    many = [plan_strains(shipped, BAR, 8 * BAR, 8, rng_seed=s)[8:16] for s in range(200)]
    share = sum(lag >= 0 for plan in many for lag in plan) / (200 * 8)
    assert 0.1 < share < 0.5
    tensor = plan_tensor([plans[0], []], torch.device("cpu"))
    assert tensor is not None and tensor.shape == (2, len(plans[0]))
    assert (tensor[1] == -1).all() and plan_tensor([[], [-1]], torch.device("cpu")) is None


def test_a_planned_bar_votes_for_the_seeds_bar_with_the_plan_weight():
    pitches = [30, 32, 34, 35, 37, 35, 34, 32, 40, 41, 43, 45, 47, 45, 43, 41]  # 4 bars
    rows = [[0 if i == 0 else 12, p, 5, 0, (i * 12) % BAR] for i, p in enumerate(pitches)]
    mem = CopyMemory(torch.tensor([rows]), torch.tensor([16]), SIZES, LOW_MU)
    _, plain_mu, _ = mem.lookback_votes(SHIFT)
    mem.lookback.plan = torch.tensor([[-1, -1, -1, -1, LAG_BARS.index(4)]])  # bar 4: bar 0 again
    shift_votes, mu, _ = mem.lookback_votes(SHIFT)
    assert (
        int(shift_votes.argmax()) == 12
        and float(mu) == pytest.approx(PLAN_MU)
        and float(plain_mu) < PLAN_MU
    )
    pitch_votes, mu, _ = mem.lookback_votes(PITCH, torch.tensor([[12]]))
    assert int(pitch_votes.argmax()) == 30 and float(mu) == pytest.approx(
        PLAN_MU
    )  # bar 0's first note
    # a bar the plan leaves alone keeps the fitted weight
    mem.lookback.plan = torch.tensor([[-1, -1, -1, -1, -1]])
    _, mu, _ = mem.lookback_votes(PITCH, torch.tensor([[12]]))
    assert float(mu) < PLAN_MU


def test_with_the_shipped_model_planned_strains_come_back():
    """The shipped model continues a 4-bar tune with and without the plan (the same rng seeds):
    with it, many more continuation bars replay a seed bar note for note."""
    from bench.form import replayed_bars
    from engine.model.checkpoint import load_checkpoint
    from engine.model.generate.continuation import continue_batch
    from engine.model.generate.request import GenerationRequest, Knobs
    from engine.settings import DEFAULT_MODEL_PATH

    seed = _tune([[67, 64, 64, 62], [60, 62, 64, 60], [67, 64, 64, 62], [60, 62, 60, 55]])
    lm = load_checkpoint(DEFAULT_MODEL_PATH)

    def replayed(strains: bool) -> int:
        knobs = Knobs(strains=strains)
        requests = [
            GenerationRequest(
                seed, ComposeOptions(bars=8, style="folk", rng_seed=i, ending="open"), knobs
            )
            for i in range(12)
        ]
        return sum(replayed_bars(seed, c.notes, 16.0)[0] for c in continue_batch(lm, requests))

    with_plan, without = replayed(True), replayed(False)
    assert with_plan >= without + 6, (with_plan, without)
