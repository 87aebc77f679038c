"""The repeat bias: the seed's repeat bin, the current run, the bias at the latest pitch, its fit
by likelihood, and decoding with it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from engine.model.copy.copying import COPY_FIELDS, N_LEVELS, NO_COPY, CopyMemory, CopyParams
from engine.model.copy.repeats import (
    NO_REPEAT_BIAS,
    REPEAT_BINS,
    REPEAT_RUNS,
    add_repeat_bias,
    seed_repeat_bin,
)
from engine.model.events import PITCH, EventCodec
from engine.model.generate.continuation import continue_seed
from engine.model.train.copy_fit import fit
from engine.model.train.copy_mix import copy_nll
from engine.model.train.data import collate, cut_window, encode_pieces
from engine.music.notes import Note, Piece
from tests.tolerance import SAME_MATH

CODEC = EventCodec()
SIZES = (CODEC.n_shift, CODEC.n_pitch, CODEC.n_duration)


def _events(rows: list[tuple[int, int]]) -> torch.Tensor:
    """(1, S, 5) events from (shift, pitch) rows (duration 5, velocity and position 0)."""
    return torch.tensor([[[s, p, 5, 0, 0] for s, p in rows]])


def _table(value: float, cell: tuple[int, int] | None = None) -> tuple[tuple[float, ...], ...]:
    """Every bias `value`, or only the one at (bin, run - 1)."""
    if cell is None:
        return ((value,) * REPEAT_RUNS,) * REPEAT_BINS
    rows = [list(r) for r in NO_REPEAT_BIAS]
    rows[cell[0]][cell[1]] = value
    return tuple(tuple(r) for r in rows)


def _chunks(cells: list[dict]) -> list[list[dict]]:
    return [cells[i : i + REPEAT_RUNS] for i in range(0, len(cells), REPEAT_RUNS)]


def _bins(*seeds: list[tuple[int, int]]) -> list[int]:
    width = max(len(s) for s in seeds)
    batch = torch.zeros(len(seeds), width, 5, dtype=torch.int64)
    for i, s in enumerate(seeds):
        if s:
            batch[i, : len(s)] = _events(s)[0]
    return seed_repeat_bin(batch, torch.tensor([len(s) for s in seeds])).tolist()


def test_the_seeds_repeat_bin_counts_new_onsets_that_repeat_the_pitch_before():
    no_seed: list[tuple[int, int]] = []
    few = [(6, 30), (6, 32), (6, 34)]  # 2 onsets after a note: too few to tell
    none = [(6, 30 + i) for i in range(8)]
    quarter = [(6, 30), (6, 30), (6, 32), (6, 34), (6, 34)]  # 2 of 4 onsets repeat: 0.5
    twentieth = [(6, 30 + (i % 7)) for i in range(20)] + [(6, 35)]  # 1 of 20: 0.05
    # a chord note (shift 0) at the same pitch class index is not a repeated onset
    chord = [(6, 30), (0, 30), (6, 32), (6, 33), (6, 34), (6, 35)]
    assert _bins(no_seed, few, none, quarter, twentieth, chord) == [0, 0, 1, 5, 2, 1]


def test_the_cell_follows_the_run_and_skips_chord_notes_and_the_first_note():
    params = CopyParams(0.0, 0.0, NO_COPY.mix, repeat=_table(1.0))
    seed = [(6, 30 + i) for i in range(6)] + [(6, 40), (6, 40), (6, 40)]  # run of 3; 2 of 8
    mem = CopyMemory(_events(seed), torch.tensor([len(seed)]), SIZES, params)
    cell, last = mem.repeat_cell(torch.tensor([[6]]))
    assert int(last) == 40 and int(cell) == 5 * REPEAT_RUNS + 2  # share 0.25: bin 5; run 3+
    chord, _ = mem.repeat_cell(torch.tensor([[0]]))
    end, _ = mem.repeat_cell(torch.tensor([[CODEC.eos]]))
    assert int(chord) == -1 and int(end) == -1
    empty = CopyMemory(torch.zeros(1, 1, 5, dtype=torch.int64), torch.tensor([0]), SIZES, params)
    assert int(empty.repeat_cell(torch.tensor([[6]]))[0]) == -1  # nothing before
    one = torch.tensor([[6]])
    empty.append(one, torch.tensor([[30]]), one, torch.tensor([[0]]))
    assert int(empty.repeat_cell(one)[0]) == -1  # no seed: nothing of the user's to follow


def test_the_bias_moves_only_the_latest_pitch_and_rows_without_copying_keep_their_logits():
    logits = torch.randn(3, 9)
    table = torch.tensor(_table(-2.0))
    out = add_repeat_bias(logits, table, torch.tensor([4, -1, 0]), torch.tensor([2, 5, 7]))
    assert float(out[0, 2] - logits[0, 2]) == pytest.approx(-2.0, rel=SAME_MATH)
    assert float(out[2, 7] - logits[2, 7]) == pytest.approx(-2.0, rel=SAME_MATH)
    changed = (out != logits).nonzero().tolist()
    assert changed == [[0, 2], [2, 7]]
    assert torch.equal(out[1], logits[1])  # cell -1: bit for bit

    params = CopyParams(0.0, 0.0, NO_COPY.mix, repeat=_table(-3.0))
    seed = [(6, 30 + i) for i in range(8)]  # no repeat: bin 1
    seeds = torch.cat([_events(seed), _events(seed)])
    mem = CopyMemory(
        seeds, torch.tensor([8, 8]), SIZES, params, rows_on=torch.tensor([[1.0], [0.0]])
    )
    raw = torch.randn(2, SIZES[1])
    mixed = mem.mixed(PITCH, raw, torch.tensor([[6], [6]]))
    assert torch.equal(mixed[1], raw[1])
    assert float(raw[0, 37] - mixed[0, 37]) == pytest.approx(3.0, rel=SAME_MATH)


def test_params_keep_the_biases_and_refuse_a_bad_table():
    params = CopyParams(1.0, 2.0, NO_COPY.mix, repeat=_table(-1.5, (1, 0)))
    assert not params.off and params.repeats
    assert CopyParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    old = {k: v for k, v in params.to_dict().items() if k != "repeat"}  # written before biases
    assert CopyParams.from_dict(old).repeat == NO_REPEAT_BIAS
    with pytest.raises(ValueError):
        CopyParams(1.0, 2.0, NO_COPY.mix, repeat=((0.0,) * 2,) * REPEAT_BINS)
    with pytest.raises(ValueError):
        CopyParams(1.0, 2.0, NO_COPY.mix, repeat=_table(float("inf")))


def _batches(pieces: list[Piece]) -> list[dict[str, torch.Tensor]]:
    data = encode_pieces(CODEC, pieces)
    windows = []
    for ev, style in zip(data.events, data.styles, strict=True):
        for cut in (8, 16, 24):
            seed, target = cut_window(ev, cut, 16, 16, CODEC.eos)
            windows.append((seed, target, int(style)))
    return [collate(windows, 16, CODEC)]


def test_the_fit_learns_that_a_tune_without_repeats_does_not_repeat(tiny_lm):
    """An untrained network gives the latest pitch its share like any other; a scale that never
    repeats a pitch makes every seeded cell's bias negative, and the fit is likelier."""
    scale = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62]
    tunes = [
        Piece(tuple(Note(i * 0.5, 0.5, k + scale[i % len(scale)], 90) for i in range(48)))
        for k in range(12)  # in every key: enough notes for the likelihood to outweigh the prior
    ]
    batches = _batches(tunes)
    params, report = fit(tiny_lm.model, batches, tiny_lm.device, grid=((0.0, 0.0, 0.0),))
    assert report["nll_with_copy"] < report["nll_with_copy_before_repeat"]
    seen = [c for c in report["repeat"] if c["notes"]]
    assert seen and all(c["real"] == 0.0 for c in seen)
    no_repeat_bin_once = 1 * REPEAT_RUNS  # seeds with no repeat, the latest pitch once
    assert params.repeat[1][0] < -0.5
    assert any(c["cell"] == no_repeat_bin_once for c in seen)
    # additive, a[bin] + r[run]: no note ever repeats, so no run of 2 or 3 is seen and r stays
    # 0 there (the prior); a bin with no notes keeps a = 0
    for row, cells in zip(params.repeat, _chunks(report["repeat"]), strict=True):
        assert row[1] == row[2] == row[0]
        if not any(c["notes"] for c in cells):
            assert row == (0.0, 0.0, 0.0)
    scored = copy_nll(tiny_lm.model, batches, tiny_lm.device, params)["nll_per_note"]
    assert scored == pytest.approx(report["nll_with_copy"], rel=SAME_MATH)


def test_decoding_with_a_strong_negative_bias_never_repeats_at_a_new_onset(tiny_lm, monkeypatch):
    import engine.model.generate.decode as decode

    seed = Piece(tuple(Note(i * 0.5, 0.5, 60 + (i * 5) % 12, 90) for i in range(16)))
    mix = ((0.0,) * N_LEVELS,) * len(COPY_FIELDS)
    monkeypatch.setattr(decode, "shipped_params", lambda: CopyParams(0, 0, mix, 0, _table(-40.0)))
    made = [continue_seed(tiny_lm, seed, 4, seed_rng=i) for i in range(4)]
    pairs = 0
    for m in made:
        onsets: dict[float, list[int]] = {}
        for n in m.notes:
            onsets.setdefault(round(n.start, 4), []).append(n.pitch)
        starts = sorted(onsets)
        for a, b in zip(starts, starts[1:], strict=False):
            if len(onsets[a]) == len(onsets[b]) == 1:  # single notes: the latest pitch is known
                pairs += 1
                assert onsets[a] != onsets[b]
    assert pairs >= 10


def test_no_bias_and_zero_lambdas_mean_no_copy_path():
    assert replace(NO_COPY, repeat=NO_REPEAT_BIAS).off
