"""Reward-ranked self-samples (engine.model.train.self_samples): the closeness, the draw kept per
seed, and the corpus written with them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli.training import self_samples_main
from engine.errors import BadParams
from engine.model.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from engine.model.corpus.build import write_corpus_file
from engine.model.corpus.load import SPLITS, Corpus, CorpusStats, load_corpus
from engine.model.events import PITCH, EventCodec
from engine.model.fidelity import pattern_reuse
from engine.model.generate.continuation import continue_batch
from engine.model.generate.request import GenerationRequest
from engine.model.network import ModelConfig, MotifSeq2Seq
from engine.model.train.config import TrainConfig
from engine.model.train.data import load_data
from engine.model.train.self_samples import (
    COLLECTION,
    best_draws,
    closeness,
    seed_and_real,
    write_self_samples,
)
from engine.music.metrics import is_collapsed, key_kept
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions
from engine.settings import DEFAULT_CORPUS_PATH

TUNE = [Note(i * 0.5, 0.5, 60 + (0, 2, 4, 5, 7, 5, 4, 2)[i % 8], 80) for i in range(32)]


def test_closeness_is_three_for_the_real_notes_and_falls_with_each_difference():
    assert closeness(TUNE, TUNE) == pytest.approx(3.0)
    # an octave up: the same histograms, the mean pitch 1 octave away
    up = [Note(n.start, n.duration, n.pitch + 12, n.velocity) for n in TUNE]
    assert closeness(up, TUNE) == pytest.approx(2.0)
    # half the notes, twice as long: note lengths and onset intervals all differ, count halves
    slow = [Note(n.start * 2, 1.0, n.pitch, n.velocity) for n in TUNE[:16]]
    mean_gap = abs(np.mean([n.pitch for n in slow]) - np.mean([n.pitch for n in TUNE])) / 12
    assert closeness(slow, TUNE) == pytest.approx(1.0 - math.log(2) - mean_gap)
    assert closeness([], TUNE) == -math.inf and closeness(TUNE, []) == -math.inf


def test_with_the_seed_closeness_also_weighs_figures_texture_key_and_runs():
    seed, real = TUNE[:16], TUNE[16:]
    assert closeness(real, real, seed) == pytest.approx(5.0)
    # the same notes doubled an octave down: notes per onset twice the real's (and the mean
    # pitch 6 semitones lower); figures, key and runs agree
    doubled = sorted(
        real + [Note(n.start, n.duration, n.pitch - 12, n.velocity) for n in real],
        key=lambda n: (n.start, n.pitch),
    )
    assert closeness(doubled, real, seed) == pytest.approx(5.0 - 0.5 - math.log(2) - math.log(2))
    # one pitch 16 times: none of the seed's figures recur (the real continuation has them
    # all), and it disagrees on the key and on runs
    drone = [Note(8 + i * 0.5, 0.5, 62, 80) for i in range(16)]
    assert pattern_reuse(seed, real) == 1.0 and pattern_reuse(seed, drone) == 0.0
    assert key_kept(seed, real) and not key_kept(seed, drone)
    assert closeness(drone, real, seed) == pytest.approx(closeness(drone, real) - 1.0)


def test_seed_and_real_cut_at_the_bar_lines():
    piece = Piece(tuple(TUNE), 120.0, (2, 4))  # 2 beats a bar: 4 notes a bar
    seed, real = seed_and_real(piece, 2, 4)
    assert seed.notes == tuple(TUNE[:8]) and real == TUNE[8:24]
    assert seed.time_signature == (2, 4) and seed.tempo_bpm == 120.0
    assert seed_and_real(Piece(tuple(TUNE[:10]), 120.0, (2, 4)), 2, 4) is None  # 2 real notes
    # a note sounding across the cut ends there, so the draw starts where the real notes do
    held = Piece((*TUNE[:7], Note(3.5, 2.0, 67, 80), *TUNE[10:]), 120.0, (2, 4))
    seed, real = seed_and_real(held, 2, 4)
    assert seed.notes[-1] == Note(3.5, 0.5, 67, 80) and real[0] == TUNE[10]


@pytest.fixture(scope="module")
def pieces() -> list[Piece]:
    """Six training pieces, and one too short to seed among them (index 2)."""
    corpus = load_corpus(DEFAULT_CORPUS_PATH)
    chosen = [corpus.piece(int(i)) for i in corpus.indices("train")[:6]]
    return [*chosen[:2], Piece(tuple(TUNE[:2]), 120.0, (2, 4), style="folk"), *chosen[2:]]


@pytest.fixture(scope="module")
def leaning_lm(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """tiny_lm's shape, its pitch head leaning hard on one pitch: a third of its draws collapse."""
    torch.manual_seed(0)
    codec = EventCodec()
    cfg = ModelConfig.for_codec(codec, d_embed=16, hidden=32, layers=1, n_key=25)
    model = MotifSeq2Seq(cfg)
    with torch.no_grad():
        bias = model.heads.out[PITCH][-1].bias
        bias.fill_(-30.0)
        bias[40] = 30.0
    path = tmp_path_factory.mktemp("leaning") / "m.pt"
    return load_checkpoint(save_checkpoint(path, model, cfg, codec.config, {}))


@pytest.mark.parametrize("which", ["tiny_lm", "leaning_lm"])
def test_best_draws_keeps_the_closest_draw_that_does_not_collapse(which, pieces, request):
    lm = request.getfixturevalue(which)
    kept, counts = best_draws(lm, pieces, k=3, seed_bars=(2, 4), batch=5, rng_seed=7)
    if which == "leaning_lm":
        assert counts["collapsed"] > 0
    assert counts["seeds"] == len(pieces) - 1 and counts["draws"] == 3 * (len(pieces) - 1)
    assert len(kept) == len(pieces) and kept[2] is None
    assert any(p is not None for p in kept)
    for i, piece in enumerate(pieces):
        bars = (2, 4)[i % 2]
        cut = seed_and_real(piece, bars, 2 * bars)
        if cut is None:
            continue
        seed, real = cut
        # the same draws, one seed at a time (each row decodes as it would alone)
        draws = continue_batch(
            lm,
            [
                GenerationRequest(
                    seed,
                    ComposeOptions(
                        bars=2 * bars, style=piece.style, rng_seed=7 + 3 * i + d, ending="open"
                    ),
                )
                for d in range(3)
            ],
        )
        fine = [d for d in draws if not is_collapsed(d.notes)]
        if not fine:
            assert kept[i] is None
            continue
        best = max(fine, key=lambda d: closeness(d.notes, real, seed.notes))
        assert kept[i] is not None
        assert kept[i].notes == seed.notes + best.notes
        assert min(n.start for n in best.notes) >= bars * piece.beats_per_bar - 1e-6
        assert kept[i].time_signature == piece.time_signature and kept[i].style == piece.style
    assert counts["kept"] == sum(p is not None for p in kept)


def _small_corpus(out: Path) -> Corpus:
    """The shipped corpus's first 40 pieces, and one piece of each split past them."""
    src = load_corpus(DEFAULT_CORPUS_PATH)
    a = src.arrays()
    split = a["split"]
    picks = [*range(40), *(int(np.flatnonzero(split == s)[-1]) for s in range(len(SPLITS)))]
    rows = [a["notes"][a["offsets"][i] : a["offsets"][i + 1]] for i in picks]
    arrays = {**a, "notes": np.concatenate(rows)}
    arrays["offsets"] = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    for key in ("style", "collection", "split", "tempo", "time_signature", "name", "path"):
        arrays[key] = a[key][picks]
    write_corpus_file(out, arrays, CorpusStats.from_dict(src.stats.to_dict()))
    return load_corpus(out)


def test_the_written_corpus_adds_training_pieces_and_keeps_the_held_out_splits(tiny_lm, tmp_path):
    small = _small_corpus(tmp_path / "small.npz")
    out = tmp_path / "self.npz"
    counts = write_self_samples(tiny_lm, small, out, k=2, seed_bars=(2,), batch=16)
    grown = load_corpus(out)
    assert counts["kept"] > 0
    assert len(grown) == len(small) + counts["kept"]
    for split in ("train", "validation", "test"):  # the pieces there before are unchanged
        before = small.indices(split)
        assert np.array_equal(grown.indices(split)[: len(before)], before)
        assert [grown.piece(int(i)) for i in before] == [small.piece(int(i)) for i in before]
    assert len(grown.indices("validation")) == len(small.indices("validation"))
    assert len(grown.indices("test")) == len(small.indices("test"))
    extra = [grown.piece(i) for i in range(len(small), len(grown))]
    assert all(p.meta["collection"] == COLLECTION and p.meta["split"] == "train" for p in extra)
    sources = {p.meta["path"]: p for p in small.pieces("train")}
    for p in extra:
        source = sources[p.meta["path"].removesuffix("#self")]
        seed, _ = seed_and_real(source, 2, 4)
        assert p.notes[: len(seed.notes)] == seed.notes  # the real seed, then the draw
        assert len(p.notes) > len(seed.notes) and p.style == source.style
        assert p.time_signature == source.time_signature and p.tempo_bpm == source.tempo_bpm
        assert all(21 <= n.pitch <= 108 and n.duration > 0 for n in p.notes)
    assert grown.stats.pieces[COLLECTION] == counts["kept"]
    assert grown.stats.splits["train"] == small.stats.splits["train"] + counts["kept"]
    # training reads it: the kept pieces join the training split
    codec = EventCodec()
    train, val, _, _ = load_data(TrainConfig(corpus_path=out), codec)
    assert len(train.events) == len(grown.indices("train"))
    assert len(val.events) == len(small.indices("validation"))
    # drawing from a corpus that already holds self-samples is refused
    with pytest.raises(BadParams, match="already holds self-samples"):
        write_self_samples(tiny_lm, grown, tmp_path / "twice.npz", k=1)
    summary = json.loads(out.with_suffix(".self-samples.json").read_text())
    assert summary["source_hash"] == small.content_hash and summary["kept"] == counts["kept"]
    # the same draws again: the same file
    again = tmp_path / "again.npz"
    write_self_samples(tiny_lm, small, again, k=2, seed_bars=(2,), batch=7)
    assert np.array_equal(load_corpus(again).notes, grown.notes)


def test_the_command_refuses_counts_below_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        self_samples_main(
            ["--model", "m.pt", "--corpus", "c.npz", "--out", str(tmp_path / "o"), "--k", "0"]
        )
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_the_command_refuses_a_self_sampled_corpus_before_loading_the_model(
    tiny_lm, tmp_path, capsys
):
    out = tmp_path / "self.npz"
    write_self_samples(tiny_lm, _small_corpus(tmp_path / "small.npz"), out, k=1, seed_bars=(2,))
    rc = self_samples_main(
        ["--model", str(tmp_path / "absent.pt"), "--corpus", str(out), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    assert "already holds self-samples" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()
