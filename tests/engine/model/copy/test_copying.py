"""The copy path: figure matching, votes, mixing, fitting by likelihood, and decoding with it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.model.checkpoint import load_checkpoint
from engine.model.copy.copying import (
    COPY_FIELDS,
    LEVELS_PER_KIND,
    N_LEVELS,
    NO_COPY,
    PARAMS_PATH,
    CopyMemory,
    CopyParams,
    shipped_params,
)
from engine.model.copy.vote import mix_logits
from engine.model.events import COPY_COLUMNS, COPY_POSITION, DURATION, PITCH, SHIFT, EventCodec
from engine.model.generate.continuation import continue_batch, continue_seed
from engine.model.generate.request import GenerationRequest, Knobs
from engine.model.train.copy_fit import fit
from engine.model.train.copy_mix import copy_nll
from engine.model.train.data import collate, cut_window, encode_pieces
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions
from engine.settings import DEFAULT_MODEL_PATH
from tests.tolerance import SAME_MATH, assert_close_to_scale

CODEC = EventCodec()
SIZES = (CODEC.n_shift, CODEC.n_pitch, CODEC.n_duration)
# every voter counts alike; lambda 0.5 wherever a voter exists
HALF = CopyParams(weight=0.0, exact=0.0, mix=((0.5,) * N_LEVELS,) * len(COPY_FIELDS))


def _events(rows: list[tuple[int, int, int]]) -> torch.Tensor:
    """(1, S, 5) events from (shift, pitch, duration) rows (velocity and position 0)."""
    return torch.tensor([[[s, p, d, 0, 0] for s, p, d in rows]])


# A figure: up a tone, up a tone, down a third (pitch indices), all 6 ticks apart, then a
# different note. Its last three figures come back one tone higher at the end of the seed.
SEED = [
    (6, 30, 5),
    (6, 32, 5),
    (6, 34, 5),
    (6, 31, 7),
    (12, 40, 9),
    (6, 32, 5),
    (6, 34, 5),
    (6, 36, 5),
]


def test_the_seed_votes_for_what_followed_the_same_figure_transposed():
    mem = CopyMemory(_events(SEED), torch.tensor([len(SEED)]), SIZES, HALF)
    shift_votes, lam, _ = mem.shift_votes()
    assert float(lam) == 0.5
    # voters: every seed event, weight 1 each: shift 6 from seven of them, 12 from one
    assert float(shift_votes[0, 6]) == pytest.approx(7 / 8, rel=SAME_MATH)
    assert float(shift_votes[0, 12]) == pytest.approx(1 / 8, rel=SAME_MATH)
    pitch_votes, _, best_level = mem.pitch_votes(torch.tensor([[6]]))
    # after the figure (+2, +2) the seed went down 3: from 36 that is 33, the figure transposed
    best = int(pitch_votes.argmax())
    assert pitch_votes[0].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert pitch_votes[0, 33] > 0 and best in (33, 38)  # 38: +2 again, also in the seed
    level = int(best_level)
    assert level == 2  # the two figures before the down-third match; transposed, not exact


def test_longer_and_exact_matches_weigh_more():
    params = CopyParams(weight=2.0, exact=4.0, mix=((0.5,) * N_LEVELS,) * len(COPY_FIELDS))
    # the figure (+2, +2) twice: once from 30, once from 36, then the latest notes from 36 again
    seed = [(6, 30, 5), (6, 32, 5), (6, 34, 5), (6, 29, 5), (6, 36, 5), (6, 38, 5), (6, 40, 5)]
    seed += [(6, 41, 5), (6, 36, 5), (6, 38, 5), (6, 40, 5)]
    mem = CopyMemory(_events(seed), torch.tensor([len(seed)]), SIZES, params)
    votes, _, best_level = mem.pitch_votes(torch.tensor([[6]]))
    # exact voter (36 38 40 -> 41: +1) beats the transposed one (30 32 34 -> 29: -5 -> 35)
    assert votes[0, 41] > 10 * votes[0, 35] > 0
    assert int(best_level) >= LEVELS_PER_KIND  # the best voter is exact


def test_no_seed_no_votes_and_appended_notes_only_give_context():
    mem = CopyMemory(torch.zeros(1, 1, 5, dtype=torch.int64), torch.tensor([0]), SIZES, HALF)
    for s, p, d in SEED:
        votes, lam, _ = mem.shift_votes()
        assert float(lam) == 0.0 and float(votes.sum()) == 0.0  # nothing to copy from
        mem.append(
            torch.tensor([[s]]), torch.tensor([[p]]), torch.tensor([[d]]), torch.tensor([[0]])
        )


def test_rows_copy_independently_and_select_keeps_the_chosen_rows():
    short = SEED[:3]
    seed = torch.zeros(2, len(SEED), 5, dtype=torch.int64)
    seed[0] = _events(SEED)[0]
    seed[1, :3] = _events(short)[0]
    both = CopyMemory(seed, torch.tensor([len(SEED), 3]), SIZES, HALF)
    alone = CopyMemory(_events(short), torch.tensor([3]), SIZES, HALF)
    v_both, *_ = both.pitch_votes(torch.tensor([[6], [6]]))
    v_alone, *_ = alone.pitch_votes(torch.tensor([[6]]))
    assert torch.equal(v_both[1], v_alone[0])
    both.select(torch.tensor([1]))
    assert torch.equal(both.pitch_votes(torch.tensor([[6]]))[0], v_alone)


def test_mixing_is_a_probability_mixture():
    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf")]])
    votes = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    mixed = mix_logits(logits, votes, torch.tensor([[0.25]]))
    p = mixed.softmax(dim=-1)
    model = logits.softmax(dim=-1)
    assert float(p[0, 3]) == pytest.approx(0.25, rel=SAME_MATH)
    assert_close_to_scale(p[0, :3], 0.75 * model[0, :3], SAME_MATH)
    same = mix_logits(logits, votes, torch.tensor([[0.0]]))  # lambda 0: the model's own
    assert_close_to_scale(same.softmax(-1), model, SAME_MATH)


def test_params_round_trip_and_refuse_bad_values():
    assert CopyParams.from_dict(json.loads(json.dumps(HALF.to_dict()))) == HALF
    assert NO_COPY.off and not HALF.off
    with pytest.raises(ValueError):
        CopyParams(weight=1.0, exact=0.0, mix=((1.0,) * N_LEVELS,) * 3)  # lambda 1: no model
    with pytest.raises(ValueError):
        CopyParams(weight=1.0, exact=0.0, mix=((0.1,) * 2,) * 3)
    with pytest.raises(ValueError):
        CopyParams(weight=math.nan, exact=0.0, mix=NO_COPY.mix)
    six = CopyParams(weight=1.0, exact=0.0, mix=((0.1,) * 14,) * 3, aligned=1.0)
    assert six.max_match == 6 and CopyParams.from_dict(six.to_dict()) == six


def test_the_shipped_fit_is_valid_and_was_fitted_on_the_validation_split():
    doc = json.loads(PARAMS_PATH.read_text())
    params = CopyParams.from_dict(doc["params"])
    assert not params.off
    assert "validation" in doc["fitted_on"]
    assert doc["report"]["nll_with_copy"] < doc["report"]["nll_without_copy"]


def _tune(repeats: int = 4) -> Piece:
    phrase = [62, 64, 66, 67, 69, 67, 66, 64]
    notes = [Note(i * 0.5, 0.5, p, 90) for i, p in enumerate(phrase * repeats)]
    return Piece(tuple(notes))


def _batches(pieces: list[Piece]) -> list[dict[str, torch.Tensor]]:
    data = encode_pieces(CODEC, pieces)
    windows = []
    for ev, style in zip(data.events, data.styles, strict=True):
        for cut in (8, 16):
            seed, target = cut_window(ev, cut, 16, 16, CODEC.eos)
            windows.append((seed, target, int(style)))
    return [collate(windows, 16, CODEC)]


def test_fitting_never_scores_worse_than_no_copy_and_copying_helps_a_repeating_tune(tiny_lm):
    batches = _batches([_tune()])
    params, report = fit(
        tiny_lm.model, batches, tiny_lm.device, grid=((0.0, 0.0, 0.0), (2.0, 4.0, 1.0))
    )
    plain = copy_nll(tiny_lm.model, batches, tiny_lm.device, NO_COPY)["nll_per_note"]
    assert report["nll_without_copy"] == pytest.approx(plain, rel=SAME_MATH)
    # an untrained network, a tune that repeats its phrase: the seed predicts it
    assert report["nll_with_copy"] < plain - 1.0
    assert params.mix[COPY_FIELDS.index(PITCH)][-1] > 0.5
    mixed = copy_nll(tiny_lm.model, batches, tiny_lm.device, params)["nll_per_note"]
    assert mixed == pytest.approx(report["nll_with_copy"], rel=SAME_MATH)


def test_every_model_decodes_with_the_shipped_fit():
    assert shipped_params() == CopyParams.from_dict(json.loads(PARAMS_PATH.read_text())["params"])


def test_decoding_with_copy_returns_the_seeds_figures():
    from engine.model.fidelity import pattern_reuse

    shipped = load_checkpoint(DEFAULT_MODEL_PATH)  # a trained network: real rhythms to match
    seed = _tune(2)
    on = [continue_seed(shipped, seed, 4, seed_rng=i) for i in range(6)]
    off = [continue_seed(shipped, seed, 4, seed_rng=i, knobs=Knobs(copy=False)) for i in range(6)]
    reuse_on = sum(pattern_reuse(seed, made) for made in on) / 6
    reuse_off = sum(pattern_reuse(seed, made) for made in off) / 6
    assert all(made.notes for made in on + off)
    assert reuse_on > reuse_off + 0.2  # the phrase's figures come back


def test_copy_and_no_copy_rows_in_one_batch_decode_as_alone(tiny_lm):
    seed = _tune(2)
    reqs = [
        GenerationRequest(seed, ComposeOptions(bars=2, rng_seed=1)),
        GenerationRequest(seed, ComposeOptions(bars=3, rng_seed=2), Knobs(copy=False)),
        GenerationRequest(None, ComposeOptions(bars=2, rng_seed=3, style="folk")),
    ]
    together = continue_batch(tiny_lm, reqs)
    for req, made in zip(reqs, together, strict=True):
        assert continue_batch(tiny_lm, [req])[0].notes == made.notes


def test_shift_and_duration_votes_follow_the_seeds_rhythm():
    rows = [(6, 30, 5), (3, 32, 2), (3, 34, 2), (6, 30, 5), (3, 32, 2), (3, 34, 2), (6, 30, 5)]
    mem = CopyMemory(_events(rows), torch.tensor([len(rows)]), SIZES, HALF)
    shift_votes, *_ = mem.shift_votes()
    assert int(shift_votes.argmax()) in (3, 6)
    dur, lam, _ = mem.duration_votes(torch.tensor([[3]]), torch.tensor([[32]]))
    assert int(dur.argmax()) == 2 and float(lam) == 0.5  # long-short-short comes back
    assert SHIFT in COPY_FIELDS and DURATION in COPY_FIELDS


def test_voters_at_the_same_bar_position_weigh_more():
    aligned = CopyParams(weight=0.0, exact=0.0, mix=HALF.mix, aligned=3.0)
    # two seed notes with shift 6 after them: one where the latest note's bar position is
    rows = [(6, 30, 5, 0), (3, 31, 5, 6), (12, 32, 5, 9), (6, 33, 5, 0)]
    seed = torch.tensor([[[s, p, d, 0, pos] for s, p, d, pos in rows]])
    mem = CopyMemory(seed, torch.tensor([4]), SIZES, aligned)
    votes, *_ = mem.shift_votes()
    # the latest note sits at position 0, as the first did: the note after it (shift 3) wins
    assert votes[0, 3] > 10 * votes[0, 12]


def test_votes_stay_normalised_when_the_best_match_cannot_vote_for_the_field():
    """A long exact match that votes for another shift must not shrink the other voters'
    weights to nothing (the weights are relative to this field's best voter)."""
    params = CopyParams(weight=6.0, exact=8.0, mix=((0.5,) * 34,) * 3)  # max match 16
    figure = [(6, 30 + 2 * (i % 3), 5) for i in range(20)]
    seed = figure + [(12, 40, 5)] + figure[:18]
    mem = CopyMemory(_events(seed), torch.tensor([len(seed)]), SIZES, params)
    votes, lam, _ = mem.pitch_votes(torch.tensor([[12]]))  # only the one shift-12 note can vote
    assert float(lam) == 0.5
    assert float(votes.sum()) == pytest.approx(1.0, rel=SAME_MATH)


def test_rows_without_copying_keep_their_logits_bit_for_bit():
    logits = torch.randn(2, 7)
    votes = torch.zeros(2, 7)
    votes[0, 3] = 1.0
    mixed = mix_logits(logits, votes, torch.tensor([[0.3], [0.0]]))
    assert torch.equal(mixed[1], logits[1])
    assert not torch.equal(mixed[0], logits[0])


def test_the_memory_holds_the_seeds_shift_pitch_duration_and_bar_position():
    # one home for the layout (events.COPY_COLUMNS): the memory's columns are named there
    seed = torch.tensor([[[6, 30, 5, 70, 2], [12, 32, 7, 90, 14]]])  # velocity differs
    mem = CopyMemory(seed, torch.tensor([2]), SIZES, HALF)
    held = mem.event[0, mem.n - 2 : mem.n]
    assert held.tolist() == seed[0][:, list(COPY_COLUMNS)].tolist()
    assert held[:, COPY_POSITION].tolist() == [2, 14]
    assert held[:, PITCH].tolist() == [30, 32] and held[:, SHIFT].tolist() == [6, 12]
