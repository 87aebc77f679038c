from __future__ import annotations

import pytest
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.errors import BadParams
from engine.generate import (
    DISTINCT_WINDOW,
    MAX_REPEATS,
    GenerationRequest,
    continue_batch,
    continue_seed,
    estimate_key,
    key_of_class,
    key_profile_bias,
    scale_pitch_classes,
    seed_key,
)
from engine.model import PITCH, SHIFT, ModelConfig, MotifSeq2Seq
from engine.music import Note, Piece
from engine.tokens import EventCodec

CODEC = EventCodec()


C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


def _seed(pitches=C_MAJOR, ts=(4, 4), dur=0.5, **kw) -> Piece:
    notes = tuple(Note(i * dur, dur, p, 90) for i, p in enumerate(pitches))
    return Piece(notes, time_signature=ts, **kw)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=32, layers=2, n_key=25)
    path = tmp_path_factory.mktemp("gen") / "m.pt"
    return load_checkpoint(save_checkpoint(path, MotifSeq2Seq(cfg), cfg, CODEC.config, {}))


def _keys(piece: Piece):
    return [(n.start, n.duration, n.pitch, n.velocity) for n in piece.notes]


def test_same_rng_seed_same_notes_and_seed_never_echoed(lm):
    seed = _seed(tempo_bpm=93.0, program=41)
    a = continue_seed(lm, seed, 4, seed_rng=7)
    b = continue_seed(lm, seed, 4, seed_rng=7)
    c = continue_seed(lm, seed, 4, seed_rng=8)
    assert _keys(a) == _keys(b) != _keys(c)
    assert a.notes and a.meta["rng_seed"] == "7"
    assert (a.tempo_bpm, a.time_signature, a.program) == (93.0, (4, 4), 41)
    assert min(n.start for n in a.notes) >= seed.end_beat  # the continuation only
    assert (
        continue_seed(lm, seed, 2).meta["rng_seed"] != continue_seed(lm, seed, 2).meta["rng_seed"]
    )


def test_batch_equals_each_row_alone(lm):
    requests = [
        GenerationRequest(_seed(), 3, rng_seed=1),
        GenerationRequest(None, 2, style="folk", rng_seed=2, temperature=0.7),
        GenerationRequest(_seed(C_MAJOR[:3], ts=(3, 4)), 5, rng_seed=3, top_k=5, top_p=0.8),
        GenerationRequest(_seed([57, 60, 64] * 6, dur=0.25), 1, rng_seed=4, temperature=1.5),
        GenerationRequest(_seed(), 3, rng_seed=1, style="chorale"),
    ]
    batch = continue_batch(lm, requests)
    alone = [continue_batch(lm, [r])[0] for r in requests]
    assert [_keys(p) for p in batch] == [_keys(p) for p in alone]
    assert len({len(p.notes) for p in batch}) > 1  # rows stopped on their own


@pytest.mark.parametrize("ts", [(4, 4), (3, 4), (6, 8)])
def test_bars_are_respected(lm, ts):
    seed = _seed(C_MAJOR[:7], ts=ts, dur=0.75)  # ends mid-bar
    bar_beats = seed.beats_per_bar
    for rng in range(3):
        piece = continue_seed(lm, seed, 2, seed_rng=rng)
        end = (-(-seed.end_beat // bar_beats) + 2) * bar_beats
        assert piece.notes
        assert all(seed.end_beat <= n.start < end and n.end <= end + 1e-9 for n in piece.notes)
        # no end before the bars are filled: the last onset is within one longest shift of it
        assert max(n.start for n in piece.notes) >= end - CODEC.config.max_shift / 12


def test_no_seed_works(lm):
    piece = continue_seed(lm, None, 2, style="celtic", seed_rng=0)
    assert piece.notes and piece.style == "celtic"
    assert piece.time_signature == (4, 4) and piece.tempo_bpm == 120.0
    assert all(0 <= n.start < 8 and n.end <= 8 for n in piece.notes)
    empty = continue_seed(lm, Piece(notes=(), tempo_bpm=70.0), 1, seed_rng=0)
    assert empty.notes and empty.tempo_bpm == 70.0


def test_collapse_guard_on_a_model_that_wants_one_pitch(lm):
    heads = lm.model.heads
    pitch_bias, shift_bias = heads.out[PITCH][-1].bias, heads.out[SHIFT][-1].bias
    saved = pitch_bias.detach().clone(), shift_bias.detach().clone()
    with torch.no_grad():
        pitch_bias[64 - CODEC.config.pitch_low] += 50.0  # E4, always, unless forbidden
        pitch_bias[65 - CODEC.config.pitch_low] += 45.0  # then F4
        shift_bias[6] += 50.0  # eighth notes: many notes per bar
    try:
        pieces = continue_batch(lm, [GenerationRequest(_seed(), 8, rng_seed=i) for i in range(2)])
    finally:
        with torch.no_grad():
            pitch_bias.copy_(saved[0])
            shift_bias.copy_(saved[1])
    for piece in pieces:
        pitches = [n.pitch for n in piece.notes]
        assert len(pitches) == 64  # 8 bars of eighths
        assert all(
            len(set(pitches[i : i + MAX_REPEATS + 1])) > 1
            for i in range(len(pitches) - MAX_REPEATS)
        )
        assert all(
            len(set(pitches[i : i + DISTINCT_WINDOW])) >= 3
            for i in range(len(pitches) - DISTINCT_WINDOW + 1)
        )


def test_key_estimate_and_key_bias(lm):
    assert estimate_key(_seed(C_MAJOR)) == (0, "major")
    a_minor = [57, 59, 60, 62, 64, 65, 67, 69, 64, 60, 57, 57]
    assert estimate_key(_seed(a_minor)) == (9, "minor")
    assert estimate_key(Piece(notes=())) is None
    assert scale_pitch_classes(_seed(C_MAJOR)) == {0, 2, 4, 5, 7, 9, 11}
    # the model's key class: 1 + tonic (major), 13 + tonic (minor), 0 unknown
    assert seed_key(CODEC.encode(_seed(C_MAJOR)), CODEC) == 1
    assert seed_key(CODEC.encode(_seed(a_minor)), CODEC) == 13 + 9
    assert seed_key(CODEC.encode(_seed([60, 62])), CODEC) == 0
    strict = continue_seed(lm, _seed(), 8, seed_rng=3, key_penalty=30.0)
    assert {n.pitch % 12 for n in strict.notes} <= {0, 2, 4, 5, 7, 9, 11}
    loose = continue_seed(lm, _seed(), 8, seed_rng=3, key_penalty=0.0, key_gravity=0.0)
    assert {n.pitch % 12 for n in loose.notes} - {0, 2, 4, 5, 7, 9, 11}  # random model strays


def test_key_gravity_pulls_towards_the_tonal_hierarchy(lm):
    bias = key_profile_bias(0, "major", 1.0)
    assert bias[0] == 0.0 and (bias[1:] < 0).all()  # the tonic is the strongest degree
    assert bias[7] > bias[2] > bias[1]  # dominant over supertonic over a chromatic note
    assert key_profile_bias(9, "minor", 2.0)[9] == 0.0
    assert key_of_class(1) == (0, "major") and key_of_class(13 + 9) == (9, "minor")
    assert key_of_class(0) is None

    def share_of_tonic_triad(gravity: float) -> float:
        notes = [
            n
            for rng in range(4)
            for n in continue_seed(lm, _seed(), 8, seed_rng=rng, key_gravity=gravity).notes
        ]
        return sum(n.pitch % 12 in (0, 4, 7) for n in notes) / len(notes)

    assert share_of_tonic_triad(4.0) > share_of_tonic_triad(0.0) + 0.2
    with pytest.raises(BadParams, match="key_gravity"):
        continue_seed(lm, _seed(), 8, key_gravity=-1.0)


def test_pitches_stay_near_the_seed(lm):
    piece = continue_seed(lm, _seed(), 8, seed_rng=5, temperature=2.0)
    assert all(60 - 12 <= n.pitch <= 72 + 12 for n in piece.notes)


def test_bad_params_are_refused(lm):
    for kw in (
        {"temperature": 0.0},
        {"top_p": 0.0},
        {"top_k": -1},
        {"bars": 0},
        {"style": "dubstep"},
    ):
        args = {"seed": _seed(), "bars": 2} | kw
        with pytest.raises(BadParams):
            continue_batch(lm, [GenerationRequest(**args)])


def test_shipped_default_model_continues_in_key():
    from engine.quality import is_collapsed, key_kept
    from engine.settings import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip("no shipped checkpoint")
    lm = load_checkpoint(DEFAULT_MODEL_PATH)
    assert lm.meta["metrics"]["test"]["nll_per_note"] < 3.5
    g_major = [67, 69, 71, 72, 74, 72, 71, 69, 67, 71, 74, 79, 78, 76, 74, 72, 71, 69, 67, 67]
    seed = Piece(tuple(Note(i * 0.5, 0.5, p, 80) for i, p in enumerate(g_major)), style="folk")
    pieces = continue_batch(lm, [GenerationRequest(seed, 4, rng_seed=i) for i in range(4)])
    assert all(p.notes and not is_collapsed(p.notes) for p in pieces)
    assert sum(key_kept(seed, p) for p in pieces) >= 3
