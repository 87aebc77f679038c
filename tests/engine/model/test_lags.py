"""The lag inputs (engine.model.lags): what the seed played whole bars back, read the same way in
training (per window) and in generation (per step)."""

from __future__ import annotations

import numpy as np
import torch

from engine.model.checkpoint import load_checkpoint, save_checkpoint
from engine.model.events import PITCH, SHIFT, EventCodec
from engine.model.generate.continuation import continue_batch
from engine.model.generate.request import GenerationRequest, Knobs
from engine.model.lags import LAG_BARS, LAG_FIELDS, LagTracker, lag_sizes, window_lags
from engine.model.network import ModelConfig, MotifSeq2Seq
from engine.model.train.data import collate
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions

CODEC = EventCodec()
CFG = CODEC.config
BAR_1 = [60, 62, 64, 65]  # C D E F, quarter notes in 4/4 (a bar is 48 ticks)
BAR_2 = [67, 65, 64, 62]


def _events(pitches: list[int], dur: float = 1.0, chord_at: int | None = None) -> np.ndarray:
    notes = [Note(i * dur, dur, p, 90) for i, p in enumerate(pitches)]
    if chord_at is not None:  # a second note under one of them
        notes.append(Note(chord_at * dur, dur, pitches[chord_at] - 12, 90))
    return CODEC.encode(Piece(tuple(notes), time_signature=(4, 4)))


def _lag(out: torch.Tensor, step: int, lag_bars: int) -> list[int]:
    k = LAG_BARS.index(lag_bars)
    return out[step, k * LAG_FIELDS : (k + 1) * LAG_FIELDS].tolist()


def test_a_returning_strain_is_offered_two_bars_on():
    ev = _events(BAR_1 + BAR_2 + BAR_1 + BAR_2 + BAR_1)  # 4-bar seed, then the strain again
    seed, target = torch.from_numpy(ev[:16]), torch.from_numpy(ev[16:])
    out = window_lags(seed, target, CFG.max_shift, CFG.max_position)
    assert out.shape == (4, len(LAG_BARS) * LAG_FIELDS)
    # step 0: the previous note is the seed's last (D, bar 4 beat 4); two bars back sat the same
    # D (bar 2 beat 4), and after it came C a quarter later: shift 12, pitch C, a quarter
    quarter = CODEC.duration_index(12)
    c, d = 60 - CFG.pitch_low, 62 - CFG.pitch_low
    assert _lag(out, 0, 2) == [12 + 1, c + 1, quarter + 1, 2]
    assert _lag(out, 0, 4) == [0, 0, 0, 0]  # four bars back is before the seed
    # step 1: the previous note is the continuation's C (bar 5 beat 1); two bars back, bar 3's
    # C (followed by D), four bars back bar 1's C
    assert _lag(out, 1, 2) == [12 + 1, d + 1, quarter + 1, 2]
    assert _lag(out, 1, 4) == [12 + 1, d + 1, quarter + 1, 2]
    assert _lag(out, 1, 8) == [0, 0, 0, 0]


def test_another_pitch_is_marked():
    ev = _events(BAR_1 + [61, 62, 64, 65] + BAR_1 + BAR_1)  # bar 2 starts on a C sharp
    seed, target = torch.from_numpy(ev[:12]), torch.from_numpy(ev[12:])
    out = window_lags(seed, target, CFG.max_shift, CFG.max_position)
    quarter = CODEC.duration_index(12)
    # step 0: the previous note is bar 3's last F; two bars back, bar 1's F (the same pitch),
    # and after it came bar 2's C sharp
    assert _lag(out, 0, 2) == [12 + 1, 61 - CFG.pitch_low + 1, quarter + 1, 2]
    # step 1: the previous note (bar 4's C) against bar 2's C sharp: another pitch; next, D
    assert _lag(out, 1, 2) == [12 + 1, 62 - CFG.pitch_low + 1, quarter + 1, 1]


def test_no_bar_line_no_seed_and_padding_give_nothing():
    ev = _events(BAR_1 + BAR_1)
    short = window_lags(torch.from_numpy(ev[:3]), torch.from_numpy(ev[3:]), 48, 95)
    assert not short.any()  # the seed crosses no bar line: no bar length, no lags
    empty = window_lags(torch.from_numpy(ev[:0]), torch.from_numpy(ev), 48, 95)
    assert not empty.any() and empty.shape[0] == len(ev)
    eos = np.full((2, 5), -100, dtype=np.int64)  # an EOS row and padding: no notes
    eos[0, SHIFT] = CODEC.eos
    padded = window_lags(torch.from_numpy(ev[:5]), torch.from_numpy(eos), 48, 95)
    assert not padded[1].any()  # the step after EOS reads nothing


def test_generation_reads_what_training_reads():
    """LagTracker, fed a window's notes one by one, gives window_lags's inputs, chords too."""
    pitches = BAR_1 + BAR_2 + BAR_1 + BAR_2 + BAR_1 + [69, 67]
    ev = _events(pitches, chord_at=5)  # a two-note chord in bar 2
    for cut in (6, 9, 13):
        seed, target = torch.from_numpy(ev[:cut]), torch.from_numpy(ev[cut:])
        want = window_lags(seed, target, CFG.max_shift, CFG.max_position)
        tracker = LagTracker(seed[None], torch.tensor([cut]), CFG.max_shift, CFG.max_position)
        got = []
        for t in range(len(target)):
            got.append(tracker.inputs()[0])
            tracker.append(target[t : t + 1, SHIFT : SHIFT + 1], target[t : t + 1, PITCH:][:, :1])
        assert torch.equal(torch.stack(got), want), cut
        assert want.any()


def test_training_batches_carry_the_lag_inputs():
    ev = _events(BAR_1 + BAR_2 + BAR_1 + BAR_2)
    batch = collate([(ev[:8], ev[8:], 1), (ev[:0], ev[:4], 0)], 12, CODEC)
    assert batch["lags"].shape == (2, 12, len(LAG_BARS) * LAG_FIELDS)
    assert batch["lags"][0, :8].any() and not batch["lags"][1].any()
    sizes = lag_sizes(CODEC.n_shift, CODEC.n_pitch, CODEC.n_duration)
    assert (batch["lags"] < torch.tensor(sizes)).all()


def test_a_model_with_lag_inputs_generates_row_by_row_alike(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=32, layers=1, lag_inputs=True)
    model = MotifSeq2Seq(cfg)
    with torch.no_grad():  # trained tables (they start at zero): the inputs must matter
        for emb in model.embed.lag:
            emb.weight.normal_(std=1.0)
    lm = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, cfg, CODEC.config, {}))
    assert lm.config.lag_inputs
    seed = Piece(
        tuple(Note(i, 1.0, p, 90) for i, p in enumerate(BAR_1 + BAR_2 + BAR_1)),
        time_signature=(4, 4),
    )
    requests = [
        GenerationRequest(seed, ComposeOptions(bars=4, rng_seed=1)),
        GenerationRequest(None, ComposeOptions(bars=2, style="folk", rng_seed=2)),
        GenerationRequest(seed, ComposeOptions(bars=2, rng_seed=3), Knobs(copy=False)),
    ]
    batch = continue_batch(lm, requests)
    alone = [continue_batch(lm, [r])[0] for r in requests]
    assert [p.notes for p in batch] == [p.notes for p in alone]
    assert all(p.notes for p in batch)
