"""Every bench part runs at a toy size and returns well-formed figures (no timing asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import batch_bench, e2e_bench, generation_bench, memory_bench, train_bench, workload
from engine.settings import Settings
from tests.bot.fake_discord import version_supported


def positive(x) -> bool:  # type: ignore[no-untyped-def]
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_corpus(tmp_path):
    return str(tmp_path / "absent-corpus.npz")


def test_generation_bench(tiny_model_path, no_corpus):
    r = generation_bench.run(repeats=1, bars=1, n_seeds=1, seed_onsets=8, decode_steps=3,
                             model_path=str(tiny_model_path), corpus_path=no_corpus)  # fmt: skip
    for key in ("motif_notes_per_s", "baseline_notes_per_s", "ratio", "decode_steps_per_s",
                "network_notes_per_s", "encode_seed_ms", "motif_steps_per_note"):  # fmt: skip
        assert positive(r[key]), key
    assert r["motif_steps_per_note"] >= 1.0
    assert r["seed_onsets"] == [8]
    assert "tiny" in r["model"] and "synthetic" in r["music"]
    assert r["tokens_remi_tokens_per_note"] > 1.0  # REMI spends several tokens on a note


def test_batch_bench(tiny_model_path, no_corpus):
    r = batch_bench.run(repeats=1, sizes=(1, 2), bars=1, model_path=str(tiny_model_path),
                        corpus_path=no_corpus)  # fmt: skip
    for b in (1, 2):
        assert positive(r[f"b{b}_wall_s"]) and positive(r[f"b{b}_notes_per_s"])
        assert r[f"b{b}_steps"] >= 1
    assert positive(r["ratio"]) and positive(r["per_step_ratio"])
    assert r["ratio_label"] == "wall(2) / wall(1)"


def test_train_bench(tiny_model_path, no_corpus):
    r = train_bench.run(repeats=1, steps=1, batch_size=2, model_path=str(tiny_model_path),
                        corpus_path=no_corpus)  # fmt: skip
    assert positive(r["motif_notes_per_s"]) and positive(r["bare_notes_per_s"])
    assert positive(r["ratio"]) and r["notes_per_round"] > 0
    assert r["bare_params"] > 0 and r["motif_params"] > 0
    assert positive(r["motif_bf16_notes_per_s"]) and positive(r["bf16_speedup"])
    assert 0 < r["target_occupancy"] <= 1


def test_bare_seq2seq_has_motif_shapes():
    lm = workload.fresh_model(d_embed=8, hidden=16, layers=1)
    bare = train_bench.BareSeq2Seq(lm.config)
    seed = torch.zeros(2, 3, 5, dtype=torch.int64)
    target = torch.ones(2, 4, 5, dtype=torch.int64)
    out = bare(seed, torch.tensor([3, 3]), torch.zeros(2, dtype=torch.int64), target)
    ref = lm.model(seed, torch.tensor([3, 3]), torch.zeros(2, dtype=torch.int64), target)
    assert [o.shape for o in out] == [o.shape for o in ref]


def test_memory_bench(tiny_model_path):
    r = memory_bench.run(batch=2, bars=1, threads=1, render=False,
                         model_path=str(tiny_model_path))  # fmt: skip
    stages = r["stages_mib"]
    assert list(stages) == ["torch imported", "imports", "model loaded", "batch of 2 decoded"]
    assert all(positive(v) for v in stages.values())
    assert r["peak_mib"] == max(stages.values()) and r["notes"] > 0


def test_render_figures_fill_their_rows():
    from bench import render_bench
    from bench.__main__ import rows_render

    r = render_bench.run(repeats=1)
    assert positive(r["ours_rtf"]) and positive(r["pipeline_s"])
    assert positive(r["before_pipeline_s"]) and positive(r["requests_per_s"])
    ideas = r["loudness_ideas"]  # the same audio measured by each meter
    assert abs(ideas["ours"]["lu_from_pyloudnorm"]) < 0.01
    assert all(len(row) == 7 for row in rows_render(r))
    w = r["with_score"]  # render_request's path, pictures after or beside the audio
    assert positive(w["sequential_s"]) and positive(w["overlapped_s"])
    assert w["second_core"] <= 1.5


def test_thirty_seconds_of_music_rounds_bars_up():
    assert e2e_bench.bars_for(30.0, 100.0, 4.0) == 13  # 2.4 s bars: 31.2 s
    assert e2e_bench.bars_for(30.0, 120.0, 4.0) == 15


def test_device_info_and_interleaving():
    info = workload.device_info()
    assert info["cpu"] and info["torch_threads"] == 1 and len(info["loadavg_1_5_15"]) == 3
    order = []
    t = workload.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 2)
    assert order == ["a", "b", "a", "b"] and all(len(v) == 2 for v in t.values())


def test_cli_prints_the_table_and_writes_json(tiny_model_path, no_corpus, tmp_path, capsys):
    from bench.__main__ import main

    out = tmp_path / "bench.json"
    rc = main(["--quick", "--only", "batch", "--json", str(out), "--model", str(tiny_model_path),
               "--corpus", no_corpus])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "| part | figure | value |" in text and "2 batch" in text and "load average" in text
    data = json.loads(out.read_text())
    assert set(data["parts"]) == {"batch"} and positive(data["parts"]["batch"]["ratio"])
    assert data["device"]["torch_threads"] == 1


@pytest.mark.slow
def test_e2e_bench_through_a_real_worker(tiny_model_path):
    r = e2e_bench.run(repeats=1, bars=(1,), music_s=None, redis=False, threads=1,
                      model_path=str(tiny_model_path))  # fmt: skip
    assert positive(r["queue_filesystem_s"]) and positive(r["worker_start_s"])
    one = r["1 bars"]
    assert positive(one["done_s"]) and one["done_s"] >= one["generate_s"]
    assert positive(one["audio_s"]) and one["notes"] > 0
    assert r["notes"] == ["redis skipped: not asked for"]


def test_train_curve_runs_the_three_curves(no_corpus):
    from bench import train_curve

    r = train_curve.run(steps=4, window=2, batch_size=2, sizes=dict(d_embed=8, hidden=16, layers=1),
                        corpus_path=no_corpus)  # fmt: skip
    assert {k: len(v) for k, v in r["curves"].items()} == {"fp32": 2, "bf16": 2,
                                                           "fp32_other_seed": 2}  # fmt: skip
    assert all(math.isfinite(x) for v in r["curves"].values() for x in v)
    assert r["noise_max_abs"] > 0  # another init seed gives another curve
    assert "| 3-4 |" in train_curve.markdown(r)


def test_discord_round_trip_is_split_into_its_stages(tiny_model_path):
    """A real bot on the fake Discord and a real worker: one request per set-up (after the
    warm-up); the stages add up to the whole round trip."""
    from bench import discord_bench
    from bench.__main__ import rows_discord

    if not version_supported():
        pytest.skip("the fake Discord is written for discord.py 2.7")
    r = discord_bench.run(requests=1, bars=1, model_path=str(tiny_model_path), postgres=False)
    assert list(r["setups"]) == ["sqlite, polled every 1 s (before)", "sqlite, polled every 0.2 s"]
    for s in r["setups"].values():
        assert s["n"] == 1 and positive(s["median_s"]) and s["p95_s"] == s["median_s"]
        parts = sum(s[k + "_s"] for k in discord_bench.STAGES)
        assert parts == pytest.approx(s["median_s"], abs=1e-6)
        assert s["generation_s"] > 0 and s["rendering_s"] > 0 and s["polling_s"] >= -0.05
    assert all(len(row) == 7 for row in rows_discord(r))
    assert "| sqlite, polled every 0.2 s |" in discord_bench.markdown(r)


def test_notation_bench():
    from bench import notation_bench

    r = notation_bench.run(repeats=1, bars=(4,))
    for name in ("melody 4 bars", "two hands 4 bars"):
        f = r[name]
        for key in ("xml_s", "engrave_s", "png_s", "score_s", "render_s", "encode_s"):
            assert positive(f[key]), (name, key)
        assert f["score_s"] >= f["engrave_s"] and f["png_bytes"] > 1000
    assert r["target_16_bars_s"] == 0.2


def test_length_bench(tiny_model_path):
    from bench import length_bench

    r = length_bench.run(repeats=1, bars=(2, 12), model_path=str(tiny_model_path))
    for n in (2, 12):
        f = r[f"{n} bars"]
        for key in ("generate_s", "audio_s", "pianoroll_s", "xml_s", "score_s", "render_s"):
            assert positive(f[key]), (n, key)
        assert f["render_s"] >= f["score_s"] and f["pages"] >= 1 and f["pdf_kib"] > 0
        assert 0 < f["bars_shown"] <= f["bars_total"] and len(f["chat_png_kib"]) <= 2
    assert r["target_64_bars_s"] == 2.0
    assert r["sample_rate"] == Settings(_env_file=None).sample_rate


def _tiny_judge(model_path, corpus_path, **options):
    """bench.judge of the tiny model: 3 seeds of 2 bars, 2 bars continued, 8 gain windows."""
    from bench import judge

    settings = {"n_seeds": 3, "seed_bars": 2, "bars": 2, "gain_windows": 8, **options}
    return judge.judge([("Motif (tiny)", model_path)], None, corpus_path, **settings)


def test_judge_side_by_side(tiny_corpus_model_path, tiny_corpus_path, tmp_path):
    from bench import judge

    r = _tiny_judge(tiny_corpus_model_path, tiny_corpus_path, gain_windows=16, without_strains=True)
    plain = "Motif (tiny) without the strain plan"
    assert list(r["figures"]) == ["Motif (tiny)", plain, judge.REAL, judge.CHANCE]
    n = r["settings"]["n_seeds"]
    assert n >= 1 and all(f["pieces"] == n for f in r["figures"].values())
    assert 0.0 <= r["figures"][judge.REAL]["pattern_reuse"] <= 1.0
    assert set(r["safety_nets"]["Motif (tiny)"]) == {"grammar", "repetition guard", "key bias"}
    table = judge.format_judge(r)
    assert "| seed's 4-note figures (top line) that recur |" in table
    assert "key kept, music21 Aarden–Essen" in table and "chance" in table
    out = tmp_path / "judge.md"
    assert judge.main(["--model", f"tiny={tiny_corpus_model_path}", "--corpus",
                       str(tiny_corpus_path), "--seeds", "2", "--seed-bars", "2", "--bars", "2",
                       "--gain-windows", "8", "--markdown", str(out)]) == 0  # fmt: skip
    assert "Motif (tiny)" in out.read_text()
    # a close against tunes' real ends: the seeds are the bars before each tune's last ones
    closing = _tiny_judge(tiny_corpus_model_path, tiny_corpus_path, ending="close")
    assert closing["settings"]["n_seeds"] >= 1
    assert "Seeds: the 2 bars before the last 2 of" in judge.format_judge(closing)
    assert closing["figures"]["Motif (tiny)"]["pieces"] == closing["settings"]["n_seeds"]


def test_judge_form_and_classifier_on_airds(tiny_corpus_model_path, tiny_corpus_path, tmp_path):
    from bench import judge

    r = judge.judge(
        [("Motif (tiny)", tiny_corpus_model_path)],
        None,
        tiny_corpus_path,
        n_seeds=12,
        seed_bars=2,
        bars=2,
        gain_windows=8,
        seed_set="airds",
        form=True,
        classifier=True,
        control_repeats=1,  # (the controls' averaging is bench.two_sample's to test)
    )
    assert r["settings"]["set"] == "airds" and r["settings"]["n_seeds"] == 12
    real = r["figures"][judge.REAL]
    assert 0.0 <= real["held_bar4"] <= 1.0 and 0.0 <= real["bars_verbatim"] <= 1.0
    tests = r["classifier"]
    assert set(tests) == {"Motif (tiny)", judge.REAL, judge.CHANCE}
    for fs in ("A", "B"):
        for name in tests:
            assert 0.0 <= tests[name][fs]["accuracy"] <= 1.0
            assert tests[name][fs]["groups"] == 12
    table = judge.format_judge(r)
    assert (
        "Aird's Airs" in table and "| ends on a held note of the seed key's tonic triad |" in table
    )
    assert "classifier test, continuation alone (set A): accuracy" in table
    with pytest.raises(ValueError, match="unknown seed set"):
        judge.set_pieces("unheard-of", None)


def test_model_speed_side_by_side(tiny_model_path):
    from bench import model_speed

    r = model_speed.run([tiny_model_path, tiny_model_path], repeats=1, n_seeds=2, bars=1)
    assert list(r["ms_per_note"]) == [str(tiny_model_path)]  # one name: the same file twice
    assert all(positive(v) for v in r["ms_per_note"].values())


@pytest.mark.skipif(
    not version_supported(), reason="the fake Discord is written for discord.py 2.7"
)
def test_seed_fairness_bench():
    pytest.importorskip("music21")
    from bench import seed_fairness

    small = seed_fairness.SMALL_TUNE.replace(" ", "\n").encode()
    r = seed_fairness.run(rounds=1, flood=2, slow=small)
    assert set(r["setups"]) == set(seed_fairness.SETUPS)
    for figures in r["setups"].values():
        assert positive(figures["history_s"]) and positive(figures["compose_s"])
        assert math.isfinite(figures["compose_s"])


def test_key_window_bench():
    from bench import key_window

    result = key_window.run(tunes=12)
    assert result["tunes"] >= 10 and result["rows"][0]["margin"] is None
    assert result["rows"][0]["moved"] == 0.0  # the rule before: the whole seed's key
    assert "(shipped)" in key_window.table(result)
    assert result["shipped_margin"] == key_window.keys.KEY_SWITCH_MARGIN  # put back


def test_judge_on_the_validation_split_without_the_texture_cap_and_at_another_top_p(
    tiny_corpus_model_path, tiny_corpus_path
):
    from bench import judge
    from engine.model.corpus.load import load_corpus

    corpus = load_corpus(tiny_corpus_path)
    assert [p.name for p in judge.set_pieces("validation", corpus)] == [
        p.name for p in corpus.pieces("validation")
    ]
    r = _tiny_judge(
        tiny_corpus_model_path,
        tiny_corpus_path,
        seed_set="validation",
        without_texture=True,
        top_p=1.0,
    )
    loose = "Motif (tiny) without the texture cap"
    assert list(r["figures"]) == ["Motif (tiny)", loose, judge.REAL, judge.CHANCE]
    assert r["settings"]["set"] == "validation" and r["settings"]["top_p"] == 1.0
    assert "validation pieces" in judge.format_judge(r)
