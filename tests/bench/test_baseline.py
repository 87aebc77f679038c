from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.baseline import (
    STEP_BEATS,
    UNK,
    baseline_continue,
    baseline_nll,
    build_vocab,
    load_baseline,
    onset_symbols,
    save_baseline,
    symbol_pitches,
    train_baseline,
    unigram_nll,
)
from engine.music.notes import Note, Piece
from tests.conftest import torch_threads

TINY = dict(width=16, window=8, batch_size=4, seed=0)


def tune(pitches, duration=1.0, start=0.0, **kw):
    return Piece(
        notes=tuple(Note(start + i * duration, duration, int(p)) for i, p in enumerate(pitches)),
        **kw,
    )


def corpus(n=6, length=40):
    rng = np.random.default_rng(1)
    pieces = [tune(rng.choice([60, 62, 64, 65, 67], length), duration=0.75) for _ in range(n)]
    chordal = Piece(notes=(Note(0, 1, 60), Note(0, 1, 64), Note(0, 1, 67), Note(1, 1, 62)))
    return pieces + [chordal]


@pytest.fixture(scope="module")
def model(request):
    threads = torch_threads(request.config)
    if threads is not None:
        torch.set_num_threads(threads)
    return train_baseline(corpus(), steps=3, **TINY)


def test_symbols_are_pitches_and_dot_joined_chords():
    piece = Piece(notes=(Note(0, 1, 67), Note(0, 1, 60), Note(0, 1, 64), Note(1, 2, 62)))
    assert onset_symbols(piece) == [("60.64.67", 3), ("62", 1)]
    assert symbol_pitches("60.64.67") == [60, 64, 67]
    assert symbol_pitches(UNK) == []


def test_vocabulary_is_ranked_and_capped():
    pieces = [tune([60, 60, 60, 62, 62, 64])]
    assert build_vocab(pieces, 10) == [UNK, "60", "62", "64"]
    assert build_vocab(pieces, 3) == [UNK, "60", "62"]


def test_trains_a_few_steps(model):
    assert model.meta["steps"] == 3
    assert math.isfinite(model.meta["train_loss_ema"])
    assert model.vocab[0] == UNK and "60.64.67" in model.vocab
    assert len(model.primers) > 0 and all(len(p) == 8 for p in model.primers)


def test_needs_a_budget_and_enough_music():
    with pytest.raises(ValueError):
        train_baseline(corpus(), **TINY)
    with pytest.raises(ValueError):
        train_baseline([tune([60, 62])], steps=1, **TINY)


def test_original_last_step_loss_trains_too():
    m = train_baseline(corpus(), steps=2, all_positions=False, **TINY)
    assert m.meta["steps"] == 2 and not m.meta["all_positions"]


def test_continuation_sits_on_the_half_beat_grid_after_the_seed(model):
    seed = tune([60, 62, 64, 65, 67], duration=0.75)  # ends at 3.75 beats
    out = baseline_continue(model, seed, 20)
    assert len(out.notes) == 20
    starts = sorted({n.start for n in out.notes})
    assert starts[0] == 4.0  # the first half beat at or after the seed's end
    assert all(n.duration == STEP_BEATS for n in out.notes)
    assert np.allclose(np.diff(starts), STEP_BEATS)
    assert {n.velocity for n in out.notes} == {80}
    assert out.tempo_bpm == seed.tempo_bpm


def test_continuation_is_deterministic_argmax(model):
    seed = tune([60, 62, 64, 65, 67])
    assert baseline_continue(model, seed, 12) == baseline_continue(model, seed, 12)


def test_unknown_seed_symbols_become_unk(model):
    assert model.encode(["60", "61.66.70", "127"]) == [model.index["60"], 0, 0]
    strange = Piece(notes=(Note(0, 1, 61), Note(0, 1, 66), Note(0, 1, 70), Note(1, 1, 127)))
    out = baseline_continue(model, strange, 6)  # every seed symbol is <unk>: still continues
    assert len(out.notes) == 6
    assert all(str(n.pitch) in model.index or n.pitch in (60, 62, 64, 67) for n in out.notes)


def test_without_a_seed_a_training_window_starts_it(model):
    a = baseline_continue(model, None, 8, rng_seed=3)
    assert len(a.notes) == 8 and a.notes[0].start == 0.0
    assert a == baseline_continue(model, tune([]), 8, rng_seed=3)


def test_save_and_load_round_trip(model, tmp_path):
    path = save_baseline(model, tmp_path / "b" / "baseline.pt")
    loaded = load_baseline(path)
    assert loaded.vocab == model.vocab and loaded.config == model.config
    assert loaded.meta["steps"] == 3
    seed = tune([64, 62, 60, 62, 64])
    assert baseline_continue(loaded, seed, 10) == baseline_continue(model, seed, 10)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - torch's unpickling error type varies
        load_baseline(tmp_path / "junk.pt")


def test_baseline_nll_counts_symbols_notes_and_unk(model):
    held_out = [tune([60, 62, 64, 65, 67, 65, 64, 62] * 3)]
    nll = baseline_nll(model, held_out)
    assert nll.n_symbols == 24 - 8 and nll.n_notes == 16
    assert nll.per_symbol > 0 and nll.per_note == pytest.approx(nll.per_symbol)
    assert nll.unk_rate == 0.0
    unseen = baseline_nll(model, [tune([30, 31] * 10)])
    assert unseen.unk_rate == 1.0
    assert math.isnan(baseline_nll(model, [tune([60, 62])]).per_symbol)
    thinned = baseline_nll(model, held_out, max_windows=4, batch_size=3)
    assert thinned.n_symbols == 4


def test_unigram_nll_known_values():
    from engine.model.events import EventCodec

    codec = EventCodec()
    train = [tune([60] * 9, duration=1.0)]
    got = unigram_nll(train, [tune([60] * 3)], codec)
    # 9 training notes all on one pitch of n_pitch, add-one smoothed
    assert got["pitch"] == pytest.approx(-math.log(10 / (9 + codec.n_pitch)))
    # shifts: the first note's 0, eight 12-tick shifts and one EOS; the test has 0, 12, 12, EOS
    total = 10 + codec.n_shift
    p0, p12, p_eos = 2 / total, 9 / total, 2 / total
    assert got["shift"] == pytest.approx(-(math.log(p0) + 2 * math.log(p12)) / 3)
    others = got["pitch"] + got["duration"] + got["velocity"]
    assert got["event"] == pytest.approx((3 * (got["shift"] + others) - math.log(p_eos)) / 4)
    assert got["event"] > got["pitch"]
    assert math.isnan(unigram_nll(train, [])["pitch"])
    assert math.isnan(unigram_nll(train, [tune([60])])["event"])  # one note: skipped


def test_cli_trains_and_saves(tmp_path, monkeypatch):
    corpus_module = pytest.importorskip("engine.model.corpus.load")

    class FakeCorpus:
        def pieces(self, split):
            return corpus()

    monkeypatch.setattr(corpus_module, "load_corpus", lambda path: FakeCorpus())
    from bench.baseline import main

    out = tmp_path / "baseline.pt"
    assert main(["train", "--out", str(out), "--steps", "2", "--width", "8"]) == 0
    loaded = load_baseline(out)
    assert loaded.meta["steps"] == 2 and "validation_nll_per_symbol" in loaded.meta
