"""Lookback: bar lengths from the seed, the seed's note whole bars back, the phase, mixing, the
fit by likelihood, and decoding with it."""

from __future__ import annotations

import json

import pytest
import torch

from engine.model.copy.copying import (
    COPY_FIELDS,
    N_LEVELS,
    NO_COPY,
    CopyMemory,
    CopyParams,
)
from engine.model.copy.lookback import LOOKBACK_LEVELS, NO_LOOKBACK, PHASE, bar_ticks, mix_chosen
from engine.model.copy.vote import mix_logits
from engine.model.events import DURATION, PITCH, SHIFT, EventCodec
from engine.model.generate.continuation import continue_seed
from engine.model.generate.request import Knobs
from engine.model.train.copy_fit import fit
from engine.model.train.copy_mix import copy_nll
from engine.model.train.data import collate, cut_window, encode_pieces
from engine.music.notes import Note, Piece
from tests.tolerance import SAME_MATH

CODEC = EventCodec()
SIZES = (CODEC.n_shift, CODEC.n_pitch, CODEC.n_duration)
BAR = 48  # 4/4 at 12 ticks per beat
STRAIN = [30, 32, 34, 35, 37, 35, 34, 32]  # two bars of quarter notes (pitch classes)
ALL_IN = ((0.5,) * LOOKBACK_LEVELS,) * 3
LOOK = CopyParams(0.0, 0.0, NO_COPY.mix, lookback=ALL_IN)


def _seed(pitches: list[int], shift: int = 12, bar: int = BAR) -> torch.Tensor:
    """(1, S, 5) quarter notes from time 0: shift, pitch, duration 5, velocity 0, bar position."""
    rows = [[0 if i == 0 else shift, p, 5, 0, (i * shift) % bar] for i, p in enumerate(pitches)]
    return torch.tensor([rows])


def _append(mem: CopyMemory, pitch: int, shift: int = 12) -> None:
    position = (int(mem.lookback.time[0, mem.n - 1]) + shift) % BAR
    mem.append(
        torch.tensor([[shift]]),
        torch.tensor([[pitch]]),
        torch.tensor([[5]]),
        torch.tensor([[position]]),
    )


def test_the_bar_length_comes_from_the_seeds_bar_lines():
    seed = _seed(STRAIN)
    mem = CopyMemory(seed, torch.tensor([8]), SIZES, LOOK)
    assert mem.lookback.lags.tolist() == [[2 * BAR, 4 * BAR, 8 * BAR]]
    waltz = _seed(STRAIN, bar=36)
    assert bar_ticks(CopyMemory(waltz, torch.tensor([8]), SIZES, LOOK).event, 8 + 9).tolist() == [
        36
    ]
    within = _seed(STRAIN[:4])  # one bar: no bar line crossed, no lookback
    short = CopyMemory(within, torch.tensor([4]), SIZES, LOOK)
    assert short.lookback.lags.tolist() == [[0, 0, 0]]
    votes, mu, level = short.lookback_votes(PITCH, torch.tensor([[12]]))
    assert float(votes.sum()) == 0.0 and float(mu) == 0.0


def test_the_seeds_note_two_bars_back_votes_and_the_phase_grows_as_the_strain_returns():
    mem = CopyMemory(_seed(STRAIN), torch.tensor([8]), SIZES, LOOK)
    # the next quarter lands on bar 3, beat 1: two bars after the seed's first note
    votes, mu, level = mem.lookback_votes(PITCH, torch.tensor([[12]]))
    assert int(votes.argmax()) == 30 and float(votes.sum()) == 1.0 and float(mu) == 0.5
    assert int(level) == 0  # lag 2 bars, nothing matched yet
    _append(mem, 30)
    _append(mem, 32)
    shift_votes, _, level = mem.lookback_votes(SHIFT)
    assert int(shift_votes.argmax()) == 12  # the note after the lagged one came a quarter later
    pitch_votes, _, level = mem.lookback_votes(PITCH, torch.tensor([[12]]))
    assert int(pitch_votes.argmax()) == 34
    assert int(level) == 2  # lag 2 bars, phase 2
    dur, _, level = mem.lookback_votes(DURATION, torch.tensor([[12]]), torch.tensor([[34]]))
    assert int(dur.argmax()) == 5
    other, _, level = mem.lookback_votes(DURATION, torch.tensor([[12]]), torch.tensor([[40]]))
    assert float(other.sum()) == 0.0  # another pitch than the lagged note's: no duration vote
    for p in (34, 35, 37):
        _append(mem, p)
    _, _, level = mem.lookback_votes(PITCH, torch.tensor([[12]]))
    assert int(level) == PHASE  # the phase stops at PHASE


def test_a_chord_votes_note_by_note_and_another_rhythm_gets_no_vote():
    rows = [[0, 30, 5, 0, 0], [0, 34, 5, 0, 0], [24, 32, 5, 0, 24], [24, 33, 5, 0, 0]]
    rows += [[0, 36, 5, 0, 0], [24, 31, 5, 0, 24]]
    mem = CopyMemory(torch.tensor([rows]), torch.tensor([6]), SIZES, LOOK)
    # the last note sat at time 72; a shift of 24 lands on 96 = time 0 + 2 bars: the chord
    first, _, level = mem.lookback_votes(PITCH, torch.tensor([[24]]))
    assert int(first.argmax()) == 30
    position = torch.tensor([[0]])
    mem.append(torch.tensor([[24]]), torch.tensor([[30]]), torch.tensor([[5]]), position)
    second, _, level = mem.lookback_votes(PITCH, torch.tensor([[0]]))  # the chord's second note
    assert int(second.argmax()) == 34
    offbeat, mu, level = mem.lookback_votes(PITCH, torch.tensor([[5]]))
    assert float(offbeat.sum()) == 0.0 and float(mu) == 0.0


def test_rows_without_a_lagged_note_or_without_copying_keep_their_logits():
    seeds = torch.cat([_seed(STRAIN), _seed(STRAIN)])
    mem = CopyMemory(seeds, torch.tensor([8, 8]), SIZES, LOOK, rows_on=torch.tensor([[1.0], [0.0]]))
    raw = torch.randn(2, SIZES[1])
    kept = mem.mixed(PITCH, raw, torch.tensor([[5], [12]]))  # row 0: no note 2 bars back
    assert torch.equal(kept, raw)
    mixed = CopyMemory(seeds[:1], torch.tensor([8]), SIZES, LOOK).mixed(
        PITCH, raw[:1], torch.tensor([[12]])
    )
    p = mixed[0].softmax(-1)
    assert float(p[30]) == pytest.approx(0.5 + 0.5 * float(raw[0].softmax(-1)[30]), rel=SAME_MATH)


def replace_lookback(table: tuple[tuple[float, ...], ...]) -> CopyParams:
    return CopyParams(0.0, 0.0, ((0.1,) * N_LEVELS,) * len(COPY_FIELDS), lookback=table)


def test_params_keep_the_mus_and_refuse_bad_ones():
    params = replace_lookback(ALL_IN)
    assert CopyParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    old = {k: v for k, v in params.to_dict().items() if k != "lookback"}
    assert CopyParams.from_dict(old).lookback == NO_LOOKBACK
    assert not CopyParams(0.0, 0.0, NO_COPY.mix, lookback=ALL_IN).off
    with pytest.raises(ValueError):
        replace_lookback(((1.0,) * LOOKBACK_LEVELS,) * 3)
    with pytest.raises(ValueError):
        replace_lookback(((0.1,) * 4,) * 3)


def _reel(bars: int = 12, start: int = 62) -> Piece:
    """A strain of two bars (eighth notes, 4/4) played over and over."""
    strain = [0, 2, 4, 5, 7, 5, 4, 2, 0, 4, 7, 12, 7, 4, 2, 0]
    notes = [Note(i * 0.5, 0.5, start + strain[i % 16], 90) for i in range(bars * 8)]
    return Piece(tuple(notes))


def test_the_fit_trusts_the_lookback_for_a_tune_that_repeats_its_strain(tiny_lm):
    data = encode_pieces(CODEC, [_reel(start=s) for s in (60, 62, 65)])
    windows = []
    for ev, style in zip(data.events, data.styles, strict=True):
        for cut in (32, 48, 64):
            seed, target = cut_window(ev, cut, 32, 16, CODEC.eos)
            windows.append((seed, target, int(style)))
    batches = [collate(windows, 16, CODEC)]
    params, report = fit(
        tiny_lm.model, batches, tiny_lm.device, grid=((0.0, 0.0, 0.0),), repeat=False
    )
    assert report["nll_with_copy"] < report["nll_with_copy_before_lookback"] - 0.5
    in_phase = 0 * (PHASE + 1) + PHASE  # lag 2 bars, every latest note matched
    assert params.lookback[COPY_FIELDS.index(PITCH)][in_phase] > 0.8
    scored = copy_nll(tiny_lm.model, batches, tiny_lm.device, params)["nll_per_note"]
    assert scored == pytest.approx(report["nll_with_copy"], rel=SAME_MATH)


def test_decoding_with_the_lookback_brings_the_strain_back(tiny_lm, monkeypatch):
    import engine.model.generate.decode as decode

    strong = CopyParams(0.0, 0.0, NO_COPY.mix, lookback=((0.95,) * LOOKBACK_LEVELS,) * 3)
    monkeypatch.setattr(decode, "shipped_params", lambda: strong)
    seed = Piece(_reel(bars=4).notes)
    made = continue_seed(tiny_lm, seed, 4, seed_rng=3, knobs=Knobs(key_penalty=0.0))
    expected = {round(n.start + 16.0, 3): n.pitch for n in seed.notes}  # 4 bars later
    expected.update({round(n.start + 24.0, 3): n.pitch for n in seed.notes})
    hits = [expected.get(round(n.start, 3)) == n.pitch for n in made.notes]
    assert len(hits) >= 16 and sum(hits) >= 0.8 * len(hits)


def test_clamped_bar_positions_and_gaps_give_no_false_bar_length():
    """In bars over 8 beats the bar position stops at the codec's last class, and a gap over
    max_shift is clamped: neither may pass for a bar line (a 9/4 seed once got lags of 2, 4 and
    8 ticks, so its "bars back" was the note before)."""
    top = CODEC.n_position - 1
    nine_four = [
        [0 if i == 0 else 12, 30 + i % 5, 5, 0, min((12 * i) % 108, top)] for i in range(20)
    ]
    mem = CopyMemory(
        torch.tensor([nine_four]), torch.tensor([20]), SIZES, LOOK, n_position=CODEC.n_position
    )
    assert mem.lookback.lags.tolist() in ([[0, 0, 0]], [[216, 432, 864]])
    # 6/4 (72 ticks): quarters, then a 5-beat rest clamped to a shift of 48 (30 + 48 - 18 = 60)
    times = [0, 12, 24, 30, 90, 102, 114, 126, 138, 150]
    rows = [[0, 30, 5, 0, 0]]
    for a, b in zip(times, times[1:], strict=False):
        rows.append([min(b - a, CODEC.n_shift - 2), 32, 5, 0, b % 72])
    mem = CopyMemory(
        torch.tensor([rows]), torch.tensor([len(rows)]), SIZES, LOOK, n_position=CODEC.n_position
    )
    assert mem.lookback.lags.tolist() == [[144, 288, 576]]


def test_mixing_a_chosen_class_is_mix_logits_of_its_one_hot_bit_for_bit():
    """The decoder mixes the lookback's vote without building the one-hot: the same numbers."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 40, generator=gen) * 4
    logits[:, ::7] = float("-inf")
    chosen = torch.tensor([3, -1, 0, 39, 7, -1])
    mu = torch.tensor([[0.3], [0.0], [0.9], [0.01], [0.0], [0.0]])
    one_hot = torch.zeros(6, 40)
    one_hot[chosen >= 0, chosen[chosen >= 0]] = 1.0
    mixed, expected = mix_chosen(logits, chosen, mu), mix_logits(logits, one_hot, mu)
    assert torch.equal(mixed.isinf(), expected.isinf())
    assert torch.equal(mixed[~mixed.isinf()], expected[~expected.isinf()])
