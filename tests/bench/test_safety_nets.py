"""bench.safety_nets: the judge's hook that counts how often each safety net changes a note."""

from __future__ import annotations

import pytest
import torch

from bench.safety_nets import SafetyNetCounts
from engine.model.checkpoint import load_checkpoint, save_checkpoint
from engine.model.events import PITCH, EventCodec
from engine.model.generate.continuation import continue_batch
from engine.model.generate.request import GenerationRequest, Knobs
from engine.model.network import ModelConfig, MotifSeq2Seq
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions

CODEC = EventCodec()


def _seed() -> Piece:
    pitches = [60, 62, 64, 65, 67, 69, 71, 72]
    return Piece(tuple(Note(i * 0.5, 0.5, p, 90) for i, p in enumerate(pitches)))


def _keys(piece: Piece):
    return [(n.start, n.duration, n.pitch, n.velocity) for n in piece.notes]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=32, layers=2, n_key=25)
    path = tmp_path_factory.mktemp("nets") / "m.pt"
    return load_checkpoint(save_checkpoint(path, MotifSeq2Seq(cfg), cfg, CODEC.config, {}))


def test_safety_net_counts_say_how_often_each_net_changes_a_note(lm):
    seed = _seed()
    plain = [GenerationRequest(seed, ComposeOptions(bars=4, rng_seed=i)) for i in range(3)]
    counts = SafetyNetCounts()
    counted = continue_batch(lm, plain, observer=counts)
    assert [_keys(p) for p in counted] == [_keys(p) for p in continue_batch(lm, plain)]
    assert counts.notes == sum(len(p.notes) for p in counted)
    rates = counts.rates()
    assert set(rates) == {"grammar", "repetition guard", "key bias"}
    assert all(0.0 <= r <= 1.0 for r in rates.values()) and rates["key bias"] > 0.01
    # no key bias at all: it changes nothing
    off = SafetyNetCounts()
    reqs = [
        GenerationRequest(
            seed, ComposeOptions(bars=4, rng_seed=i), Knobs(key_gravity=0.0, key_penalty=0.0)
        )
        for i in range(3)
    ]
    continue_batch(lm, reqs, observer=off)
    assert off.rates()["key bias"] == pytest.approx(0.0, abs=1e-6)
    # a model that wants one pitch: the repetition guard changes many notes (every fifth E4,
    # less where a chord note, the grammar's part, takes its place)
    heads = lm.model.heads
    pitch_bias = heads.out[PITCH][-1].bias
    saved = pitch_bias.detach().clone()
    with torch.no_grad():
        pitch_bias[64 - CODEC.config.pitch_low] += 50.0
    stuck = SafetyNetCounts()
    try:
        continue_batch(lm, plain, observer=stuck)
    finally:
        with torch.no_grad():
            pitch_bias.copy_(saved)
    assert stuck.rates()["repetition guard"] > 0.1 > rates["repetition guard"]
