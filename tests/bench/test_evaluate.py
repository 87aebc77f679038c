from __future__ import annotations

import json
import math
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from bench.evaluate import (
    BASELINE,
    EQUAL_WIDTH,
    MOTIF,
    REAL,
    EvalReport,
    compare,
    cut_end,
    cut_seed,
    format_report,
    pick_cases,
    without_near_duplicates,
)
from engine.music.metrics import TrainingIndex
from engine.music.notes import Note, Piece

# torch at one thread, as tests/engine/conftest.py sets for the engine's tests (from there)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def tune(n_bars: int, offset: int = 0, name: str = "t") -> Piece:
    """Quarter notes walking the C major scale, 4 to a bar."""
    pitches = [SCALE[(i + offset) % len(SCALE)] for i in range(4 * n_bars)]
    notes = tuple(Note(float(i), 1.0, p) for i, p in enumerate(pitches))
    return Piece(notes=notes, name=name, style="folk")


def test_cut_seed_splits_at_the_bar_line():
    case = cut_seed(tune(12), seed_bars=4, bars=8)
    assert len(case.seed.notes) == 16 and case.seed.end_beat == 16
    assert len(case.real.notes) == 32 and case.real.notes[0].start == 16
    assert case.seed.style == "folk"
    three_four = replace(tune(12), time_signature=(3, 4))
    assert len(cut_seed(three_four, seed_bars=2, bars=2).seed.notes) == 6
    assert cut_seed(three_four, seed_bars=2, bars=1) is None  # 3 real notes: too few
    assert cut_seed(tune(4), seed_bars=4, bars=8) is None  # nothing after the seed


def test_the_middle_of_a_tune_is_cut_only_from_a_tune_that_goes_on():
    """`middle`: the real continuation is the middle of a tune, never its end (shorter and
    closing): a tune of 10 bars has 6 bars after a 4-bar seed, and one of exactly 12 ends with
    them; 13 bars go on."""
    assert cut_seed(tune(10), seed_bars=4, bars=8) is not None
    assert cut_seed(tune(10), seed_bars=4, bars=8, middle=True) is None
    assert cut_seed(tune(12), seed_bars=4, bars=8, middle=True) is None
    case = cut_seed(tune(13), seed_bars=4, bars=8, middle=True)
    assert case is not None and case.real.notes[-1].start == 47  # the last beat of bar 12
    pieces = [tune(9 + i, i, f"p{i}") for i in range(6)]  # 9..14 bars
    middle = partial(cut_seed, middle=True)
    names = {c.piece.name for c in pick_cases(pieces, 6, seed_bars=4, bars=8, cut=middle)}
    assert names == {"p4", "p5"}


def test_the_end_of_a_tune_is_its_last_bars_seeded_by_the_bars_before():
    """`cut_end`: what a closing continuation is compared with. A 14-bar tune's bars 7-14 are the
    real continuation and bars 3-6 the seed, moved to start at 0; an 11-bar tune is too short."""
    piece = tune(14)
    case = cut_end(piece, seed_bars=4, bars=8)
    assert case is not None
    assert [n.pitch for n in case.seed.notes] == [n.pitch for n in piece.notes[8:24]]
    assert case.seed.notes[0].start == 0 and case.seed.end_beat == 16
    assert len(case.real.notes) == 32 and case.real.notes[-1].start == 47
    assert [n.pitch for n in case.real.notes] == [n.pitch for n in piece.notes[24:]]
    assert cut_end(tune(11), seed_bars=4, bars=8) is None
    names = {c.piece.name for c in pick_cases(
        [tune(10 + i, i, f"p{i}") for i in range(4)], 4, seed_bars=4, bars=8, cut=cut_end
    )}  # fmt: skip
    assert names == {"p2", "p3"}  # 12 bars and more


def test_pick_cases_is_repeatable_and_skips_short_pieces():
    pieces = [tune(12, i, f"p{i}") for i in range(10)] + [tune(3, name="short")]
    a = pick_cases(pieces, 5, seed_bars=4, bars=4, seed=1)
    assert [c.piece.name for c in a] == [
        c.piece.name for c in pick_cases(pieces, 5, seed_bars=4, bars=4, seed=1)
    ]
    assert len(a) == 5
    assert len(pick_cases(pieces, 50, seed_bars=4, bars=4)) == 10


def test_near_duplicates_of_training_pieces_are_left_out():
    training = [tune(12, name="filed once")]
    twin = replace(
        tune(12, name="filed again"),
        notes=tuple(
            replace(n, pitch=n.pitch + 5)
            for n in tune(12).notes  # the same tune, transposed
        ),
    )
    fresh = Piece(
        notes=tuple(Note(float(i), 1.0 + (i % 3) * 0.5, 60 + (i * 7) % 12) for i in range(48)),
        name="new",
    )
    kept, left_out = without_near_duplicates([twin, fresh], TrainingIndex.from_pieces(training))
    assert [p.name for p in kept] == ["new"] and left_out == 1
    quote = tuple(replace(n, start=n.start + 48) for n in tune(4).notes)
    short_quote = replace(fresh, notes=fresh.notes + quote)  # 16 notes quoted: not a duplicate
    kept, left_out = without_near_duplicates([short_quote], TrainingIndex.from_pieces(training))
    assert left_out == 0


def test_compare_gives_the_baseline_as_many_notes_as_motif():
    cases = pick_cases([tune(12, i, f"p{i}") for i in range(6)], 6, seed_bars=4, bars=4)
    index = TrainingIndex.from_pieces([tune(20)])

    def motif(case, i):
        return case.real  # a perfect continuation

    def stuck(case, i, n):
        start = case.seed.end_beat
        return Piece(notes=tuple(Note(start + k / 2, 0.5, 60) for k in range(n)))

    figures, speed, conts = compare(cases, motif, stuck, index)
    assert set(figures) == {MOTIF, BASELINE, REAL}
    assert [len(p.notes) for p in conts[BASELINE]] == [len(p.notes) for p in conts[MOTIF]]
    assert figures[MOTIF]["collapse_rate"] == 0.0 and figures[BASELINE]["collapse_rate"] == 1.0
    same = [k for k, v in figures[MOTIF].items() if not math.isnan(v)]
    assert {k: figures[MOTIF][k] for k in same} == {k: figures[REAL][k] for k in same}
    # seed fidelity too: the real continuation plays the seed's walk again, the stuck one not
    assert figures[MOTIF]["pattern_reuse"] > 0.5 and figures[BASELINE]["pattern_reuse"] == 0.0
    assert figures[BASELINE]["long_run_share"] == 1.0 and figures[MOTIF]["long_run_share"] == 0.0
    assert figures[BASELINE]["distinct_durations"] == 1
    assert figures[MOTIF]["copied_run_max"] == 15  # the whole 16-note walk is in training
    assert speed[MOTIF] > 0 and REAL not in speed

    without, _, _ = compare(cases, motif, None, None)
    assert BASELINE not in without and math.isnan(without[MOTIF]["copied_run_max"])


def test_format_report_is_a_markdown_table():
    figures = {"collapse_rate": 0.0, "key_kept_rate": 0.9, "copied_run_max": 7.0,
               "pattern_reuse": 0.25}  # fmt: skip
    report = EvalReport(
        quality={MOTIF: figures, BASELINE: {**figures, "collapse_rate": 0.8}, REAL: figures},
        nll={"motif": {"validation": 3.21, "test": 3.3}, "unigram_pitch": {"test": 3.0}},
        speed={MOTIF: 1500.0, BASELINE: 80.0},
        settings={"n_seeds": 100, "seed_bars": 4, "bars": 8},
    )
    text = format_report(report)
    assert f"| | {MOTIF} | {BASELINE} | {REAL} |" in text
    assert "| collapse rate (lower is better) | 0% | 80% | 0% |" in text
    assert "| longest copied run, notes (max) | 7 | 7 | 7 |" in text
    assert "Krumhansl–Kessler (the estimator tonal gravity steers by) | 90% |" in text
    assert "3.21 | 3.30 |" in text and "| — | 3.00 |" in text
    assert "| seed's 4-note figures (top line) that recur | 25% | 25% | 25% |" in text
    assert "1500.00 | 80.00 | — |" in text
    json.dumps(report.to_dict())


@pytest.fixture
def tiny_files(tmp_path, monkeypatch):
    """A random tiny Motif checkpoint, a tiny baseline and a fake corpus of scale tunes."""
    import torch

    import engine.model.corpus.load as corpus_load
    from bench.baseline import save_baseline, train_baseline
    from engine.model.checkpoint import save_checkpoint
    from engine.model.events import EventCodec
    from engine.model.network import ModelConfig, MotifSeq2Seq

    torch.manual_seed(0)
    codec = EventCodec()
    cfg = ModelConfig.for_codec(codec, d_embed=8, hidden=8, layers=1)
    model_path = save_checkpoint(
        tmp_path / "m.pt", MotifSeq2Seq(cfg), cfg, codec.config, {"version": "test"}
    )
    rng = np.random.default_rng(0)
    splits = {
        split: [tune(int(rng.integers(6, 10)), int(rng.integers(8)), f"{split}{i}") for i in range(6)]
        for split in ("train", "validation", "test")
    }  # fmt: skip
    baseline = train_baseline(splits["train"], width=8, window=8, steps=2, batch_size=4)
    baseline_path = save_baseline(baseline, tmp_path / "b.pt")

    class FakeCorpus:
        path = Path("fake.npz")
        content_hash = "0" * 64

        def pieces(self, split):
            return splits[split]

    monkeypatch.setattr(corpus_load, "load_corpus", lambda path=None: FakeCorpus())
    return model_path, baseline_path


def test_evaluate_end_to_end_on_tiny_models(tiny_files, tmp_path):
    from bench.evaluate import evaluate, main

    model_path, baseline_path = tiny_files
    report = evaluate(model_path, baseline_path, "fake.npz", n_seeds=4, bars=2, seed_bars=2)
    assert report.settings["n_seeds"] == 4
    assert set(report.quality) == {MOTIF, BASELINE, REAL}
    assert report.quality[BASELINE]["distinct_durations"] == 1
    assert math.isfinite(report.nll["motif"]["test"])
    assert report.nll["motif_pitch"]["test"] < report.nll["motif"]["test"]
    assert math.isfinite(report.nll["baseline_note"]["validation"])
    assert report.nll["unigram_event"]["test"] > report.nll["unigram_pitch"]["test"]
    assert report.quality[REAL]["collapse_rate"] == 0.0
    assert report.speed[EQUAL_WIDTH] > 0 and report.settings["motif_hidden"] == 8
    assert "decode steps/s at equal width (hidden 8;" in format_report(report)

    out = tmp_path / "report.json"
    argv = ["--model", str(model_path), "--corpus", "fake.npz", "--seeds", "2", "--bars", "2"]
    assert main([*argv, "--seed-bars", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["baseline"] is None and BASELINE not in data["quality"]
    from engine.model.generate.request import KEY_GRAVITY

    assert data["settings"]["key_gravity"] == KEY_GRAVITY  # the generator's default


def test_evaluate_with_another_key_gravity_and_no_likelihoods(tiny_files, tmp_path, capsys):
    from bench.evaluate import main

    model_path, _ = tiny_files
    out = tmp_path / "report.json"
    argv = ["--model", str(model_path), "--corpus", "fake.npz", "--seeds", "2", "--bars", "2"]
    extra = ["--seed-bars", "2", "--key-gravity", "0", "--no-nll", "--json", str(out)]
    assert main([*argv, *extra]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["key_gravity"] == 0.0
    assert data["nll"] == {}
    assert set(data["settings"]["near_duplicates_left_out"]) == {"validation", "test"}
    assert "Negative log-likelihood" not in capsys.readouterr().out
    assert data["quality"]["Motif"]["n"] == 2


def test_half_precision_likelihood_rows(tiny_files, tmp_path, capsys):
    """`python -m bench.evaluate --half` scores the same windows with the weights in bfloat16 and
    float16: close to the float32 figure for a tiny model, and the loaded model itself stays
    float32."""
    import torch

    from bench.evaluate import main
    from engine.model.checkpoint import load_checkpoint
    from engine.model.corpus.load import load_corpus
    from engine.model.train.step import evaluate_nll

    model_path, _ = tiny_files
    lm = load_checkpoint(model_path)
    pieces = load_corpus("fake.npz").pieces("test")
    full = evaluate_nll(lm, pieces)["nll_per_note"]
    for dtype in (torch.bfloat16, torch.float16):
        half = evaluate_nll(lm, pieces, dtype=dtype)["nll_per_note"]
        assert half != full and abs(half - full) < 0.05 * full  # really in half, and close
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())

    out = tmp_path / "report.json"
    argv = ["--model", str(model_path), "--corpus", "fake.npz", "--seeds", "2", "--bars", "2"]
    assert main([*argv, "--seed-bars", "2", "--half", "--json", str(out)]) == 0
    nll = json.loads(out.read_text())["nll"]
    assert set(nll["motif_bfloat16"]) == set(nll["motif_float16"]) == {"validation", "test"}
    assert "weights and arithmetic in bfloat16" in capsys.readouterr().out


def test_bench_evaluate_takes_its_options_first(tiny_files, tmp_path, capsys):
    """`python -m bench.evaluate --model …` (options first; it was `motif eval`, which loaded
    bench by name), and `motif train --help` is training's own help, not motif's usage."""
    from bench.evaluate import main as evaluate_main
    from engine.cli import main

    model_path, _ = tiny_files
    out = tmp_path / "report.json"
    argv = ["--model", str(model_path), "--corpus", "fake.npz", "--seeds", "2"]
    assert (
        evaluate_main([*argv, "--bars", "2", "--seed-bars", "2", "--no-nll", "--json", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["settings"]["n_seeds"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["-v", "train", "--help"])
    assert exc.value.code == 0 and "usage: motif train" in capsys.readouterr().out
